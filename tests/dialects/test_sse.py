from __future__ import annotations

from gateway.dialects.sse import SSEEvent, SSEParser


def _parse(*pieces: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    for piece in pieces:
        out += parser.feed(piece)
    return out


def test_fields_comments_and_multiline_data() -> None:
    raw = b': ping\n\nevent: message_start\ndata: {"a":\ndata: 1}\nid: 7\nretry: 10\n\ndata:no-space\n\n'
    assert _parse(raw) == [SSEEvent("message_start", b'{"a":\n1}'), SSEEvent(None, b"no-space")]


def test_line_endings_cr_crlf_lf() -> None:
    expected = [SSEEvent(None, b"one"), SSEEvent(None, b"two"), SSEEvent(None, b"three")]
    assert _parse(b"data: one\r\n\r\ndata: two\r\rdata: three\n\n") == expected


def test_crlf_split_between_cr_and_lf() -> None:
    assert _parse(b"data: x\r", b"\n\r", b"\ndata: y\r\n\r\n") == [SSEEvent(None, b"x"), SSEEvent(None, b"y")]


def test_every_split_of_a_stream() -> None:
    raw = b"data: a\r\n\r\n: c\r\nevent: e\r\ndata: b\r\n\r\ndata: c\n\n"
    whole = _parse(raw)
    for i in range(len(raw)):
        for j in range(i, len(raw)):
            assert _parse(raw[:i], raw[i:j], raw[j:]) == whole


def test_unterminated_last_event_is_dropped() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial") == []
    assert parser.finish() == []


def test_data_only_splits_whole_one_line_data_events() -> None:
    raw = b'data: {"a":1}\n\ndata: [DONE]\n\n'
    assert SSEParser().data_only(raw) == ([b'{"a":1}', b"[DONE]"], raw)


def test_data_only_leaves_everything_else_to_feed() -> None:
    for raw in (
        b": ping\n\ndata: a\n\n",  # a comment
        b"event: e\ndata: a\n\n",  # a field
        b"data: a\ndata: b\n\n",  # two data lines
        b"data: a\r\n\r\n",  # CR line ends
        b"data:a\n\n",  # no space
        b"data: a\n",  # no event ends: `feed` holds only the partial line
        b"data: a",
    ):
        assert SSEParser().data_only(raw) is None, raw
    named = SSEParser()
    named.feed(b"event: e\n")  # a name held for the next event
    assert named.data_only(b"data: a\n\n") is None
    assert named.feed(b"data: a\n\n") == [SSEEvent("e", b"a")]
    parser = SSEParser()
    parser.feed(b"data: a\n")  # a data line of an event not ended yet
    assert parser.data_only(b"\ndata: b\n\n") is None
    assert parser.feed(b"\ndata: b\n\n") == [SSEEvent(None, b"a"), SSEEvent(None, b"b")]


def _data_only_else_feed(*pieces: bytes) -> list[bytes]:
    parser = SSEParser()
    out: list[bytes] = []
    for piece in pieces:
        found = parser.data_only(piece)
        out += found[0] if found is not None else [e.data for e in parser.feed(piece)]
    return out


def test_data_only_holds_what_a_piece_leaves_unfinished() -> None:
    raw = b'data: {"a":1}\n\ndata: {"b":2}\n\n: ping\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n'
    whole = [e.data for e in _parse(raw)]
    for i in range(len(raw)):
        for j in range(i, len(raw)):
            assert _data_only_else_feed(raw[:i], raw[i:j], raw[j:]) == whole, (i, j)
