"""Starting and stopping one edge process."""

from __future__ import annotations

import asyncio
import logging

from agentstream.httpserve import listen, serve_app
from agentstream.logs import announce
from agentstream.settings import Settings
from edge.app import create_app

log = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the edge on EDGE_BIND until ``stop``; prints ``edge ready: <url>`` once listening.

    Raises OSError if EDGE_BIND cannot be bound (the message names the address).
    """
    app = create_app(settings)
    try:
        sock = listen(settings.edge_bind)
    except OSError as err:
        raise OSError(f"cannot listen on EDGE_BIND={settings.edge_bind}: {err.strerror or err}") from None

    def ready(url: str) -> None:
        announce(f"edge ready: {url}")

    await serve_app(app, sock, stop, on_ready=ready, graceful_timeout=min(settings.shutdown_grace, 10.0),
                    on_stop=app.extensions["agentstream"].begin_shutdown)
