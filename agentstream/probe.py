"""A small HTTP server beside a process's work: agent runners and tool runners have no HTTP API of
their own, and the edge keeps these off the API's port, which every tenant reaches:

- ``GET /healthz`` answers 200 ``{"status": "ok"}`` while the process can work, 503
  ``{"status": "unhealthy", "problems": {...}}`` with the reasons otherwise (agentstream.health);
- ``GET /metrics`` answers the process's Prometheus metrics (agentstream.metrics), after the
  component's samplers (e.g. the agent runner's consumer state) have read what is sampled at
  scrape time.

It listens on ``METRICS_BIND`` (default ``127.0.0.1:0``: a free loopback port, printed at start-up
as ``<component> health: <url>/healthz``; ``/metrics`` is next to it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from quart import Quart, Response

from agentstream import metrics
from agentstream.health import HEALTH
from agentstream.httpserve import listen, serve_app, url_of
from agentstream.logs import announce

log = logging.getLogger(__name__)

Sampler = Callable[[], Awaitable[None]]
"""Reads a value sampled at scrape time into its gauge; errors are logged, not served."""

SAMPLE_TIMEOUT = 5.0
"""Seconds a scrape waits for the samplers before answering with what it has."""


def create_probe(name: str, connected: Callable[[], bool], samplers: Sequence[Sampler] = (),
                 details: Callable[[], dict[str, Any]] | None = None) -> Quart:
    """The probe app of component ``name``; ``connected()`` says whether its NATS connection is up;
    ``samplers`` run before each ``/metrics`` answer (the list may grow after the app is made);
    ``details()``, if given, adds fields to ``/healthz`` (an agent runner's runs and slots)."""
    app = Quart(f"agentstream.probe.{name}")

    @app.get("/healthz")
    async def healthz() -> Response:
        problems = HEALTH.as_dict()
        if not connected():
            problems["nats"] = {"reason": "not connected to NATS", "since": None}
        body = {"status": "unhealthy" if problems else "ok", "component": name, "problems": problems,
                **(details() if details is not None else {})}
        return Response(orjson.dumps(body), status=503 if problems else 200, content_type="application/json")

    @app.get("/metrics")
    async def metrics_page() -> Response:
        if samplers:
            try:
                async with asyncio.timeout(SAMPLE_TIMEOUT):
                    await asyncio.gather(*(sample() for sample in samplers))
            except Exception as err:  # the rest of the page is still worth serving
                log.warning("metrics sampling failed: %s: %s", type(err).__name__, err)
        return Response(metrics.render(), content_type=metrics.CONTENT_TYPE)

    return app


async def serve_probe(name: str, bind: str, connected: Callable[[], bool], stop: asyncio.Event,
                      samplers: Sequence[Sampler] = (), details: Callable[[], dict[str, Any]] | None = None) -> None:
    """Serve the probe on ``bind`` until ``stop``; prints ``<name> health: <url>/healthz``
    (``samplers``, ``details``: see :func:`create_probe`).

    Raises OSError (naming the address) when ``bind`` cannot be bound.
    """
    try:
        sock = listen(bind)
    except OSError as err:
        raise OSError(f"cannot listen on METRICS_BIND={bind}: {err.strerror or err}") from None
    announce(f"{name} health: {url_of(sock)}/healthz")
    await serve_app(create_probe(name, connected, samplers, details), sock, stop, graceful_timeout=1.0)
