"""A trickle of requests to the `echo` model, so the compose stack's dashboard has data at once.

Standard library only (it runs in the gateway image). Sends about one request a second, buffered
and streamed, plus an occasional mistake (an unknown model), until stopped. Remove the
`demo-traffic` service from docker-compose.yml to run the stack without it.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import urllib.error
import urllib.request

URL = os.environ.get("GATEWAY_URL", "http://gateway:8080") + "/v1/chat/completions"
KEY = os.environ.get("GATEWAY_DEMO_KEY") or "sk-demo"


def send(model: str, stream: bool) -> int:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hello from the demo"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    request = urllib.request.Request(
        URL,
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def main() -> None:
    for i in itertools.count():
        try:
            status = send("no-such-model" if i % 20 == 19 else "echo", stream=i % 2 == 1)
        except OSError as exc:  # the gateway is starting or restarting
            print(f"demo traffic: {exc}", flush=True)
            time.sleep(5)
            continue
        if i % 60 == 0:
            print(f"demo traffic: {i + 1} requests sent, last status {status}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
