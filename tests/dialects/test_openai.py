"""The OpenAI dialect: request building, reply and stream decoding, against golden wire files."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ModelOptions, UpstreamConfig
from gateway.dialects.base import Target, Usage
from gateway.dialects.openai import OpenAIDialect
from gateway.dialects.vendors import PROFILES
from gateway.errors import UpstreamProtocolError, UpstreamStatusError
from gateway.request import check_chat_body
from tests.conftest import GOLDEN
from tests.support.spec import assert_valid

DIALECT = OpenAIDialect(PROFILES["openai"])
UPSTREAM = UpstreamConfig(
    name="up", dialect="openai", base_url="https://api.example.com/v1", api_key="sk-up-1234567890"
)
STREAM = (GOLDEN / "openai" / "stream.sse").read_bytes()


def _request(**extra: object):  # type: ignore[no-untyped-def]
    return check_chat_body({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **extra})


def _decode_all(pieces: list[bytes], include_usage: bool) -> list[bytes]:
    decoder = DIALECT.stream_decoder(
        _request(stream=True, **({"stream_options": {"include_usage": True}} if include_usage else {}))
    )
    out: list[bytes] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.finish()


def test_build_request_sets_credentials_model_and_stream_usage() -> None:
    built = DIALECT.build_request(
        _request(stream=True, temperature=0.2), Target(UPSTREAM, "gpt-4o-2024-08-06", ModelOptions())
    )
    assert built.url == "https://api.example.com/v1/chat/completions"
    assert built.headers["authorization"] == "Bearer sk-up-1234567890"
    assert built.headers["accept"] == "text/event-stream"
    body = json.loads(built.body)
    assert body["model"] == "gpt-4o-2024-08-06"
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2


def test_build_request_without_api_key_sends_no_authorization() -> None:
    local = UpstreamConfig(name="vllm", dialect="openai", base_url="http://127.0.0.1:8000/v1")
    assert "authorization" not in DIALECT.build_request(_request(), Target(local, "m", ModelOptions())).headers


def test_stream_golden_with_usage() -> None:
    out = _decode_all([STREAM], include_usage=True)
    assert out[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in out[:-1]]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:3]] == ["", "Hello", " 世界"]
    assert chunks[3]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0  # filled in: the spec requires it
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 21


def test_stream_golden_without_usage_drops_usage_chunk_and_fields() -> None:
    out = _decode_all([STREAM], include_usage=False)
    chunks = [json.loads(e[6:]) for e in out[:-1]]
    assert len(chunks) == 5
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_stream_usage_captured_either_way() -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    decoder.feed(STREAM)
    assert decoder.usage == Usage(9, 12, 21, 4, 3, None)


def test_stream_split_at_every_byte_boundary_decodes_identically() -> None:
    whole = b"".join(_decode_all([STREAM], include_usage=True))
    for cut in range(1, len(STREAM)):
        assert b"".join(_decode_all([STREAM[:cut], STREAM[cut:]], include_usage=True)) == whole, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12), st.booleans())
def test_stream_any_split_and_line_ending_decodes_identically(cuts: list[int], crlf: bool) -> None:
    stream = STREAM.replace(b"\n", b"\r\n") if crlf else STREAM
    scale = len(stream) / len(STREAM)
    points = sorted({int(c * scale) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert b"".join(_decode_all(pieces, include_usage=True)) == b"".join(_decode_all([STREAM], include_usage=True))


def test_stream_ending_early_is_a_protocol_error() -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    decoder.feed(STREAM[: STREAM.index(b"Hello") + 100])
    with pytest.raises(UpstreamProtocolError):
        decoder.finish()


def test_stream_garbage_event_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        DIALECT.stream_decoder(_request(stream=True)).feed(b"data: {nope\n\n")


def test_stream_error_event_raises_status_error() -> None:
    event = b'data: {"error": {"message": "overloaded", "type": "server_error", "code": "busy"}}\n\n'
    with pytest.raises(UpstreamStatusError) as info:
        DIALECT.stream_decoder(_request(stream=True)).feed(event)
    assert "overloaded" in info.value.message and info.value.code == "busy"


def test_sloppy_reply_golden() -> None:
    raw = (GOLDEN / "openai" / "reply_sloppy.json").read_bytes()
    expected = json.loads((GOLDEN / "openai" / "reply_sloppy.expected.json").read_bytes())
    reply = DIALECT.decode_reply(raw, _request())
    body = orjson.loads(reply.body)
    assert body == expected
    assert_valid("CreateChatCompletionResponse", body)
    assert reply.usage == Usage(5, 2, 7, 3, 0, None)


def test_reply_missing_id_gets_one() -> None:
    body = orjson.loads(DIALECT.decode_reply(b'{"choices": []}', _request()).body)
    assert body["id"].startswith("chatcmpl-") and body["model"] == "gpt-4o"
    assert_valid("CreateChatCompletionResponse", body)


@pytest.mark.parametrize("raw", [b"<html>", b"[]", b""])
def test_reply_not_a_json_object_is_protocol_error(raw: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        DIALECT.decode_reply(raw, _request())


@pytest.mark.parametrize(
    ("status", "client_status", "retryable"),
    [
        (400, 400, False),
        (404, 502, True),  # not about a model: the address is wrong (see below)
        (422, 422, False),
        (401, 502, True),
        (403, 502, True),
        (429, 429, True),
        (500, 502, True),
        (502, 502, True),
        (503, 503, True),
        (504, 504, True),
    ],
)
def test_error_statuses(status: int, client_status: int, retryable: bool) -> None:
    body = b'{"error": {"message": "Incorrect API key provided: sk-up-1234567890", "type": "x", "param": null}}'
    err = DIALECT.decode_error(status, body, {"retry-after": "7"}, UPSTREAM)
    assert err.status == client_status and err.retryable is retryable
    assert "sk-up-1234567890" not in err.message
    assert_valid("ErrorResponse", err.body())
    if status == 429:
        assert (b"retry-after", b"7") in err.headers


@pytest.mark.parametrize(
    ("body", "client_status", "code"),
    [
        (
            b'{"error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}}',
            404,
            "model_not_found",
        ),
        (b'{"type": "error", "error": {"type": "not_found_error", "message": "model: claude-x"}}', 404, None),
        (  # something the client named is not there (a stored response): the client's 404
            b'{"error": {"message": "Previous response with id \'r\' not found.", "param": "previous_response_id"}}',
            404,
            None,
        ),
        (b"404: Not Found", 502, "upstream_endpoint_not_found"),
        (b"<html><body>Not Found</body></html>", 502, "upstream_endpoint_not_found"),
    ],
)
def test_a_404_is_the_clients_only_when_it_is_about_the_model(
    body: bytes, client_status: int, code: str | None
) -> None:
    err = DIALECT.decode_error(404, body, {}, UPSTREAM)
    assert (err.status, err.code) == (client_status, code)
    assert err.retryable is (client_status == 502)  # another deployment may be configured right


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "plain string"}', "plain string"),
        (b'{"code": "Throttling", "message": "Requests throttled", "request_id": "x"}', "Requests throttled"),
        (b"upstream exploded", "upstream exploded"),
        (b"", "empty reply"),
    ],
)
def test_error_bodies_of_many_shapes(body: bytes, message: str) -> None:
    assert message in DIALECT.decode_error(400, body, {}, UPSTREAM).message


PLAIN = (
    b'{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "service_tier": "default",'
    b' "choices": [{"index": 0, "delta": {"content": "Hi \\u00e9"}, "logprobs": null, "finish_reason": null}]}'
)


def test_chunks_that_need_no_change_go_out_as_the_upstreams_bytes() -> None:
    """Parsed and checked, but not written again: spacing, escapes and field order stay the upstream's."""
    decoder = DIALECT.stream_decoder(_request(stream=True))
    assert decoder.feed(b"data: " + PLAIN + b"\n\n") == [b"data: " + PLAIN + b"\n\n"]
    assert decoder.feed(b"data: " + PLAIN + b"\n\ndata: [DONE]\n\n") == [b"data: " + PLAIN + b"\n\n"]
    assert decoder.text_chars == 2 * len("Hi é")
    # The `"usage": null` OpenAI writes when the gateway asked for usage goes for a client that did not.
    with_null = b"data: " + PLAIN[:-1] + b',"usage":null}\n\n'
    assert DIALECT.stream_decoder(_request(stream=True)).feed(with_null) == [b"data: " + PLAIN + b"\n\n"]
    asked = DIALECT.stream_decoder(_request(stream=True, stream_options={"include_usage": True}))
    assert asked.feed(with_null) == [with_null]


