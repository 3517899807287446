"""Running one component as a process: logging (agentstream.logs), tracing (agentstream.tracing),
the event loop (uvloop when available) and SIGTERM/SIGINT turned into a stop event, so every
component starts and shuts down the same graceful way."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from agentstream import logs, tracing
from agentstream.settings import Settings


def setup_logging(settings: Settings) -> None:
    """Log to stderr at ``LOG_LEVEL`` in ``LOG_FORMAT``; quiet the chattiest libraries."""
    logs.configure(settings.log_level, settings.log_format)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit: an edge holds one per SSE client."""
    try:
        import resource  # POSIX only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ImportError, ValueError, OSError):
        pass


def run(main: Callable[[asyncio.Event], Awaitable[int | None]], settings: Settings, *, component: str | None) -> int:
    """Run ``main(stop)`` until it returns; SIGTERM or SIGINT sets ``stop``. Returns the exit code:
    what ``main`` returned, or 0 for None. ``component`` (``edge``, ``agent-runner``, …) names the
    process in its traces (``service.name`` ``agentstream-{component}``); None: no tracing (the
    supervisor, which does no work of its own)."""
    setup_logging(settings)
    raise_open_files_limit()
    if component is not None:
        tracing.setup(f"agentstream-{component}", settings.otel_exporter_otlp_endpoint, instance=settings.runner_name)
    code: int | None = None

    async def wrapper() -> None:
        nonlocal code
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        code = await main(stop)

    try:
        try:
            import uvloop  # optional speed-up
        except ImportError:
            asyncio.run(wrapper())
        else:
            uvloop.run(wrapper())
    finally:
        tracing.shutdown()  # export what is still buffered
    return code or 0
