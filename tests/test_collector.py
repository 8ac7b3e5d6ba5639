"""The collector is set once a serving app has started, and only then: each case runs in a process of
its own, since a freeze is for good."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from gateway.collector import YOUNG_THRESHOLD

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    from gateway.config import parse_config
    from gateway.http.app import create_app
    from tests.conftest import test_settings

    config = parse_config("keys: [{name: a, key: sk-a}]\\nupstreams: [{name: local, dialect: echo}]\\n"
                          "models: [{name: echo, upstream: local}]")
    app = create_app(test_settings(access_log=False), config, serving=sys.argv[1] == "serving")
    before = gc.get_freeze_count()

    async def lifespan():
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent = []
        async def receive():
            return messages.pop(0)
        async def send(message):
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                frozen.append(gc.get_freeze_count())
        await app({"type": "lifespan"}, receive, send)
        return sent

    frozen = []
    sent = asyncio.run(lifespan())
    print(json.dumps({"sent": sent, "before": before, "frozen": frozen[0], "threshold": gc.get_threshold()}))
    """
)


def _run(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_serving_app_freezes_what_start_up_built_and_collects_young_objects_less_often() -> None:
    result = _run("serving")
    assert result["sent"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert result["before"] == 0
    assert result["frozen"] > 10_000  # modules, config, app: what start-up left
    assert result["threshold"][0] == YOUNG_THRESHOLD


def test_an_app_built_in_someone_elses_process_leaves_the_collector_alone() -> None:
    result = _run("in-process")
    assert result["frozen"] == 0
    assert result["threshold"][0] == 700