# Chunks of many shapes, sloppy ones among them: the pass-through and the full treatment must agree.
_TEXT = st.one_of(st.none(), st.text(max_size=4), st.integers(0, 3))
_DELTA = st.dictionaries(
    st.sampled_from(["role", "content", "reasoning_content", "reasoning", "refusal", "tool_calls", "x"]),
    st.one_of(_TEXT, st.just([{"id": "t", "function": {"name": "f", "arguments": "{}"}}])),
    max_size=3,
)
_CHOICE = st.fixed_dictionaries(
    {"delta": st.one_of(_DELTA, st.none(), st.just("d"))},
    optional={
        "index": st.one_of(st.integers(0, 2), st.just("0")),
        "finish_reason": st.sampled_from([None, "stop", "length", "end_turn", "weird", 3]),
        "logprobs": st.none(),
        "usage": st.just({"prompt_tokens": 2, "completion_tokens": 1}),
    },
)
_CHUNK = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["c1", "", 5]),
        "object": st.sampled_from(["chat.completion.chunk", "chat.completion"]),
        "created": st.sampled_from([1, "1", 1.5]),
        "model": st.sampled_from(["m", ""]),
        "choices": st.one_of(st.lists(_CHOICE, max_size=2), st.none()),
        "usage": st.one_of(st.none(), st.just({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})),
        "service_tier": st.just("default"),
    },
)


