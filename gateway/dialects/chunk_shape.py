"""Text chunks checked by their bytes: a stream's chunks that differ only in their text.

Most chunks of an OpenAI-compatible stream are the same bytes but for the text in their delta:

    {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

Once one of them has been parsed and found to need no change (`openai.plain_chunk`), a later chunk
that is the same bytes before and after its text, with a text written without escapes, is the same
JSON but for that string: it needs no change either, and is not parsed again. Pure.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# The text as the first field of the delta; the byte before it must open or continue an object, so
# that the quote it starts with opens a key (a quote inside a string is always escaped).
_KEYS = {name: b'"delta":{"' + name.encode() + b'":"' for name in ("content", "reasoning_content")}
# A JSON string's contents with nothing escaped: no quote, no backslash, no control character.
_UNESCAPED = re.compile(rb'[^"\\\x00-\x1f]*')
_ESCAPED = b'"\\' + bytes(range(0x20))


class ChunkShape:
    __slots__ = ("_chars", "_escaped", "event_head", "event_tail", "head", "tail")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head = head  # up to and including the text's opening quote
        self.tail = tail  # from the text's closing quote on
        # The same for a whole event: `data: ` before, the blank line that ends it after.
        self.event_head, self.event_tail = b"data: " + head, tail + b"\n\n"
        frame = head + tail
        self._escaped = len(frame) - len(frame.translate(None, _ESCAPED))  # the bytes a text has none of
        self._chars = len(frame.decode())

    @classmethod
    def of(cls, piece: bytes, delta: dict[str, Any]) -> ChunkShape | None:
        """The shape of `piece`, a chunk that went out as it came, without a finish reason and with
        the delta `delta`; None unless that delta is one text written without escapes, found in
        `piece` at exactly one place."""
        if len(delta) != 1:
            return None
        ((name, value),) = delta.items()
        key = _KEYS.get(name)
        if key is None or type(value) is not str:
            return None
        at = piece.find(key)
        if at < 1 or piece[at - 1] not in b",{" or piece.find(key, at + 1) >= 0:
            return None
        start = at + len(key)
        end = piece.find(b'"', start)
        text = piece[start:end]
        if end < 0 or not _UNESCAPED.fullmatch(text) or text.decode() != value:
            return None
        # That the text found is the one a parser reads as the delta's (not a duplicate key's, not
        # another object's that looks the same): another text put there must come out as the delta's.
        head, tail = piece[:start], piece[end:]
        try:
            other = orjson.loads(head + text + b"." + tail)["choices"][0]["delta"][name]
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return None
        return cls(head, tail) if other == value + "." else None

    def text(self, piece: bytes) -> int | None:
        """The characters of text in `piece` when it has this shape, and so needs no change, as the
        chunk this shape was taken from needed none; None when it may not have it."""
        return _text(piece, self.head, self.tail)

    def run(self, pieces: list[bytes], start: int) -> tuple[int, int, int]:
        """The pieces from `start` on that have this shape, as `text` would find them: the index
        after the last, their bytes as events (`data: ` and blank line included), their characters
        of text. Reads no piece past the first that does not match, so a read is walked once
        however its runs are cut."""
        head, tail, escaped = self.head, self.tail, self._escaped
        least = len(head) + len(tail)
        end, count = start, len(pieces)
        while end < count:
            piece = pieces[end]
            # `_framed`, written out: a call per piece costs a tenth of a stream's decoding.
            if len(piece) < least or not piece.startswith(head) or not piece.endswith(tail):
                break
            # Its text is written without escapes when the bytes around it hold all its quotes,
            # backslashes and control bytes.
            if len(piece) - len(piece.translate(None, _ESCAPED)) != escaped:
                break
            end += 1
        if end == start:
            return start, 0, 0
        joined = b"".join(pieces[start:end])
        kept = end - start
        size = len(joined) + kept * 8
        if joined.isascii():
            return end, size, len(joined) - kept * least
        try:  # the bytes either side of each text are quotes: a sequence cut there does not decode
            return end, size, len(joined.decode()) - kept * self._chars
        except UnicodeDecodeError:
            pass
        # A text among them that is not UTF-8 (the stream fails on it): where the run ends.
        size = chars = 0
        for at in range(start, end):
            text = self.text(pieces[at])
            if text is None:
                return at, size, chars
            size, chars = size + len(pieces[at]) + 8, chars + text
        return end, size, chars

    def frames(self, piece: bytes) -> bool:
        """Whether `piece` has this shape's bytes around its text, whatever its text."""
        return _framed(piece, self.head, self.tail)

    def event_text(self, event: bytes) -> int | None:
        """`text` for a whole one-line `data:` event, blank line included. A read holding more than
        one event never matches: what lies between two events (a quote, line ends) is no text."""
        return _text(event, self.event_head, self.event_tail)


def _framed(piece: bytes, head: bytes, tail: bytes) -> bool:
    # Long enough for both, so that they cannot overlap (the quotes around the text are two).
    return len(piece) >= len(head) + len(tail) and piece.startswith(head) and piece.endswith(tail)


def _text(piece: bytes, head: bytes, tail: bytes) -> int | None:
    if not _framed(piece, head, tail):
        return None
    text = piece[len(head) : len(piece) - len(tail)]
    if not _UNESCAPED.fullmatch(text):
        return None
    if text.isascii():
        return len(text)
    try:
        return len(text.decode())
    except UnicodeDecodeError:
        return None
