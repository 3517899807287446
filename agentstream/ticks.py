"""When a schedule's ticks are, and which of them to fire now (pure arithmetic, no I/O).

Ticks are whole Unix seconds. An ``every`` schedule ticks at ``anchor + k * every``; a ``cron``
schedule wherever croniter says, read in the schedule's time zone (so ``0 9 * * *`` in
``Europe/Berlin`` stays at 09:00 local time across daylight-saving changes).

:func:`plan` decides, at time ``now``, what a schedule whose latest handled tick is ``last``
must do. The ticks due are those after ``last`` up to ``now``. The newest of them is **on time**
when it is late by less than the grace (``SCHEDULE_MISFIRE_GRACE``, and never more than the gap to
the following tick); every other due tick was **missed** (nothing could fire it: every edge was
down, or the schedule was being fired late). On-time ticks always fire; missed ones follow
``catch_up``:

- ``none``: they are skipped;
- ``one``: the newest of them fires, once, standing for all of them;
- ``all``: each fires, oldest first, at most ``max_catch_up`` of them (the newest; older ones are
  skipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from schemas.schedules import CatchUp, Schedule

COUNT_LIMIT = 10_000
"""Most skipped ticks counted one by one for a cron schedule (the count says "at least" beyond)."""


@dataclass(frozen=True)
class Timing:
    """The part of a schedule that says when it ticks: ``every`` seconds from ``anchor``, or
    ``cron`` in ``timezone``."""

    anchor: int
    every: int | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @classmethod
    def of(cls, schedule: Schedule) -> Timing:
        """The timing of a stored schedule."""
        return cls(anchor=schedule.anchor, every=schedule.every, cron=schedule.cron, timezone=schedule.timezone)

    def next_after(self, t: int) -> int:
        """The first tick strictly after ``t``."""
        if self.every is not None:
            if t < self.anchor:
                return self.anchor
            return self.anchor + ((t - self.anchor) // self.every + 1) * self.every
        start = datetime.fromtimestamp(t, _zone(self.timezone))
        return int(croniter(self._cron(), start).get_next(float))

    def latest_at_or_before(self, t: int) -> int | None:
        """The latest tick at or before ``t`` (None: none since the anchor, for ``every``)."""
        if self.every is not None:
            if t < self.anchor:
                return None
            return self.anchor + ((t - self.anchor) // self.every) * self.every
        start = datetime.fromtimestamp(t + 1, _zone(self.timezone))
        return int(croniter(self._cron(), start).get_prev(float))

    def before(self, t: int) -> int | None:
        """The latest tick strictly before ``t``."""
        return self.latest_at_or_before(t - 1)

    def count_between(self, low: int, high: int) -> int:
        """How many ticks lie strictly between ``low`` and ``high`` (for cron schedules counted up to
        :data:`COUNT_LIMIT`)."""
        if high <= low + 1:
            return 0
        if self.every is not None:
            first = self.next_after(low)
            if first >= high:
                return 0
            return (high - 1 - first) // self.every + 1
        count, t = 0, self.next_after(low)
        while t < high and count < COUNT_LIMIT:
            count += 1
            t = self.next_after(t)
        return count

    def _cron(self) -> str:
        assert self.cron is not None, "a schedule has cron or every"
        return self.cron


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True)
class Plan:
    """What to do now: ``fire`` the ticks listed (oldest first), after counting ``skipped`` ticks
    as skipped; ``latest`` is the newest due tick (the schedule's ``last_tick`` once all is done).
    ``fire`` empty and ``latest`` equal to ``last``: nothing is due."""

    fire: tuple[int, ...]
    skipped: int
    latest: int


def plan(timing: Timing, last: int, now: float, *, catch_up: CatchUp, grace: float, max_catch_up: int) -> Plan:
    """The ticks to fire at ``now`` (Unix seconds) for a schedule whose latest handled tick is
    ``last`` (see the module docstring). ``grace``: seconds a tick may be late and still be on
    time (capped at the gap to its next tick); ``max_catch_up``: most missed ticks ``all`` fires.

    ``skipped`` counts the ticks older than ``fire[0]`` (or, when nothing fires, all due ticks)
    that are left out; the caller records them when it claims ``fire[0]``.
    """
    latest = timing.latest_at_or_before(math.floor(now))
    if latest is None or latest <= last:
        return Plan((), 0, last)
    gap = timing.next_after(latest) - latest
    on_time = now - latest < min(grace, gap)
    newest_missed = latest if not on_time else timing.before(latest)
    missed: list[int] = []  # newest first
    t = newest_missed
    keep = {"none": 0, "one": 1, "all": max(max_catch_up, 0)}[catch_up]
    while t is not None and t > last and len(missed) < keep:
        missed.append(t)
        t = timing.before(t)
    fire = [*reversed(missed), *([latest] if on_time else [])]
    if fire:
        skipped = timing.count_between(last, fire[0])
    else:
        skipped = timing.count_between(last, latest) + 1  # every due tick, the newest included
    return Plan(tuple(fire), skipped, latest)
