"""Answering an over-limit request body with a 413 the client can actually read.

Quart answers 413 as soon as it knows a body is too large (from ``Content-Length``, or once the
bytes received pass ``MAX_CONTENT_LENGTH``), while the client is still sending. Hypercorn then
closes the connection with the rest of the body unread in the kernel's receive buffer; the kernel
answers that with a TCP reset, which can destroy the 413 before the client has read it (the client
sees "connection reset" instead of the JSON error). RFC 9112 §9.6 asks a server closing early to
keep reading for a while; Hypercorn does not, so this ASGI middleware does it: it reads the rest of
an over-limit body (discarding it, up to :data:`DRAIN_BYTES` within :data:`DRAIN_SECONDS`) before
the app sees the request, so the 413 goes out after the whole request has arrived and the
connection even stays reusable. A body larger than that is still refused, by closing.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]

DRAIN_BYTES = 16 * 1024 * 1024
"""Most bytes of an over-limit body read and discarded before answering 413."""
DRAIN_SECONDS = 10.0
"""Longest time spent reading an over-limit body before answering 413 (seconds)."""

_END = {"type": "http.request", "body": b"", "more_body": False}


class DrainOversizedBody:
    """ASGI middleware around an app whose bodies are limited to ``max_body`` bytes.

    ``app``: the ASGI app (``quart_app.asgi_app``), which must itself refuse bodies over
    ``max_body`` (Quart's ``MAX_CONTENT_LENGTH``); this class only makes the refusal readable.
    ``drain_bytes`` (bytes) and ``drain_seconds`` (seconds) bound the reading.
    """

    def __init__(self, app, max_body: int, *, drain_bytes: int = DRAIN_BYTES, drain_seconds: float = DRAIN_SECONDS):
        self.app = app
        self.max_body = max_body
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: dict, receive: Receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            if declared <= self.drain_bytes:
                last = await self._drain(receive)
                if last is not None:
                    receive = _replay(last, receive)
            return await self.app(scope, receive, send)
        return await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        """``receive`` that, once a body without a (truthful) length passes ``max_body``, reads
        the rest before handing the app the message that passed the limit."""
        seen = 0
        pending: list[Message] = []  # a disconnect met while draining, for the app's next call

        async def counted() -> Message:
            nonlocal seen
            if pending:
                return pending.pop()
            message = await receive()
            if message["type"] != "http.request":
                return message
            seen += len(message.get("body", b""))
            if seen > self.max_body and message.get("more_body"):
                last = await self._drain(receive)
                if last is not None and last["type"] == "http.request":
                    return {**message, "more_body": False}
                if last is not None:
                    pending.append(last)
            return message

        return counted

    async def _drain(self, receive: Receive) -> Message | None:
        """Read and discard request messages until the body ends (returns the end message, or
        ``http.disconnect`` if the client left); None when the bounds ran out first."""
        read = 0
        try:
            async with asyncio.timeout(self.drain_seconds):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return message
                    read += len(message.get("body", b""))
                    if not message.get("more_body"):
                        return _END
                    if read > self.drain_bytes:
                        return None
        except TimeoutError:
            return None


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that returns ``first`` once, then defers to ``receive``."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
