"""How many runs this agent runner takes on: as many as its memory and CPU allow.

A run spends its life waiting on the model, which costs a coroutine, not a thread: a fixed cap
(once 16) left the model idle while runs queued behind each other. Instead the runner admits
runs while

- fewer than ``max_runs`` are held (AGENT_RUNNER_CONCURRENCY; 0: :data:`AUTO_MAX_RUNS`),
- its resident memory is under ``memory_budget`` bytes (AGENT_RUNNER_MEMORY_BUDGET; 0: half of the
  memory available when it started), and
- its event loop keeps up: a timer asked for every :data:`TICK` seconds fires less than
  ``max_lag`` seconds late (AGENT_RUNNER_MAX_LOOP_LAG), a direct measure of CPU saturation.

When memory or CPU is over budget the capacity is held at the runs already admitted (nothing is
taken from a run that has its slot) until they finish or the pressure eases; per-tenant caps are
enforced by the server (each tenant consumer's ``max_ack_pending``: agent_runner/intake.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from agent_runner.intake import Slots

log = logging.getLogger(__name__)

AUTO_MAX_RUNS = 10_000
"""The most runs one runner holds when AGENT_RUNNER_CONCURRENCY is 0 (memory and CPU decide below it)."""
TICK = 0.1
"""Seconds between the monitor's measurements."""


def rss_bytes() -> int | None:
    """This process's resident memory (bytes), from /proc (None where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def available_bytes() -> int | None:
    """Memory available to new work on this machine (bytes, /proc/meminfo MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class Admission:
    """Keeps ``slots.capacity`` at what memory and CPU allow. ``start()``, then ``stop()``."""

    def __init__(self, slots: Slots, *, max_runs: int, memory_budget: int, max_lag: float):
        self.slots = slots
        self.max_runs = max_runs or AUTO_MAX_RUNS
        if memory_budget <= 0:
            available = available_bytes()
            memory_budget = (available // 2 + (rss_bytes() or 0)) if available else 0
        self.memory_budget = memory_budget
        self.max_lag = max_lag
        self.lag = 0.0
        self.rss = rss_bytes() or 0
        self.pressure: str | None = None
        slots.capacity = self.max_runs
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring."""
        self._task = asyncio.create_task(self._monitor())

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def judge(self, rss: int | None, lag: float) -> str | None:
        """Why no more runs may be admitted now (None: they may)."""
        if self.memory_budget and rss is not None and rss > self.memory_budget:
            return f"memory: {rss // 2**20} MiB resident, budget {self.memory_budget // 2**20} MiB"
        if lag > self.max_lag:
            return f"CPU: the event loop runs {lag * 1000:.0f} ms late (at most {self.max_lag * 1000:.0f} ms)"
        return None

    async def _monitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.lag = max(0.0, loop.time() - expected)
            self.rss = rss_bytes() or self.rss
            pressure = self.judge(self.rss, self.lag)
            if pressure != self.pressure:
                if pressure:
                    log.warning("taking no more runs for now (%s); %d held", pressure, self.slots.used)
                else:
                    log.info("taking runs again (up to %d)", self.max_runs)
                self.pressure = pressure
            self.slots.set_capacity(min(self.max_runs, self.slots.used) if pressure else self.max_runs)
