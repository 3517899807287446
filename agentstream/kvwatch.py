"""Following a JetStream key-value bucket: the latest entry of every key, then each change.

A :class:`BucketWatcher` reads the bucket's stream (``KV_{bucket}``) through an ordered consumer
with ``DeliverPolicy.LAST_PER_SUBJECT``: the server first delivers the newest message of every key
(ADR-8, "Watch"), then every new one as it is stored. An ordered consumer is recreated by the
client after a gap or a reconnection from the last sequence it saw, so nothing is missed. Entries
are handed to ``on_entry`` one at a time, in stream order, from one task.

Used for tenant policies (agentstream.policies), agents and paused agents (agentstream.agentstore),
and the runs waiting for approvals (agent_runner.approval_keeper); agentstream.kvmirror follows
buckets the same way (:func:`follow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

log = logging.getLogger(__name__)

_DELETED = ("DEL", "PURGE")
_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"


@dataclass(frozen=True, slots=True)
class BucketEntry:
    """One stored entry: its ``key`` (the subject after ``$KV.{bucket}.``), ``value`` (None when
    the entry deletes the key), ``revision`` (its stream sequence) and ``time`` (when it was
    stored, Unix seconds; 0 if unknown)."""

    key: str
    value: bytes | None
    revision: int
    time: float

    @property
    def deleted(self) -> bool:
        """True when this entry deletes (or purges) the key."""
        return self.value is None


EntryCallback = Callable[[BucketEntry], Awaitable[None]]
"""Awaited for each entry (also for each entry present when watching starts)."""


def entry_of(prefix: str, msg: Msg) -> BucketEntry:
    """The :class:`BucketEntry` a message of the bucket's stream carries (``prefix``:
    ``$KV.{bucket}.``). A ``KV-Operation: DEL``/``PURGE`` header, or a server marker
    (``Nats-Marker-Reason``), makes it a deletion."""
    headers = msg.headers or {}
    deleted = headers.get(_OPERATION) in _DELETED or _MARKER_REASON in headers
    revision, when = 0, 0.0
    with contextlib.suppress(Exception):  # a message not delivered by a consumer has no metadata
        revision = msg.metadata.sequence.stream
        when = msg.metadata.timestamp.timestamp()
    return BucketEntry(msg.subject.removeprefix(prefix), None if deleted else msg.data, revision, when)


async def follow(
    js: JetStreamContext, bucket: str, cb: Callable[[Msg], Awaitable[None]], ready: asyncio.Event,
) -> JetStreamContext.PushSubscription:
    """Subscribe ``cb`` to bucket ``bucket``'s stream through an ordered consumer delivering the
    newest message of every key, then every new one (see the module docstring); ``ready`` is set
    at once when the bucket holds nothing (the caller sets it once the last entry present was
    handled: ``msg.metadata.num_pending == 0``). Raises nats errors when the stream cannot be read."""
    stream = f"KV_{bucket}"
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        ready.set()
    return await js.subscribe(
        f"$KV.{bucket}.>", stream=stream, cb=cb, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
    )


class BucketWatcher:
    """The entries of KV bucket ``bucket`` as they are now, then every change, handed to
    ``on_entry`` (see the module docstring). ``ready`` is set once the entries present at
    :meth:`start` were handed over.

    ``on_entry`` must not raise; an exception is logged and the next entry follows.
    """

    def __init__(self, js: JetStreamContext, bucket: str, on_entry: EntryCallback):
        self.js = js
        self.bucket = bucket
        self.on_entry = on_entry
        self.prefix = f"$KV.{bucket}."
        self.ready = asyncio.Event()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self, within: float = 30.0) -> None:
        """Start watching; returns once the entries present now were handed over (TimeoutError
        after ``within`` seconds; nats errors when the bucket's stream cannot be read)."""
        self._task = asyncio.create_task(self._apply_all(), name=f"watch {self.bucket}")
        self._sub = await follow(self.js, self.bucket, self._queue.put, self.ready)
        await asyncio.wait_for(self.ready.wait(), within)

    async def stop(self) -> None:
        """Stop watching."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _apply_all(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self.on_entry(entry_of(self.prefix, msg))
            except Exception:
                log.exception("applying %s from bucket %s failed", msg.subject, self.bucket)
            with contextlib.suppress(Exception):
                if msg.metadata.num_pending == 0:
                    self.ready.set()
