"""Run events for SSE clients: stored events first, then live ones, none lost, none twice.

One :class:`LiveHub` per edge process holds a single core subscription to ``live.runs.>`` (the
server re-publishes every stored event there) and hands each event to the watchers of its run or
agent. An :class:`EventFeed` (one per SSE connection) registers a watcher *before* reading the
stored events, then yields every event with a sequence above the last one it yielded, so the
hand-over from stored to live has no hole and no repeat.

The stream is the buffer, so a slow client costs bounded memory: a watcher keeps at most ``buffer`` live
events; a client too slow to take them makes its watcher overflow, the buffer is dropped, and the
feed re-reads from the stream where the client is when it catches up. Memory per client stays
bounded and nothing is dropped. The same re-read repairs gaps: a live event whose
``Nats-Last-Sequence`` is not the last one yielded (a re-published message lost while the edge
was reconnecting), a reconnect to NATS, and a periodic check at each heartbeat.

In a JetStream cluster a re-read may be answered by a replica a little behind the leader that
re-published the live event (agentstream.eventlog): when a re-read after a gap stops short of the
live event that revealed it, the feed reads again shortly (:data:`BEHIND_RETRY`), instead of
waiting for the next live event or the periodic check.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Final, Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentstream import eventlog
from agentstream.eventlog import StoredEvent
from schemas import events as E
from schemas import subjects

log = logging.getLogger(__name__)

class _Signal(enum.Enum):
    HEARTBEAT = "heartbeat"


HEARTBEAT: Final = _Signal.HEARTBEAT
"""Yielded by a feed when nothing happened for one heartbeat interval."""
Heartbeat = Literal[_Signal.HEARTBEAT]
"""The type of :data:`HEARTBEAT` (a feed yields ``StoredEvent | Heartbeat``; test with ``is``)."""

RECHECK_EVERY = 4
"""A quiet feed re-reads the stream every this many heartbeats (a safety net, see EventFeed)."""
BEHIND_RETRY = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Seconds before each new read when a re-read stopped short of a live event already seen (a
replica behind the leader answered it); then the periodic check takes over."""


class Watcher:
    """A bounded mailbox of live events for one feed."""

    __slots__ = ("_waiter", "closed", "events", "hub", "key", "limit", "overflowed", "ready")

    def __init__(self, key: tuple[str, str, str], limit: int, hub: LiveHub | None = None):
        self.hub = hub
        self.key = key
        self.limit = limit
        self.events: deque[StoredEvent] = deque()
        self.overflowed = False
        self.closed = False
        self.ready = False
        self._waiter: asyncio.Future[bool] | None = None

    def _wake(self) -> None:
        self.ready = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def wait(self, seconds: float) -> bool:
        """Wait until something is offered (True) or ``seconds`` pass (False).

        A plain future and a timer, no task and no ``asyncio.timeout``: Python 3.11's timeout and
        wait_for can lose a cancellation that arrives as the timeout expires (CPython gh-86296),
        which left the stream of a client that had gone away running, unseen, for ever.
        """
        if self.ready:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _settle, waiter, False)
        try:
            return bool(await waiter)
        finally:
            timer.cancel()
            self._waiter = None

    def offer(self, event: StoredEvent) -> None:
        """Buffer one live event; past ``limit`` drop the buffer and mark the feed for a re-read."""
        if not self.overflowed:
            if len(self.events) >= self.limit:
                self.overflowed = True
                self.events.clear()
                if self.hub is not None:
                    self.hub.overflows += 1
            else:
                self.events.append(event)
        self._wake()

    def resync(self) -> None:
        """Ask the feed to re-read from the stream (after a reconnect)."""
        self.overflowed = True
        self.events.clear()
        self._wake()

    def close(self) -> None:
        """End the feed (the edge is shutting down; the client will resume elsewhere)."""
        self.closed = True
        self._wake()

    def take(self) -> tuple[list[StoredEvent], bool]:
        """The buffered events and whether the feed must re-read; clears both."""
        events, overflowed = list(self.events), self.overflowed
        self.events.clear()
        self.overflowed = False
        self.ready = False
        return events, overflowed


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


