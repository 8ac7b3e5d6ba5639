"""The deployment files, checked by the validators their formats have and against each other.

No Docker engine or cluster runs here, so: hadolint for the Dockerfile, the Compose specification's
JSON schema for docker-compose.yml, the Kubernetes schemas (kubernetes-validate, strict) for the
manifests, promtool for the Prometheus config and rules; then what refers to what must exist.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"`{name}` is missing: `python3 dev.py test` installs it"
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_hadolint_passes_the_dockerfile() -> None:
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_specification() -> None:
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_config_and_rules() -> None:
    config = _run(_tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _run(_tool("promtool"), "check", "rules", "deploy/prometheus/alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout


def _manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_kubernetes_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    result = _run(_tool("kubernetes-validate"), "--strict", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith(("WARN", "ERROR"))]
    if path.name == "servicemonitor.yaml":  # a CRD: no schema in Kubernetes; checked below instead
        assert all("ServiceMonitor" in line for line in warnings), warnings
    else:
        assert not warnings, warnings


def _docs() -> list[dict[str, Any]]:
    return [doc for path in _manifests() for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} is not defined exactly once"
    return found[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_everything_the_kubernetes_deployment_refers_to_is_defined() -> None:
    deployment = _one("Deployment", "llm-gateway")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    [container] = pod["spec"]["containers"]
    for source in container["envFrom"]:
        _one("Secret", source["secretRef"]["name"])
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            _one("ConfigMap", volume["configMap"]["name"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    redis_host = re.match(r"redis://([^:/]+)", env["GATEWAY_REDIS_URL"])
    assert redis_host is not None
    redis_service = _one("Service", redis_host.group(1))
    redis_pods = _one("StatefulSet", redis_host.group(1))["spec"]["template"]["metadata"]["labels"]
    assert _selects(redis_service["spec"]["selector"], redis_pods)
    # The probes and the Service use the container's named port; the Service selects these pods only.
    ports = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert container["resources"]["requests"] and container["securityContext"]["readOnlyRootFilesystem"]
    service = _one("Service", "llm-gateway")
    assert _selects(service["spec"]["selector"], labels) and not _selects(service["spec"]["selector"], redis_pods)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    hpa = _one("HorizontalPodAutoscaler", "llm-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-gateway"}
    assert _selects(_one("PodDisruptionBudget", "llm-gateway")["spec"]["selector"]["matchLabels"], labels)
    monitor = _one("ServiceMonitor", "llm-gateway")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in _manifests()]


def test_the_configmap_holds_the_shipped_config_and_needs_the_secret() -> None:
    text = _one("ConfigMap", "llm-gateway-config")["data"]["gateway.yaml"]
    shipped = (ROOT / "config" / "gateway.yaml").read_text()
    differs = [line for line in text.splitlines() if line not in shipped.splitlines()]
    assert [line.split("#")[0].strip() for line in differs] == ["key: ${GATEWAY_DEMO_KEY}"]
    config = parse_config(text, env={"GATEWAY_DEMO_KEY": "sk-from-secret", "GATEWAY_REDIS_URL": "redis://r:6379/0"})
    assert config.redis_url == "redis://r:6379/0"
    with pytest.raises(ConfigError, match="GATEWAY_DEMO_KEY"):
        parse_config(text, env={})
    secret_keys = set(_one("Secret", "llm-gateway")["stringData"])
    assert _variables(text) - {"GATEWAY_REDIS_URL", "VLLM_BASE_URL", "VLLM_MODEL"} <= secret_keys


def _variables(text: str) -> set[str]:
    """The `${VAR}` names a config reads, comments left out."""
    code = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", code))


def test_every_variable_of_the_shipped_config_reaches_the_compose_gateway() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    needed = _variables((ROOT / "config" / "gateway.yaml").read_text())
    assert {"GATEWAY_DEMO_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VLLM_MODEL"} <= needed
    assert needed <= set(gateway["environment"])
    example = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert needed - {"GATEWAY_REDIS_URL"} <= example
    # Published on loopback unless the operator says otherwise; the config is mounted, not baked.
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("${") and ":-127.0.0.1}" in port, port
    assert "./config:/etc/gateway:ro" in gateway["volumes"]
    assert "COPY config" not in (ROOT / "Dockerfile").read_text()
    assert set(compose["services"]) >= {"gateway", "redis", "prometheus", "grafana"}
    assert "--appendonly" in compose["services"]["redis"]["command"]


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/llm-gateway.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == path
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/llm-gateway.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "llm-gateway"  # the job the alerts name
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:8080"]
