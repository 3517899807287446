"""Taking run requests fairly: one durable consumer per tenant, one for ensemble members, and a
first-come first-served queue for this runner's slots.

Fairness across tenants comes from two rules:

- **Each tenant has its own consumer** on AGENT_RUNS (``tenant_{tenant}``, filter
  ``agents.{tenant}.*.run``), shared by every runner. Its ``max_ack_pending`` is the tenant's
  ``max_concurrent_runs``: the server hands out no more of that tenant's runs at once, across all
  runners, so one tenant can never hold every slot.
- **Each consumer has few runs waiting for a slot per runner.** A consumer's loop fetches only while
  this runner has a free slot; it waits for one request, takes as many more as there are free
  slots and requests right now (at most :data:`BATCH_MAX` in all), hands them to the slot queue,
  and fetches again only once all of them have a slot. Slots are given in arrival
  order, so when tenant A has 2,000 runs queued and tenant B submits one, B's run waits behind at
  most one run of each other tenant (plus what they fetched while slots were free), never behind
  A's backlog.

Ensemble members' child runs come through their own consumer (``member-runs``), without a tenant
cap: their parent already counts against it.

A request waiting for a slot is kept alive (``in_progress``) like a running one, and handed back
(``nak``) if the runner stops before it got one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import streams, subjects
from schemas.tenants import TenantPolicy

log = logging.getLogger(__name__)

FETCH_WAIT = 5.0
"""Seconds one fetch waits for a request before asking again."""
BATCH_MAX = 32
"""Most requests taken at once (when that many slots are free)."""
MORE_WAIT = 0.05
"""Seconds the fetch of "what else is there now" may wait (it returns at once when some are there)."""


class Slots:
    """Runs this runner works on at once: ``capacity`` slots given first come, first served.

    ``take_anyway`` lets a run take a slot back without waiting (an ensemble's parent that gave
    its slot up while waiting for its members): the count may then exceed ``capacity`` briefly.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._room = asyncio.Event()

    @property
    def free(self) -> int:
        """Slots nobody holds or waits for now."""
        return max(0, self.capacity - self.used - len(self._waiters))

    async def until_free(self) -> None:
        """Return once a slot is free (nobody holds or waits for it)."""
        while self.free <= 0:
            self._room.clear()
            await self._room.wait()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        """Wait for a slot (in arrival order)."""
        if self.used < self.capacity and not self._waiters:
            self.used += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was given just as the wait was cancelled
            raise

    def release(self) -> None:
        """Give a slot back."""
        self.used -= 1
        self._wake()

    def set_capacity(self, capacity: int) -> None:
        """Change how many slots there are (runs already holding one keep it)."""
        if capacity != self.capacity:
            self.capacity = capacity
            self._wake()

    def take_anyway(self) -> None:
        """Take a slot without waiting."""
        self.used += 1

    def _wake(self) -> None:
        while self._waiters and self.used < self.capacity:
            future = self._waiters.popleft()
            if not future.done():
                self.used += 1
                future.set_result(None)
        if self.free > 0:
            self._room.set()


Handler = Callable[[Msg, asyncio.Event], Coroutine[Any, Any, None]]
"""Handles one delivered request; sets the event once the request has a slot (or is refused)."""


