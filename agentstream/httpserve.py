"""Serving a Quart app with Hypercorn inside the caller's event loop.

The listening socket is created here, so a bind of port 0 (or a taken port, when a fallback is
allowed) gets a free port whose number is known before Hypercorn starts; Hypercorn receives the
socket as ``fd://``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.typing import Framework

log = logging.getLogger(__name__)

BACKLOG = 2048
"""Pending connections the kernel queues before the server accepts them (capped by the OS's
``somaxconn``). Hypercorn's own default of 100 drops connection bursts: thousands of SSE clients
reconnecting at once after an edge restart would wait for SYN retransmits."""


def split_bind(bind: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ``[::1]:80`` for IPv6. Raises ValueError."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, not {bind!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen(bind: str, *, fallback_to_free_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``bind``; if the port is taken and ``fallback_to_free_port``,
    on a free port of the same host instead. Raises OSError otherwise."""
    host, port = split_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        if not fallback_to_free_port or port == 0:
            sock.close()
            raise
        log.warning("%s:%d is taken; using a free port", host, port)
        sock.bind((host, 0))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_app(
    app: Framework,
    sock: socket.socket,
    stop: asyncio.Event,
    *,
    graceful_timeout: float = 5.0,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then shut down gracefully.

    ``on_stop`` runs as soon as ``stop`` is set, before Hypercorn waits for open requests.
    """
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # our handlers, not a second stderr one
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = 75.0
    config.backlog = BACKLOG  # Hypercorn calls listen() again with this
    config.h11_max_incomplete_size = 64 * 1024
    if on_ready is not None:
        result = on_ready(url_of(sock))
        if asyncio.iscoroutine(result):
            await result
    async def trigger() -> None:
        await stop.wait()
        if on_stop is not None:
            on_stop()

    await serve(app, config, shutdown_trigger=trigger)
