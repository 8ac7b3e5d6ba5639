"""Property: any valid OpenAI request (plus extensions) translates for every dialect without an exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ModelOptions, UpstreamConfig
from gateway.dialects.base import Target
from gateway.dialects.registry import CHAT, TRANSLATORS
from gateway.dialects.vendors import PROFILES
from gateway.extensions import EFFORTS
from gateway.request import check_chat_body

text = st.text(max_size=30)
json_args = st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | text, max_size=3).map(json.dumps)
part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(
        lambda u: {"type": "image_url", "image_url": {"url": u}},
        st.sampled_from(["https://e.com/a.png", "data:image/jpeg;base64,/9j/4AAQ"]),
    ),
)
content = st.one_of(text, st.lists(part, min_size=1, max_size=3))
tool_call = st.builds(
    lambda i, n, a: {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}},
    st.integers(0, 99),
    st.sampled_from(["f", "g"]),
    json_args,
)
message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, content),
    st.builds(lambda c: {"role": "system", "content": c}, text),
    st.builds(lambda c: {"role": "developer", "content": c}, text),
    st.builds(
        lambda c, calls: {"role": "assistant", "content": c, **({"tool_calls": calls} if calls else {})},
        st.none() | text,
        st.lists(tool_call, max_size=2),
    ),
    st.builds(lambda c, i: {"role": "tool", "content": c, "tool_call_id": f"call_{i}"}, text, st.integers(0, 99)),
)
tool = st.builds(
    lambda n: {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}},
    st.sampled_from(["f", "g", "h"]),
)
optional: dict[str, Any] = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 100_000),
    "max_completion_tokens": st.integers(1, 100_000),
    "n": st.integers(1, 4),
    "seed": st.integers(-1000, 1000),
    "stop": st.one_of(text, st.lists(text, max_size=4)),
    "presence_penalty": st.floats(-2, 2),
    "user": text,
    "tools": st.lists(tool, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
    "parallel_tool_calls": st.booleans(),
    "response_format": st.sampled_from(
        [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}]
    ),
    "reasoning_effort": st.sampled_from(EFFORTS),
    "enable_thinking": st.booleans(),
    "thinking": st.fixed_dictionaries(
        {}, optional={"budget_tokens": st.integers(0, 100_000), "type": st.sampled_from(["enabled", "disabled"])}
    ),
    "json_mode": st.booleans(),
    "enable_search": st.booleans(),
    "search_config": st.fixed_dictionaries({}, optional={"deepable": st.booleans(), "return_result": st.booleans()}),
    "retries": st.integers(0, 10),
    "sess_id": text.filter(bool),
    "metadata": st.dictionaries(st.text(max_size=5), text, max_size=2),
    "stream": st.booleans(),
}
request = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(message, min_size=1, max_size=6)}, optional=optional
)
options = st.builds(
    ModelOptions, thinking=st.sampled_from([None, "budget", "adaptive"]), max_tokens=st.none() | st.integers(1, 8192)
)
DIALECTS = {
    **{f"openai/{k}": TRANSLATORS[(CHAT, k)] for k in PROFILES},
    **{k: TRANSLATORS[(CHAT, k)] for k in ("echo", "anthropic")},
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request, options)
def test_every_valid_request_translates_for_every_dialect(body: dict[str, Any], model_options: ModelOptions) -> None:
    checked = check_chat_body(body)
    for name, dialect in DIALECTS.items():
        kind, _, vendor = name.partition("/")
        upstream = UpstreamConfig(
            name="u",
            dialect=kind,
            vendor=vendor or "generic",  # type: ignore[arg-type]
            base_url="http://127.0.0.1:9/v1",
            api_key="k",
        )
        built = dialect.build_request(checked, Target(upstream, "up", model_options))
        sent = json.loads(built.body)
        assert sent["model"] == "up"
        assert not {"retries", "sess_id", "json_mode", "search_config"} & sent.keys()
        assert all(isinstance(p, str) and p for p in built.dropped)
