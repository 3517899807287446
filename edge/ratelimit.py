"""Rate limits shared by every edge: one GCRA state per limited thing, kept in the RATE_LIMITS
bucket and changed only by compare-and-set, so any number of edges enforce one limit together.

GCRA (the "generic cell rate algorithm", ITU-T I.371; the "virtual scheduling" form): a limit of
``rate`` requests per minute with a ``burst`` keeps one number per limited thing, its theoretical
arrival time ``tat`` (Unix seconds). A request at ``now`` moves it to ``max(tat, now) + T``
(``T = 60 / rate``) and is allowed when that is at most ``burst * T`` ahead of ``now``: an idle
caller may send ``burst`` requests at once, then one every ``T`` seconds. A refused request does
not move ``tat``; it is told to retry after the time until it would be allowed.

Each check is a read and a conditional write of one bucket entry (``Nats-Expected-Last-Subject-
Sequence``): when another edge wrote in between, the check is made again on the new value. Clocks
of different edges should agree (NTP); a skew of ``s`` seconds shifts a limit by ``s / T``
requests at most.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

MAX_TRIES = 16
"""Compare-and-set attempts before a check gives up (and lets the request through, logged)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate`` requests per minute with a ``burst``; ``name`` is what a refusal says was exceeded."""

    rate: int
    burst: int
    name: str

    @property
    def interval(self) -> float:
        """Seconds between requests at the steady rate (``T``)."""
        return 60.0 / self.rate


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a check: ``allowed``, else ``retry_after`` (seconds, rounded up) and the
    :class:`Limit` that refused."""

    allowed: bool
    retry_after: int = 0
    limit: Limit | None = None


def gcra(tat: float | None, now: float, limit: Limit) -> tuple[bool, float, float]:
    """One GCRA step: ``(allowed, new_tat, wait)``. ``tat``: stored state (None: never seen);
    ``wait``: seconds until a refused request would be allowed (0 when allowed)."""
    interval = limit.interval
    new_tat = max(tat if tat is not None else now, now) + interval
    ahead = new_tat - now
    allowance = limit.burst * interval
    if ahead <= allowance:
        return True, new_tat, 0.0
    return False, tat if tat is not None else now, ahead - allowance


_PACK = struct.Struct(">d")


class RateLimiter:
    """Checks limits against the shared bucket. ``kv``: the RATE_LIMITS bucket; ``clock``: Unix time."""

    def __init__(self, kv: KeyValue, clock: Callable[[], float] = time.time):
        self.kv = kv
        self.clock = clock

    async def take(self, key: str, limit: Limit) -> Decision:
        """Count one request against ``limit`` for ``key`` (a bucket key such as ``t.acme``).

        Never raises: if the bucket cannot be reached, the request is allowed and it is logged
        (a limit is a protection, not a reason to refuse all service).
        """
        for _ in range(MAX_TRIES):
            try:
                return await self._try(key, limit)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another edge counted a request in between: count again on its value
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
                log.warning("rate limit %s for %s not checked: %s", limit.name, key, err)
                return Decision(True)
        log.warning("rate limit %s for %s not checked: %d conflicting writers", limit.name, key, MAX_TRIES)
        return Decision(True)

    async def peek(self, key: str, limit: Limit) -> Decision:
        """Whether one more request would be allowed, without counting it."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return Decision(True)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            return Decision(True)
        allowed, _, wait = gcra(_unpack(entry.value), self.clock(), limit)
        return Decision(True) if allowed else Decision(False, max(1, math.ceil(wait)), limit)

    async def _try(self, key: str, limit: Limit) -> Decision:
        try:
            entry = await self.kv.get(key)
            tat, revision = _unpack(entry.value), entry.revision
        except nats.js.errors.KeyNotFoundError:
            tat, revision = None, 0
        allowed, new_tat, wait = gcra(tat, self.clock(), limit)
        if not allowed:
            return Decision(False, max(1, math.ceil(wait)), limit)
        if revision:
            await self.kv.update(key, _PACK.pack(new_tat), last=revision)
        else:
            await self.kv.create(key, _PACK.pack(new_tat))
        return Decision(True)

    async def take_all(self, checks: list[tuple[str, Limit]]) -> Decision:
        """Count one request against several limits at once (concurrently); the first refusal wins."""
        if not checks:
            return Decision(True)
        decisions = await asyncio.gather(*(self.take(key, limit) for key, limit in checks))
        refused = [d for d in decisions if not d.allowed]
        return max(refused, key=lambda d: d.retry_after) if refused else Decision(True)


def _unpack(value: bytes | None) -> float | None:
    if not value or len(value) != _PACK.size:
        return None
    return float(_PACK.unpack(value)[0])
