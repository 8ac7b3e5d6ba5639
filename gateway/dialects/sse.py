"""Incremental Server-Sent Events parsing (WHATWG rules), fed arbitrary byte pieces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: bytes


class SSEParser:
    """Splits a byte stream into events. Handles CRLF, CR and LF line ends split anywhere."""

    __slots__ = ("_buffer", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr:
            # A CR ended the last piece; if this piece opens with LF they were one CRLF line end.
            chunk = chunk[1:] if chunk.startswith(b"\n") else chunk
            self._pending_cr = False
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 1 :]
        events: list[SSEEvent] = []
        for line in buffer[:end].split(b"\n"):
            self._line(line, events)
        return events

    @property
    def idle(self) -> bool:
        """Nothing is held: the next piece starts an event."""
        return not self._buffer and not self._data and self._event is None and not self._pending_cr

    def data_only(self, chunk: bytes) -> tuple[list[bytes], bytes] | None:
        """When the events `chunk` completes are nothing but one-line `data: ` events (how
        OpenAI-compatible upstreams write): the data of each and the bytes of them all, found with a
        split instead of a walk line by line; the rest is held for the next piece, as `feed` holds
        it. None (nothing consumed) for anything else: `feed` it."""
        if self._data or self._event is not None or self._pending_cr or b"\r" in chunk:
            return None
        buffer = self._buffer + chunk if self._buffer else chunk
        if buffer[:6] != b"data: ":
            return None
        end = buffer.rfind(b"\n\n") + 2
        if end < 2:
            # No event ends here: `feed` holds only the last partial line, where holding it all here
            # would copy and search a growing buffer on every read of a long event.
            return None
        pieces = buffer[6 : end - 2].split(b"\n\ndata: ")
        # Any other line (a second data line, a field, a comment) shows as a line end in a piece.
        if b"\n" in b"".join(pieces):
            return None
        self._buffer = buffer[end:]
        return pieces, buffer[:end]

    def finish(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line is discarded, as the spec says."""
        self._buffer = b""
        self._data = []
        self._event = None
        return []

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(self._event, b"\n".join(self._data)))
            self._data = []
            self._event = None
            return
        if line[0] == 58:  # ":" comment, e.g. keep-alive pings
            return
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # `id:` and `retry:` carry nothing the gateway uses.
