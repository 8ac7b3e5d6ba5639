# syntax=docker/dockerfile:1
# The gateway image: a virtual environment built in one stage, copied into a slim runtime stage.
# The config is not baked in: mount it at /etc/gateway/gateway.yaml (compose and the Kubernetes
# manifests do), or point GATEWAY_CONFIG elsewhere.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/gateway/spool && chown 10001:10001 /var/lib/gateway/spool
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_WORKERS=2 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_LEDGER_SPOOL_DIR=/var/lib/gateway/spool
# Usage that Redis could not take at shutdown is written here and replayed at the next start: mount
# a volume to keep it across containers.
VOLUME ["/var/lib/gateway/spool"]
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]
CMD ["gateway", "serve"]
