"""The fault matrix: each way a real upstream fails, buffered and streamed, and what the client and
the ledger get. The fake upstream is a real server on loopback (tests/support/fake_openai.py); the
test gateway gives an upstream 1 s of silence (`GATEWAY_UPSTREAM_READ_TIMEOUT`)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.support.fake_openai import FakeOpenAI
from tests.support.spec import sse_payloads

USER = [{"role": "user", "content": "Hello there friend"}]
OK = "ok"  # a complete reply (a stream ends with its last chunk and [DONE])
CUT = "error event"  # a stream that started, then an error event and [DONE]

# (fault, streamed, what the client gets, requests the ledger records)
MATRIX = [
    ("status-429", False, 429, 0),
    ("status-429", True, 429, 0),
    ("status-500", False, 502, 0),
    ("status-500", True, 502, 0),
    ("status-503", False, 503, 0),
    ("status-503", True, 503, 0),
    ("hang", False, 504, 0),
    ("hang", True, 504, 0),
    ("slow-start", True, 504, 0),
    ("not-json", False, 502, 0),
    ("not-json", True, 502, 0),
    ("truncated", False, 502, 0),
    ("truncated", True, CUT, 1),
    ("bad-utf8", False, 502, 0),
    ("bad-utf8", True, CUT, 1),
    ("drop", True, CUT, 1),
    ("stall", True, CUT, 1),
    ("mid-error", True, CUT, 1),
    ("trickle", False, OK, 1),
    ("trickle", True, OK, 1),
    ("no-done", True, OK, 1),
]


@pytest.mark.parametrize(("fault", "stream", "outcome", "recorded"), MATRIX, ids=lambda v: str(v))
def test_fault_matrix(
    raw: httpx.Client,
    gateway: RunningGateway,
    fake: FakeOpenAI,
    fault: str,
    stream: bool,
    outcome: object,
    recorded: int,
) -> None:
    model = f"fake-{fault}"
    response = raw.post("/v1/chat/completions", json={"model": model, "messages": USER, "stream": stream})
    if outcome == OK:
        assert response.status_code == 200, response.text
        if stream:
            payloads = sse_payloads(response.content)
            assert payloads[-1] == b"[DONE]"
            text = "".join(
                (json.loads(p)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for p in payloads[:-1]
            )
            assert text == "Hello there friend"
        else:
            assert response.json()["choices"][0]["message"]["content"] == "Hello there friend"
    elif outcome == CUT:
        assert response.status_code == 200
        payloads = sse_payloads(response.content)
        assert payloads[-1] == b"[DONE]" and "error" in json.loads(payloads[-2])
        assert b"chat.completion.chunk" in payloads[0]
    else:
        assert response.status_code == outcome, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        if outcome == 429:
            assert response.headers["retry-after"] == "1"
    ledger = gateway.app.runtime.ledger
    day = time.strftime("%Y-%m-%d", time.gmtime())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        usage = asyncio.run(ledger.usage("tester", day)).get(model, {})
        if usage.get("requests", 0) >= recorded:
            break
        time.sleep(0.05)
    assert usage.get("requests", 0) == recorded
