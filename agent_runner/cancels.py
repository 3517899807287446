"""Which runs were asked to stop, and the runs this runner is executing now: the cancel registry.

A cancel arrives on ``control.{tenant}.{run_id}`` (stream RUN_CONTROL) at any time: before the run
reaches this runner, while it waits for a slot or for approvals, or while it runs. The registry
remembers the last :data:`CANCELLED_MEMORY` cancels (a run that arrives later is ended at once),
and cancels the task of a run it is executing, keeping the reason so the run ends
``run.cancelled`` with it (not as a crash).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

RunKey = tuple[str, str]
"""``(tenant, run_id)``."""

CANCELLED_MEMORY = 200_000
"""Cancels remembered (oldest forgotten first): about 20 MB at most."""


class CancelRegistry:
    """The cancels this runner has seen and the run tasks it is executing."""

    def __init__(self, memory: int = CANCELLED_MEMORY):
        self.memory = memory
        self._requested: OrderedDict[RunKey, str] = OrderedDict()
        self._running: dict[RunKey, asyncio.Task[Any]] = {}
        self._cancelling: dict[RunKey, str] = {}

    def __contains__(self, key: RunKey) -> bool:
        """Whether the run was asked to stop."""
        return key in self._requested

    def reason(self, key: RunKey) -> str | None:
        """Why the run was asked to stop, or None."""
        return self._requested.get(key)

    def request(self, key: RunKey, reason: str) -> None:
        """A cancel arrived: remember it, and cancel the run's task if this runner executes it."""
        self._requested[key] = reason
        while len(self._requested) > self.memory:
            self._requested.popitem(last=False)
        task = self._running.get(key)
        if task is not None and not task.done():
            self._cancelling[key] = reason
            task.cancel()

    def remember(self, key: RunKey, reason: str) -> None:
        """A cancel learnt another way (stored with the run's approvals): kept unless one is known."""
        self._requested.setdefault(key, reason)

    def running(self, key: RunKey, task: asyncio.Task[Any]) -> None:
        """The run's task starts here; cancelled at once if the run was already asked to stop."""
        self._running[key] = task
        stored = self._requested.get(key)
        if stored is not None:
            self._cancelling[key] = stored
            task.cancel()

    def cancelled_by_request(self, key: RunKey, task: asyncio.Task[Any]) -> str | None:
        """The reason, when ``task`` ended cancelled because the run was asked to stop (not because
        this runner is stopping); else None."""
        return self._cancelling.get(key) if task.cancelled() else None

    def finished(self, key: RunKey) -> None:
        """The run's task is over."""
        self._running.pop(key, None)
        self._cancelling.pop(key, None)
