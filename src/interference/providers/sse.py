"""An incremental decoder for server-sent events, as upstream OpenAI-compatible servers send them.

It follows the WHATWG event-stream rules that matter for completions: lines end in LF, CRLF or a
lone CR (a trailing CR is held until the next chunk shows whether LF follows), ``:`` starts a
comment, ``data`` lines of one event are joined with LF, a blank line ends the event, other fields
(``event``, ``id``, ``retry``) are ignored. ``[DONE]`` is returned like any other payload.

    decoder = SSEDecoder()
    for chunk in chunks:
        for data in decoder.decode(chunk):
            ...
    leftover = decoder.flush()
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]

_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Turns byte chunks, split anywhere, into the ``data`` payloads of complete events."""

    __slots__ = ("_data", "_pending", "_started")

    def __init__(self) -> None:
        self._pending = b""  # an incomplete line (or one ending in CR that may yet become CRLF)
        self._data: list[str] = []  # data lines of the event being read
        self._started = False

    def decode(self, chunk: bytes) -> list[str]:
        """The payloads of the events that ``chunk`` completes."""
        buffer = self._pending + chunk if self._pending else chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer
                return []
            self._started = True
            buffer = buffer.removeprefix(_BOM)
        lines = buffer.splitlines(keepends=True)  # bytes split on LF, CRLF and CR only
        if lines and not lines[-1].endswith(b"\n"):
            self._pending = lines.pop()
        else:
            self._pending = b""
        return self._events(lines)

    def flush(self) -> list[str]:
        """Whatever the stream's end completes (servers often omit the final blank line)."""
        pending, self._pending = self._pending, b""
        return self._events([pending, b""] if pending else [b""])

    def _events(self, lines: list[bytes]) -> list[str]:
        """The payloads of the events that ``lines`` complete; their data lines are kept meanwhile.

        Comments (``:``) and fields other than ``data`` are skipped; one optional space after the
        colon is dropped; a bare ``data`` line is an empty one. The rules are inline in one loop: a
        call a line was a third of the decoder's time.
        """
        events: list[str] = []
        data = self._data
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    events.append("\n".join(data))
                    data = []
            elif line.startswith(b"data"):
                value = line[4:]
                if value.startswith(b": "):
                    data.append(value[2:].decode("utf-8", "replace"))
                elif value.startswith(b":"):
                    data.append(value[1:].decode("utf-8", "replace"))
                elif not value:
                    data.append("")
                # else another field whose name starts with "data" (``datafoo``): ignored
        self._data = data
        return events
