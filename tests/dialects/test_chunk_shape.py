"""Text chunks checked by their bytes (`chunk_shape`): which chunks give a shape, which match one."""

from __future__ import annotations

import orjson
import pytest

from gateway.dialects.chunk_shape import ChunkShape


def _chunk(delta: dict[str, object], **extra: object) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice], **extra}
    return orjson.dumps(body)


def _shape(delta: dict[str, object], **extra: object) -> ChunkShape | None:
    return ChunkShape.of(_chunk(delta, **extra), delta)


@pytest.mark.parametrize("name", ["content", "reasoning_content"])
def test_a_text_chunk_has_the_shape_of_its_bytes_around_the_text(name: str) -> None:
    shape = _shape({name: "Hi"})
    assert shape is not None
    assert shape.head.endswith(b'"delta":{"' + name.encode() + b'":"')
    assert shape.tail.startswith(b'"},"logprobs":null')
    assert shape.text(_chunk({name: "other words"})) == len("other words")
    assert shape.text(_chunk({name: ""})) == 0
    assert shape.text(_chunk({name: "thé 字"})) == len("thé 字")


@pytest.mark.parametrize(
    "delta",
    [
        {"content": 'say "hi"'},  # written with escapes: where it ends is not found by a search
        {"content": "a\nb"},
        {"content": None},
        {"content": 5},
        {"role": "assistant"},
        {"refusal": "no"},
        {"role": "assistant", "content": "Hi"},  # more than the text
        {},
    ],
)
def test_no_shape_unless_the_delta_is_one_text_written_plainly(delta: dict[str, object]) -> None:
    assert _shape(delta) is None


def test_no_shape_when_the_text_could_be_at_two_places() -> None:
    twice = {"delta": {"content": "x"}}
    assert _shape({"content": "x"}, extra=twice) is None


def test_no_shape_when_the_byte_before_the_key_is_not_one_that_opens_or_goes_on_an_object() -> None:
    piece = _chunk({"content": "Hi"})
    assert ChunkShape.of(piece, {"content": "Hi"}) is not None
    assert ChunkShape.of(piece.replace(b',"delta":{', b', "delta":{'), {"content": "Hi"}) is None


@pytest.mark.parametrize(
    "text",
    [b'a"b', b"a\\nb", b"a\\", b"\x00", b"\x1f", b"\xff", b"\xc3", b"\xed\xa0\x80"],  # the last: a surrogate
)
def test_a_text_written_otherwise_does_not_match(text: bytes) -> None:
    shape = _shape({"content": "Hi"})
    assert shape is not None
    assert shape.text(shape.head + text + shape.tail) is None


def test_other_bytes_around_the_text_do_not_match() -> None:
    shape = _shape({"content": "Hi"})
    assert shape is not None
    assert shape.text(_chunk({"content": "Hi"}, usage=None)) is None
    assert shape.text(_chunk({"reasoning_content": "Hi"})) is None
    assert shape.text(shape.head) is None  # shorter than the bytes around a text
    assert shape.text(shape.head[:-1] + shape.tail) is None  # the quotes overlap
    assert shape.text(b"[DONE]") is None


def _run(shape: ChunkShape, texts: list[bytes]) -> tuple[int, int, int]:
    """`run` from the second of an unrelated piece and then a piece per text."""
    return shape.run([b"[DONE]", *(shape.head + text + shape.tail for text in texts)], 1)


def test_a_run_of_pieces_of_the_shape_is_measured_at_once() -> None:
    shape = _shape({"content": "Hi"})
    assert shape is not None
    texts = ["a", "", "thé", " 字 ", "\x7f"]
    pieces = [_chunk({"content": text}) for text in texts]
    end, size, chars = shape.run([*pieces, _chunk({"content": "x"}, usage=None), pieces[0]], 0)
    assert (end, chars) == (len(texts), sum(map(len, texts)))
    assert size == len(b"".join(b"data: " + piece + b"\n\n" for piece in pieces))
    assert shape.run(pieces, 5) == (5, 0, 0)  # nothing from the end on
    assert shape.run([b"[DONE]", *pieces], 0) == (0, 0, 0)


@pytest.mark.parametrize(
    ("texts", "kept"),
    [
        ([b"a", b'b"c', b"d"], 1),  # each ends the run at the first text written otherwise
        ([b"a", b"b", b"c\\nd"], 2),
        ([b"\t", b"a"], 0),
        ([b"\xc3\xa9", b"\xc3", b"\xa9"], 1),  # a sequence cut between two texts is no text
        ([b"a", b"\xed\xa0\x80"], 1),
    ],
)
def test_a_run_ends_before_a_text_written_otherwise(texts: list[bytes], kept: int) -> None:
    shape = _shape({"content": "Hi"})
    assert shape is not None
    end, size, chars = _run(shape, texts)
    assert end == 1 + kept
    assert size == sum(len(shape.head + text + shape.tail) + 8 for text in texts[:kept])
    assert chars == sum(len(text.decode()) for text in texts[:kept])


class _Watched(list[bytes]):
    """A list that remembers the highest index read one by one."""

    highest = -1

    def __getitem__(self, at):  # type: ignore[no-untyped-def, override]
        if isinstance(at, int):
            self.highest = max(self.highest, at)
        return super().__getitem__(at)


def test_a_run_reads_no_piece_past_the_one_that_ends_it() -> None:
    """So that a read whose runs are cut by texts written otherwise (a markdown line end is `\\n`
    in JSON) is walked once, not once per cut."""
    shape = _shape({"content": "Hi"})
    assert shape is not None
    plain, escaped = _chunk({"content": "a"}), _chunk({"content": "a\nb"})
    pieces = _Watched([plain, plain, escaped, *[plain] * 1000])
    assert shape.run(pieces, 0)[0] == 2
    assert pieces.highest == 2


def test_a_run_ends_at_a_piece_too_short_for_the_shape() -> None:
    shape = _shape({"content": "Hi"})
    assert shape is not None
    assert shape.run([_chunk({"content": "a"}), shape.head[:-1] + shape.tail], 0)[0] == 1


def test_frames_whatever_the_text() -> None:
    shape = _shape({"content": "Hi"})
    assert shape is not None
    assert shape.frames(_chunk({"content": 'say "hi"\n'}))
    assert not shape.frames(_chunk({"reasoning_content": "Hi"}))
    assert not shape.frames(shape.head[:-1] + shape.tail)


@pytest.mark.parametrize(
    "piece",
    [
        # A duplicate key: a parser reads the last text, not the one found.
        b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        b'"delta":{"content":"Hi","content":"Hi"},"finish_reason":null}]}',
        # A duplicate delta, the one read written with a space.
        b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        b'"delta":{"content":"Hi"},"delta": {"content":"Hi"},"finish_reason":null}]}',
        # Another object that looks like a delta, beside the real one written with a space.
        b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","x":{"delta":{"content":"Hi"}},'
        b'"choices":[{"index":0,"delta": {"content":"Hi"},"finish_reason":null}]}',
    ],
)
def test_no_shape_when_the_text_found_is_not_the_one_read_as_the_deltas(piece: bytes) -> None:
    delta = orjson.loads(piece)["choices"][0]["delta"]
    assert delta == {"content": "Hi"}
    assert ChunkShape.of(piece, delta) is None
