"""Starting and stopping one edge process."""

from __future__ import annotations

import asyncio
import logging
import os

from agentstream import llmsse_env
from agentstream.httpserve import listen, serve_app
from agentstream.logs import report_ready
from agentstream.probe import serve_probe
from agentstream.settings import Settings
from edge.app import create_app

log = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the edge on EDGE_BIND until ``stop``; prints ``edge ready: <url>`` once listening,
    ``edge connected: <url>`` once connected to NATS (``/healthz`` says 200 from then on; both
    lines go to the ready pipe, agentstream.logs.report_ready), and ``edge health: <url>`` for its
    probe server on METRICS_BIND (agentstream.probe: ``/healthz`` and ``/metrics``, kept off
    EDGE_BIND, which tenants reach: edge.metrics).

    Raises OSError if EDGE_BIND or METRICS_BIND cannot be bound (the message names the address).
    """
    for message in llmsse_env.warnings(os.environ, settings, llmsse_env.EDGE_VARIABLES):
        log.warning("%s", message)
    app = create_app(settings)
    try:
        sock = listen(settings.edge_bind)
    except OSError as err:
        raise OSError(f"cannot listen on EDGE_BIND={settings.edge_bind}: {err.strerror or err}") from None

    state = app.extensions["agentstream"]
    probe_stop = asyncio.Event()
    probe = asyncio.create_task(serve_probe("edge", settings.metrics_bind, lambda: state.healthy, probe_stop))

    waiting: list[asyncio.Task[None]] = []

    async def connected(url: str) -> None:
        await state.ready.wait()
        report_ready(f"edge connected: {url}")

    def ready(url: str) -> None:
        report_ready(f"edge ready: {url}", more=True)  # serving; NATS may come later (503 until then)
        waiting.append(asyncio.create_task(connected(url)))

    try:
        await serve_app(app, sock, stop, on_ready=ready, graceful_timeout=min(settings.shutdown_grace, 10.0),
                        on_stop=state.begin_shutdown)
    finally:
        for task in waiting:
            task.cancel()
        probe_stop.set()
        await probe