class Intake:
    """The consumer loops of one runner. ``handle(msg, admitted)`` is started as a task per
    request; a loop fetches its next request once ``admitted`` is set."""

    def __init__(self, js: JetStreamContext, handle: Handler, slots: Slots, *, ack_wait: float):
        self.js = js
        self.slots = slots
        self.handle = handle
        self.ack_wait = ack_wait
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def consumers(self) -> list[str]:
        """The consumers this runner takes requests from now."""
        return sorted(self._loops)

    async def start(self) -> None:
        """Start taking ensemble members' requests (tenants come with their policies)."""
        self._start_loop(subjects.MEMBER_RUNS_CONSUMER)

    async def set_tenant(self, tenant: str, policy: TenantPolicy | None) -> None:
        """Apply a tenant's policy: create or update its consumer (``max_ack_pending`` =
        ``max_concurrent_runs``) and take its requests; None (tenant removed): stop taking them
        (its queued requests stay stored)."""
        name = subjects.tenant_consumer(tenant)
        if policy is None:
            task = self._loops.pop(name, None)
            if task is not None:
                task.cancel()
                log.info("tenant %s removed: no longer taking its runs", tenant)
            return
        config = streams.tenant_consumer_config(tenant, max_concurrent_runs=policy.max_concurrent_runs,
                                                ack_wait=self.ack_wait)
        for attempt in range(10):
            try:
                await self.js.add_consumer(subjects.AGENT_RUNS_STREAM, config)
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
                log.warning("consumer for tenant %s not created (%s); retrying", tenant, err)
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        self._start_loop(name)

    def _start_loop(self, consumer: str) -> None:
        if consumer not in self._loops and not self._stopping:
            self._loops[consumer] = asyncio.create_task(self._loop(consumer), name=f"intake {consumer}")

    async def stop(self) -> None:
        """Stop every loop (requests already handed to ``handle`` are the handler's)."""
        self._stopping = True
        loops = list(self._loops.values())
        self._loops.clear()
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _hand_over(self, msg: Msg) -> tuple[asyncio.Task[None], asyncio.Event]:
        admitted = asyncio.Event()
        return asyncio.create_task(self.handle(msg, admitted)), admitted

    async def _loop(self, consumer: str) -> None:
        psub = None
        try:
            while True:
                if psub is None:
                    try:
                        psub = await self.js.pull_subscribe_bind(durable=consumer, stream=subjects.AGENT_RUNS_STREAM)
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
                        log.warning("cannot take requests from %s: %s; retrying", consumer, err)
                        await asyncio.sleep(1.0)
                        continue
                # Only with room for it: a request fetched by a full runner would wait here while
                # another runner may have room.
                await self.slots.until_free()
                try:
                    # One request at a time while waiting (nats-py's fetch of several keeps waiting for
                    # the rest once one has come), then what else is there right now.
                    msgs = await psub.fetch(1, timeout=FETCH_WAIT)
                except TimeoutError:
                    continue
                except (nats.errors.Error, nats.js.errors.Error) as err:  # reconnecting, JetStream restarting
                    log.warning("fetching from %s: %s: %s", consumer, type(err).__name__, err)
                    await asyncio.sleep(0.5)
                    continue
                pending = [self._hand_over(msg) for msg in msgs]
                more = min(BATCH_MAX - 1, self.slots.free)
                if more > 0:
                    with contextlib.suppress(TimeoutError, nats.errors.Error, nats.js.errors.Error):
                        pending += [self._hand_over(msg) for msg in await psub.fetch(more, timeout=MORE_WAIT)]
                for task, admitted in pending:
                    if admitted.is_set() or task.done():
                        continue
                    waiter = asyncio.ensure_future(admitted.wait())
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
        finally:
            if psub is not None:
                with contextlib.suppress(Exception):
                    await psub.unsubscribe()


async def keep_alive(msg: Msg, ack_wait: float) -> None:
    """Tell the server the request is being worked on (``in_progress``) every third of its
    consumer's ``ack_wait`` (seconds; at least every 0.2 s), so it is not redelivered, until
    cancelled (NATS JetStream "Acknowledgement Models": ``+WPI`` resets the ack wait)."""
    interval = max(ack_wait / 3, 0.2)
    while True:
        await asyncio.sleep(interval)
        try:
            await msg.in_progress()
        except Exception as err:  # reconnecting; the next one may pass
            log.debug("in_progress failed: %s", err)


async def nak(msg: Msg, delay: float | None = None) -> None:
    """Hand the request back for redelivery (after ``delay`` seconds, or at once); a nak that
    cannot be sent is logged, as the ack wait hands the request back anyway."""
    try:
        await msg.nak(delay=delay)
    except Exception as err:  # the connection is gone: the ack wait hands it back anyway
        log.debug("nak failed: %s", err)
