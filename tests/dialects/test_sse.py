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
