"""Server-Sent Events framing: the one place agentstream writes SSE bytes.

WHATWG HTML §9.2.5-9.2.6: an event is ``field: value`` lines ended by a blank line; a line starting
with ``:`` is a comment (used for heartbeats, §9.2.7); ``data`` holding a newline is sent as
several ``data:`` lines (LF, CR and CRLF all end a line, so none may appear inside one). Lines end
with LF, ``data: `` carries exactly one space, there is never a BOM (docs/streaming.md, "SSE framing").
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

DONE = b"data: [DONE]\n\n"
"""The OpenAI stream terminator (docs/streaming.md, "Termination")."""

PING = b": ping\n\n"
"""A heartbeat comment; every SSE parser ignores it (docs/streaming.md, "Keep-alives")."""

CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = {
    "Content-Type": CONTENT_TYPE,
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
"""Response headers for every SSE response: no caching, no proxy buffering (docs/streaming.md, "HTTP response")."""


def frame(data: str | bytes, *, event: str | None = None, id: int | str | None = None) -> bytes:
    """One complete event: optional ``id:`` and ``event:`` lines, ``data:`` line(s), blank line.

    ``data`` may be ``str`` or UTF-8 ``bytes`` (compact JSON, normally a single line).
    ``event`` and ``id`` must not contain line breaks (ValueError).
    """
    out = bytearray()
    if id is not None:
        sid = str(id)
        if _LINE_BREAK.search(sid) or "\x00" in sid:
            raise ValueError("SSE id must not contain line breaks or NUL")
        out += b"id: " + sid.encode() + b"\n"
    if event is not None:
        if _LINE_BREAK.search(event):
            raise ValueError("SSE event name must not contain line breaks")
        out += b"event: " + event.encode() + b"\n"
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if b"\n" in raw or b"\r" in raw:
        for line in _LINE_BREAK.split(raw.decode("utf-8")):
            out += b"data: " + line.encode("utf-8") + b"\n"
    else:
        out += b"data: " + raw + b"\n"
    out += b"\n"
    return bytes(out)


def comment(text: str = "") -> bytes:
    """A comment line (``: text``), for heartbeats; ``text`` must be a single line."""
    if _LINE_BREAK.search(text):
        raise ValueError("SSE comment must be a single line")
    return b": " + text.encode("utf-8") + b"\n\n" if text else b":\n\n"