def _full_treatment(decoder: object) -> object:
    decoder._plain = False  # type: ignore[attr-defined]
    return decoder


@settings(max_examples=300, deadline=None)
@given(st.lists(_CHUNK, min_size=1, max_size=4), st.booleans(), st.booleans(), st.booleans())
def test_the_pass_through_agrees_with_the_full_treatment(
    chunks: list[dict[str, object]], include_usage: bool, spaced: bool, done: bool
) -> None:
    raw = b"".join(
        b"data: " + (json.dumps(c, ensure_ascii=False).encode() if spaced else orjson.dumps(c)) + b"\n\n"
        for c in chunks
    ) + (b"data: [DONE]\n\n" if done else b"")
    request = _request(stream=True, **({"stream_options": {"include_usage": True}} if include_usage else {}))
    fast, full = DIALECT.stream_decoder(request), _full_treatment(DIALECT.stream_decoder(request))
    outcomes = []
    for decoder in (fast, full):
        decoder._id = "chatcmpl-made"  # type: ignore[attr-defined]  # the id the gateway gives a chunk without one
        try:
            events = decoder.feed(raw)
        except UpstreamProtocolError as exc:
            outcomes.append(("error", exc.message))
            continue
        parsed = [orjson.loads(e[6:]) for e in b"".join(events).split(b"\n\n")[:-1]]
        outcomes.append((parsed, decoder.usage, decoder.text_chars, decoder._finished, decoder._saw_done))  # type: ignore[attr-defined]
    assert outcomes[0] == outcomes[1]


