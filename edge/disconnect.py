"""End a response whose client has gone, even if the cancellation that should have ended it was lost.

When a client disconnects, Hypercorn sends the app ``http.disconnect`` and then drops whatever the
app still sends (Hypercorn ``HTTPStream.app_send``: "allow app to finish after close"); Quart
cancels the request's task on that message. On Python 3.11 that cancellation can be lost: a
cancellation arriving just as an ``asyncio.wait_for`` (nats-py uses it for every request) or
``asyncio.timeout`` completes is swallowed (CPython gh-86296, fixed in 3.12). The task then goes
on, and an SSE stream would write its heartbeats into the void for ever, holding a feed and its
place among the key's open streams.

This ASGI middleware remembers that the client left and refuses the response's next body write
by raising ``CancelledError`` from ``send``: the stream ends at its next event or heartbeat at the
latest (``SSE_HEARTBEAT``), as a cancelled task, which Quart expects.
"""

from __future__ import annotations

import asyncio

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)


class EndOnDisconnect:
    """ASGI middleware (see the module docstring). ``app``: the wrapped ASGI app."""

    def __init__(self, app: ASGIFramework):
        self.app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gone = False

        async def receiving() -> ASGIReceiveEvent:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        async def sending(message: ASGISendEvent) -> None:
            if gone and message["type"] == "http.response.body":
                raise asyncio.CancelledError("the client disconnected")
            await send(message)

        return await self.app(scope, receiving, sending)