class LiveHub:
    """Fans re-published events out to watchers, by ``("run", tenant, run_id)`` or
    ``("agent", tenant, agent)``."""

    def __init__(self, nc: NATS):
        self.nc = nc
        self._watchers: dict[tuple[str, str, str], set[Watcher]] = {}
        self._sub: Subscription | None = None
        self._closing = False
        self.overflows = 0  # times a watcher's buffer overflowed (a client too slow; it re-reads)

    async def start(self) -> None:
        """Subscribe to ``live.runs.>`` (the stream's re-publish subject)."""
        self._sub = await self.nc.subscribe(subjects.LIVE_RUN_EVENTS_ALL, cb=self._on_msg)

    async def stop(self) -> None:
        """Unsubscribe; errors of a connection already closed are ignored."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass

    @property
    def watchers(self) -> int:
        """Watchers registered now (one per open feed)."""
        return sum(len(s) for s in self._watchers.values())

    def register(self, key: tuple[str, str, str], limit: int) -> Watcher:
        """A new watcher for ``key`` holding at most ``limit`` events (closed at once if shutting down)."""
        watcher = Watcher(key, limit, self)
        if self._closing:
            watcher.close()
        self._watchers.setdefault(key, set()).add(watcher)
        return watcher

    def unregister(self, watcher: Watcher) -> None:
        """Forget ``watcher`` (its feed ended)."""
        group = self._watchers.get(watcher.key)
        if group is not None:
            group.discard(watcher)
            if not group:
                del self._watchers[watcher.key]

    def close_all(self) -> None:
        """End every feed now (shutdown): clients reconnect with ``Last-Event-ID``."""
        self._closing = True
        for group in self._watchers.values():
            for watcher in group:
                watcher.close()

    def resync_all(self) -> None:
        """After a NATS reconnect: every feed re-reads what it may have missed."""
        for group in self._watchers.values():
            for watcher in group:
                watcher.resync()

    async def _on_msg(self, msg: Msg) -> None:
        try:
            parts = msg.subject.split(".")  # live.runs.{tenant}.{agent}.{run_id}
            tenant, agent, run_id = parts[2], parts[3], parts[4]
            event = StoredEvent.from_message(msg.subject, msg.headers, msg.data)
        except (IndexError, KeyError, ValueError) as err:
            log.warning("ignoring live message on %s: %s", msg.subject, err)
            return
        for key in (("run", tenant, run_id), ("agent", tenant, agent)):
            group = self._watchers.get(key)
            if group:
                for watcher in group:
                    watcher.offer(event)


class EventFeed:
    """The events of one run (``scope="run"``) or of all runs of one agent (``scope="agent"``),
    after sequence ``after``: stored ones, then live ones. A run feed ends after the run's
    terminal event. Yields :class:`StoredEvent` or :data:`HEARTBEAT` every ``heartbeat`` seconds
    of silence. ``on_sent`` is called with the number of events in each batch yielded (metrics).
    """

    def __init__(
        self,
        nc: NATS,
        hub: LiveHub,
        *,
        scope: str,
        tenant: str,
        name: str,
        filter_subject: str,
        after: int,
        heartbeat: float,
        buffer: int,
        on_sent: Callable[[int], None] | None = None,
    ):
        self.nc = nc
        self.on_sent = on_sent
        self.hub = hub
        self.scope = scope
        self.key = (scope, tenant, name)
        self.filter_subject = filter_subject
        self.last = after
        self._done = False
        self.heartbeat = heartbeat
        self.buffer = buffer
        self._watcher: Watcher | None = None
        self._closed = False

    def close(self) -> None:
        """End the feed now (its key was revoked): a waiting iteration returns at once."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.close()

    async def __aiter__(self) -> AsyncIterator[StoredEvent | Heartbeat]:
        async with aclosing(self.batches()) as batches:
            async for batch in batches:
                if batch is HEARTBEAT:
                    yield HEARTBEAT
                else:
                    for ev in batch:
                        yield ev

    async def batches(self) -> AsyncGenerator[list[StoredEvent] | Heartbeat, None]:
        """The feed, with every event available at one moment in one non-empty list (so a client
        that fell behind gets them in one write, not one write each), or :data:`HEARTBEAT`."""
        self._done = False
        watcher = self.hub.register(self.key, self.buffer)
        self._watcher = watcher
        if self._closed:
            watcher.close()
        try:
            if watcher.closed:
                return
            reread = True  # the stored events first
            quiet = 0
            seen = 0  # the highest sequence of a live event not yielded (a gap revealed it)
            behind = 0  # re-reads in a row that stopped short of ``seen``
            while True:
                if reread:
                    async for batch in self._stored():
                        yield batch
                    if self._done:
                        return
                    reread = False
                    behind = behind + 1 if seen > self.last else 0
                wait = self.heartbeat
                if 0 < behind <= len(BEHIND_RETRY):
                    wait = min(wait, BEHIND_RETRY[behind - 1])
                if not await watcher.wait(wait):
                    if watcher.closed:
                        return
                    if wait < self.heartbeat:  # read again: the stream's answer was behind
                        reread = True
                        continue
                    yield HEARTBEAT
                    quiet += 1
                    # A safety net: nothing can have been missed unless a re-published event was
                    # lost without a reconnect or slow-consumer error (which re-read at once).
                    reread = quiet % RECHECK_EVERY == 0
                    continue
                quiet = 0
                if watcher.closed:
                    return
                events, reread = watcher.take()
                if reread:
                    continue
                out: list[StoredEvent] = []
                for ev in events:
                    if ev.seq <= self.last:
                        continue
                    if self.scope == "run" and ev.last_seq is not None and ev.last_seq > self.last:
                        # A hole: something between the last yielded event and this one. Every
                        # live event was stored before it was re-published: re-read the rest.
                        reread = True
                        seen = max(seen, events[-1].seq)
                        break
                    self.last = ev.seq
                    out.append(ev)
                    if self._ends(ev):
                        self._done = True
                        break
                if out:
                    if self.on_sent is not None:
                        self.on_sent(len(out))
                    yield out
                if self._done:
                    return
        finally:
            self.hub.unregister(watcher)

    async def _stored(self) -> AsyncIterator[list[StoredEvent]]:
        """Stored events after ``self.last``, a page at a time; stops after a run's terminal event."""
        while True:
            events, pending = await eventlog.read_batch(self.nc, self.filter_subject, self.last)
            out: list[StoredEvent] = []
            for ev in events:
                if ev.seq <= self.last:
                    continue
                self.last = ev.seq
                out.append(ev)
                if self._ends(ev):
                    self._done = True
                    break
            if out:
                if self.on_sent is not None:
                    self.on_sent(len(out))
                yield out
            if self._done or not events or pending == 0:
                return

    def _ends(self, ev: StoredEvent) -> bool:
        return self.scope == "run" and E.is_terminal(ev.type)
