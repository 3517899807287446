"""Starting and stopping one webhook sender process."""

from __future__ import annotations

import asyncio
import logging

from agentstream.bus import close, connect, ensure_topology
from agentstream.logs import report_ready
from agentstream.probe import serve_probe
from agentstream.settings import Settings
from schemas import subjects as S
from schemas.permissions import Role
from webhook_sender.sender import WebhookSender

log = logging.getLogger(__name__)

NEEDS = (S.WEBHOOK_JOBS_STREAM, f"KV_{S.WEBHOOK_DELIVERIES_BUCKET}", f"KV_{S.WEBHOOK_SECRETS_BUCKET}")
"""The streams a webhook sender works with (the only ones its identity may look at)."""


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then stop gracefully (SHUTDOWN_GRACE). Prints
    ``webhook-sender health: <url>`` (agentstream.probe, on METRICS_BIND: ``/healthz`` and ``/metrics``) and
    ``webhook-sender ready: <id>`` once pulling."""
    name = settings.runner_name
    nc = await connect(settings, f"webhook-sender {name}", role=Role.WEBHOOK_SENDER)
    probe_stop = asyncio.Event()
    probe = asyncio.create_task(serve_probe("webhook-sender", settings.metrics_bind, lambda: nc.is_connected,
                                            probe_stop))
    await ensure_topology(nc, settings, names=NEEDS)
    sender = WebhookSender(settings, nc, name=name)
    await sender.start()
    report_ready(f"webhook-sender ready: {name}")
    await stop.wait()
    await sender.stop(settings.shutdown_grace)
    await close(nc)
    probe_stop.set()
    await probe
