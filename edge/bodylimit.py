"""Answer a request only once its body has arrived, so every answer can be read and the
connection stays usable.

Hypercorn (0.17, 0.18) closes a keep-alive HTTP/1.1 connection whose request body it has not
fully received when the response ends, without sending ``Connection: close``. Two things go wrong:

- The edge refuses some requests before reading their body (an unknown agent, a bad key): if the
  body is still on its way (httpx writes headers and body separately; a busy client is slow),
  the connection is closed after the answer, and the client's next request on it fails with
  "server disconnected without sending a response".
- Quart refuses a body over ``MAX_CONTENT_LENGTH`` (413) while the client is still sending it.
  Hypercorn's close with unread bytes in the kernel's receive buffer makes the kernel send a TCP
  reset, which can destroy the 413 before the client reads it (it sees "connection reset").
  RFC 9112 §9.6 asks a server that closes early to keep reading for a while.

This ASGI middleware holds every response's start until the request body has been received (in
full, or the client left), waiting at most :data:`DRAIN_SECONDS`; and it reads an over-limit body
to its end (discarding it, up to :data:`DRAIN_BYTES`) before the app sees the request. A body
larger than that, or slower, is still refused by closing.
"""

from __future__ import annotations

import asyncio

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPRequestEvent,
    HTTPScope,
    Scope,
)

DRAIN_BYTES = 16 * 1024 * 1024
"""Most bytes of an over-limit body read and discarded before answering 413."""
DRAIN_SECONDS = 10.0
"""Longest time a response waits for its request's body, and an over-limit body is read (seconds)."""

_END: HTTPRequestEvent = {"type": "http.request", "body": b"", "more_body": False}


class WholeBodyFirst:
    """ASGI middleware around an app whose bodies are limited to ``max_body`` bytes.

    ``app``: the ASGI app (``quart_app.asgi_app``). It must consume ``receive`` itself (Quart
    does, in a task of its own, whether or not the handler reads the body) and refuse bodies over
    ``max_body`` (Quart's ``MAX_CONTENT_LENGTH``); this class only makes its answers readable.
    ``drain_bytes`` (bytes) and ``drain_seconds`` (seconds) bound the waiting and the reading.
    """

    def __init__(
        self, app: ASGIFramework, max_body: int, *, drain_bytes: int = DRAIN_BYTES, drain_seconds: float = DRAIN_SECONDS
    ):
        self.app = app
        self.max_body = max_body
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            if declared <= self.drain_bytes:
                last = await self._drain(receive)
                if last is not None:
                    receive = _replay(last, receive)
            return await self.app(scope, receive, send)
        received = asyncio.Event()  # the body has ended, or the client left
        return await self.app(scope, self._tracking(receive, received), self._after_body(send, received))

    def _tracking(self, receive: ASGIReceiveCallable, received: asyncio.Event) -> ASGIReceiveCallable:
        """``receive`` that sets ``received`` at the body's end, and, once a body without a
        (truthful) length passes ``max_body``, reads the rest before handing the app the message
        that passed the limit."""
        seen = 0
        pending: list[ASGIReceiveEvent] = []  # a disconnect met while draining, for the app's next call

        async def tracked() -> ASGIReceiveEvent:
            nonlocal seen
            if pending:
                return pending.pop()
            message = await receive()
            if message["type"] != "http.request":
                received.set()
                return message
            seen += len(message.get("body", b""))
            if seen > self.max_body and message.get("more_body"):
                last = await self._drain(receive)
                if last is not None and last["type"] == "http.request":
                    message = {**message, "more_body": False}
                elif last is not None:
                    pending.append(last)
            if not message.get("more_body"):
                received.set()
            return message

        return tracked

    def _after_body(self, send: ASGISendCallable, received: asyncio.Event) -> ASGISendCallable:
        """``send`` that holds the response's start until ``received`` (at most ``drain_seconds``)."""

        async def sending(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and not received.is_set():
                try:
                    async with asyncio.timeout(self.drain_seconds):
                        await received.wait()
                except TimeoutError:
                    pass  # a client that stalls mid-body gets its answer, and the connection closes
            await send(message)

        return sending

    async def _drain(self, receive: ASGIReceiveCallable) -> ASGIReceiveEvent | None:
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


def _content_length(scope: HTTPScope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(first: ASGIReceiveEvent, receive: ASGIReceiveCallable) -> ASGIReceiveCallable:
    """``receive`` that returns ``first`` once, then defers to ``receive``."""
    pending = [first]

    async def replayed() -> ASGIReceiveEvent:
        return pending.pop() if pending else await receive()

    return replayed