# Text chunks as OpenAI-compatible upstreams write them, the same but for their text: the second and
# later of a shape are checked by their bytes (`chunk_shape`), and must agree with the full treatment.
_TEXT_CHUNK = st.fixed_dictionaries(
    {
        "id": st.just("c1"),
        "object": st.just("chat.completion.chunk"),
        "created": st.just(1),
        "model": st.just("m"),
        "choices": st.tuples(
            st.sampled_from(["content", "content", "reasoning_content", "refusal", "role"]),
            st.sampled_from([None, None, None, "stop", "weird"]),
        ).map(lambda kf: [{"index": 0, "delta": {kf[0]: "a"}, "logprobs": None, "finish_reason": kf[1]}]),
    },
    optional={"usage": st.none(), "service_tier": st.just("default")},
)
_ENCODINGS = {
    "compact": orjson.dumps,
    "spaced": lambda c: json.dumps(c, ensure_ascii=False).encode(),
    "ascii": lambda c: json.dumps(c, separators=(",", ":")).encode(),  # non-ASCII text as \u escapes
}


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(_TEXT_CHUNK, _TEXT_CHUNK, _TEXT_CHUNK, _CHUNK), min_size=1, max_size=4),
    st.lists(st.one_of(st.text(max_size=5), st.binary(max_size=4)), min_size=1, max_size=4),
    st.sampled_from(sorted(_ENCODINGS)),
    st.booleans(),
    st.one_of(st.none(), st.lists(st.integers(0, 4000), max_size=6)),
    st.one_of(st.none(), st.integers(0, 100)),
)
def test_chunks_that_differ_only_in_their_text_agree_with_the_full_treatment(
    chunks: list[dict[str, object]],
    texts: list[str | bytes],
    encoding: str,
    include_usage: bool,
    cuts: list[int] | None,
    done_at: int | None,
) -> None:
    """Each chunk is followed by copies of it with other texts in its delta: written by the encoder
    (a `str`), or put raw between the bytes around its text (`bytes`: quotes, backslashes, control
    characters, broken UTF-8). Fed an event a read (`cuts` None), or all cut at `cuts`; with a
    `[DONE]` among them at `done_at`. No read's events hold an empty piece (a caller takes a list
    with one as events to send)."""
    encode = _ENCODINGS[encoding]
    pieces: list[bytes] = []
    for chunk in chunks:
        piece = encode(chunk)
        pieces.append(piece)
        choices = chunk.get("choices")
        delta = choices[0].get("delta") if type(choices) is list and choices and type(choices[0]) is dict else None
        if type(delta) is not dict or len(delta) != 1 or type(next(iter(delta.values()))) is not str:
            continue
        name = next(iter(delta))
        for text in texts:
            if isinstance(text, str):
                pieces.append(encode({**chunk, "choices": [{**choices[0], "delta": {name: text}}]}))  # type: ignore[list-item]
            else:
                marker = encode(next(iter(delta.values())))  # the text as written, quotes included
                at = piece.rfind(marker)
                pieces.append(piece[: at + 1] + text + piece[at + len(marker) - 1 :])
    if done_at is not None:
        pieces.insert(done_at % (len(pieces) + 1), b"[DONE]")
    raw = [b"data: " + piece + b"\n\n" for piece in pieces]
    if cuts is not None:
        blob = b"".join(raw)
        at = sorted({0, len(blob), *(cut % len(blob) for cut in cuts)})
        raw = [blob[a:b] for a, b in itertools.pairwise(at)]
    request = _request(stream=True, **({"stream_options": {"include_usage": True}} if include_usage else {}))
    fast, full = DIALECT.stream_decoder(request), _full_treatment(DIALECT.stream_decoder(request))
    outcomes = []
    for decoder in (fast, full):
        decoder._id = "chatcmpl-made"  # type: ignore[attr-defined]
        events: list[bytes] = []
        try:
            for data in raw:
                events += decoder.feed(data)
        except UpstreamProtocolError as exc:
            outcomes.append(("error", exc.message, b"".join(events).count(b"\n\n")))
            continue
        assert all(events)
        parsed = [orjson.loads(e[6:]) for e in b"".join(events).split(b"\n\n")[:-1]]
        outcomes.append((parsed, decoder.usage, decoder.text_chars, decoder._finished, decoder._saw_done))  # type: ignore[attr-defined]
    assert outcomes[0] == outcomes[1]


def _text_event(text: str, name: str = "content") -> bytes:
    choice = {"index": 0, "delta": {name: text}, "finish_reason": None}
    return b"data: " + orjson.dumps({**orjson.loads(PLAIN), "choices": [choice]}) + b"\n\n"


def test_text_chunks_of_one_shape_go_out_as_the_upstreams_bytes() -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    texts = ["Hi", " th\u00e9re", "\n", ' "q"', " end"]
    for text in texts:
        assert decoder.feed(_text_event(text)) == [_text_event(text)]
    assert decoder.text_chars == sum(len(text) for text in texts)
    assert decoder._shape is not None  # type: ignore[attr-defined]


def test_text_chunks_of_a_shape_seen_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    assert decoder.feed(_text_event("Hi")) == [_text_event("Hi")]

    def unparsed(obj: object) -> int | None:
        raise AssertionError("parsed")

    monkeypatch.setattr("gateway.dialects.openai.plain_chunk", unparsed)
    assert decoder.feed(_text_event(" there")) == [_text_event(" there")]  # a read of one event
    two = _text_event(" and") + _text_event(" thé")
    assert decoder.feed(two) == [two]  # a read of several
    assert decoder.text_chars == len("Hi there and thé")


