"""Stopping background work at shutdown: one loop task, then the tasks it started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def stop_loop(loop: asyncio.Task[Any] | None) -> None:
    """Cancel a component's main loop task and wait until it has ended (None: nothing to do)."""
    if loop is None:
        return
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def finish_within(tasks: Iterable[asyncio.Task[Any]], grace: float, *, after_cancel: float) -> None:
    """Let ``tasks`` finish for ``grace`` seconds, cancel those still running and give them
    ``after_cancel`` more seconds to unwind."""
    running = set(tasks)
    if not running:
        return
    _, pending = await asyncio.wait(running, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=after_cancel)
