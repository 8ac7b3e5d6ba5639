"""GET /v1/models, /v1/models/{id}, /healthz, /readyz, and errors outside the chat route."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.spec import Checker, assert_valid


def test_models_lists_exact_names_with_usable_upstreams(client: openai.OpenAI, checker: Checker) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [
        "echo",
        "gpt-test",
        "fallback",
        "dead",
        "by-name",
        "sticky",
        "claude-adaptive",
    ]  # config order; no patterns; `nokey` has no key
    assert checker.checked == 1


def test_model_owner_is_the_upstream(raw: httpx.Client) -> None:
    body = raw.get("/v1/models").json()
    assert_valid("ListModelsResponse", body)
    owners = {m["id"]: m["owned_by"] for m in body["data"]}
    assert owners["echo"] == "local" and owners["fallback"] == "dead,fake"


def test_retrieve_resolves_patterns(client: openai.OpenAI, checker: Checker) -> None:
    model = client.models.retrieve("fake-anything")
    assert model.id == "fake-anything" and model.owned_by == "fake"
    assert client.models.retrieve("echo").id == "echo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nokey")
    assert checker.checked == 4


def test_retrieve_accepts_slashes_in_model_ids(raw: httpx.Client) -> None:
    response = raw.get("/v1/models/fake-org/model")
    assert response.status_code == 200 and response.json()["id"] == "fake-org/model"


def test_models_needs_a_key(anon: httpx.Client) -> None:
    response = anon.get("/v1/models")
    assert response.status_code == 401
    assert response.headers["x-should-retry"] == "false"
    assert_valid("ErrorResponse", response.json())
    assert response.headers["x-request-id"]


def test_health_and_readiness(anon: httpx.Client) -> None:
    health = anon.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"config": "ok", "ledger": "ok"}
    assert health.headers["x-request-id"] and ready.headers["x-request-id"]


def test_unknown_path_is_openai_shaped_404(raw: httpx.Client) -> None:
    response = raw.post("/v1/nothing-here", json={})
    assert response.status_code == 404
    assert_valid("ErrorResponse", response.json())
    assert response.headers["x-request-id"]


def test_wrong_method_on_models_is_405(raw: httpx.Client) -> None:
    response = raw.delete("/v1/models")
    assert response.status_code == 405
    assert_valid("ErrorResponse", response.json())
