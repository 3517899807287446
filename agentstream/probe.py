"""A small HTTP server for processes that have no HTTP API of their own (agent runners, tool
runners): ``GET /healthz`` answers 200 ``{"status": "ok"}`` while the process can work, 503
``{"status": "unhealthy", "problems": {...}}`` with the reasons otherwise (agentstream.health).

It listens on ``METRICS_BIND`` (default ``127.0.0.1:0``: a free loopback port, printed at start-up
as ``<component> health: <url>/healthz``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from quart import Quart, Response

from agentstream.health import HEALTH
from agentstream.httpserve import listen, serve_app, url_of

log = logging.getLogger(__name__)


def create_probe(name: str, connected: Callable[[], bool], details: Callable[[], dict[str, Any]] | None = None,
                 ) -> Quart:
    """The probe app of component ``name``; ``connected()`` says whether its NATS connection is up;
    ``details()``, if given, adds fields to the answer (an agent runner's runs and slots)."""
    app = Quart(f"agentstream.probe.{name}")

    @app.get("/healthz")
    async def healthz() -> Response:
        problems = HEALTH.as_dict()
        if not connected():
            problems["nats"] = {"reason": "not connected to NATS", "since": None}
        body = {"status": "unhealthy" if problems else "ok", "component": name, "problems": problems,
                **(details() if details is not None else {})}
        return Response(orjson.dumps(body), status=503 if problems else 200, content_type="application/json")

    return app


async def serve_probe(name: str, bind: str, connected: Callable[[], bool], stop: asyncio.Event,
                      details: Callable[[], dict[str, Any]] | None = None) -> None:
    """Serve the probe on ``bind`` until ``stop``; prints ``<name> health: <url>/healthz``
    (``details``: see :func:`create_probe`).

    Raises OSError (naming the address) when ``bind`` cannot be bound.
    """
    try:
        sock = listen(bind)
    except OSError as err:
        raise OSError(f"cannot listen on METRICS_BIND={bind}: {err.strerror or err}") from None
    print(f"{name} health: {url_of(sock)}/healthz", flush=True)
    await serve_app(create_probe(name, connected, details), sock, stop, graceful_timeout=1.0)