def test_a_read_that_starts_a_new_event_while_one_is_held_is_not_taken_whole() -> None:
    """An event cut short and another after it: the bytes of both together are no chunk, and the
    full treatment says so, fast or not."""
    reads = [_text_event("Hi"), b'data: {"a', _text_event("ab")]
    for decoder in (
        DIALECT.stream_decoder(_request(stream=True)),
        _full_treatment(DIALECT.stream_decoder(_request(stream=True))),
    ):
        decoder.feed(reads[0])
        assert decoder.feed(reads[1]) == []
        with pytest.raises(UpstreamProtocolError):
            decoder.feed(reads[2])


def test_a_stream_takes_a_new_shape_when_its_text_moves_and_not_for_escaped_texts() -> None:
    decoder = DIALECT.stream_decoder(_request(stream=True))
    for text in ["Let me think", *["a\nb"] * 20, "so"]:
        assert decoder.feed(_text_event(text, "reasoning_content")) == [_text_event(text, "reasoning_content")]
    shape = decoder._shape  # type: ignore[attr-defined]
    assert shape is not None and shape.head.endswith(b'{"reasoning_content":"')
    assert decoder.feed(_text_event("Hi")) == [_text_event("Hi")]
    assert decoder._shape.head.endswith(b'{"content":"')  # type: ignore[attr-defined]
    assert decoder.text_chars == len("Let me think") + 20 * 3 + len("so") + len("Hi")


def test_only_a_bare_object_goes_out_as_it_came() -> None:
    """Consumers of the relayed events (the other APIs' translators, the content log) read `data: {`:
    an object with spaces around it is written again."""
    for framed in (b" " + PLAIN, b"\t" + PLAIN, PLAIN + b"  "):
        out = DIALECT.stream_decoder(_request(stream=True)).feed(b"data: " + framed + b"\n\n")
        assert len(out) == 1 and out[0].startswith(b"data: {") and out[0].endswith(b"}\n\n")
        assert orjson.loads(out[0][6:]) == orjson.loads(PLAIN)


def test_finish_reasons_of_any_type() -> None:
    bad = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {}, "finish_reason": ["stop"]}]}  # fmt: skip
    out = DIALECT.stream_decoder(_request(stream=True)).feed(b"data: " + orjson.dumps(bad) + b"\n\n")
    assert orjson.loads(out[0][6:])["choices"][0]["finish_reason"] == "stop"


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


MISTRAL_THINKING = [
    {"type": "thinking", "thinking": [{"type": "text", "text": "Two and "}, {"type": "text", "text": "two."}]},
    {"type": "text", "text": "Four"},
    {"type": "reference", "reference_ids": [1]},
    {"type": "text", "text": "."},
]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (MISTRAL_THINKING, {"content": "Four.", "reasoning_content": "Two and two."}),
        ([{"type": "thinking", "thinking": "Hm."}], {"content": None, "reasoning_content": "Hm."}),
        (["a", {"text": "b"}], {"content": "ab"}),
        (42, {"content": "42"}),
        ({"answer": 1}, {"content": '{"answer":1}'}),
        ([], {"content": None}),
        ([[[[[[["deep"]]]]]]], {"content": None}),  # parts nest a level or two; deeper is not read
        (_nested(300), {"content": None}),  # an object deeper than orjson writes
    ],
)
def test_a_reply_whose_content_is_not_a_string_gets_one(content: object, expected: dict[str, object]) -> None:
    raw = json.dumps(  # not orjson: it writes no more than 254 levels
        {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
    ).encode()  # fmt: skip
    body = orjson.loads(DIALECT.decode_reply(raw, _request()).body)
    assert_valid("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert {name: message.get(name) for name in expected} == expected
    assert "reasoning_content" in message or "reasoning_content" not in expected


def test_stream_deltas_whose_content_is_not_a_string_get_one() -> None:
    def event(delta: dict[str, object]) -> bytes:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    upstream = b"".join(
        [
            event({"role": "assistant", "content": ""}),
            event({"content": [MISTRAL_THINKING[0]]}),
            event({"content": [{"type": "text", "text": "Four"}]}),
            event({"content": "."}),
            event({"content": 7, "reasoning_content": [{"type": "text", "text": "!"}]}),
            b"data: [DONE]\n\n",
        ]
    )
    out = b"".join(_decode_all([upstream], include_usage=False))
    chunks = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Four.7"
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Two and two.!"
    assert out.endswith(b"data: [DONE]\n\n")
