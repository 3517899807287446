"""Running one component as a process: logging, the event loop (uvloop when available) and
SIGTERM/SIGINT turned into a stop event, so every component shuts down the same graceful way."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from agentstream.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(settings: Settings) -> None:
    """Log to stderr at ``LOG_LEVEL``; quiet the chattiest libraries."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    for noisy in ("httpx", "httpcore", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit: an edge holds one per SSE client."""
    try:
        import resource  # POSIX only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    except (ImportError, ValueError, OSError):
        pass


def run(main: Callable[[asyncio.Event], Awaitable[int | None]], settings: Settings) -> int:
    """Run ``main(stop)`` until it returns; SIGTERM or SIGINT sets ``stop``. Returns the exit code:
    what ``main`` returned, or 0 for None."""
    setup_logging(settings)
    raise_open_files_limit()
    code: int | None = None

    async def wrapper() -> None:
        nonlocal code
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        code = await main(stop)

    try:
        import uvloop  # optional speed-up

        uvloop.run(wrapper())
    except ImportError:
        asyncio.run(wrapper())
    return code or 0
