"""Open SSE streams per API key, capped across every edge (``max_streams`` in the keys file).

Each edge counts its own open streams per key and publishes the count to the STREAM_COUNTS bucket
under ``{key_id}.{edge_id}`` whenever it changes, and again every :data:`REFRESH` seconds. The
bucket forgets an entry 60 s after its last write, so the streams of an edge that died stop
counting within a minute. A new stream is admitted when this edge's count plus every other
edge's published count is below the cap (one batched read of ``{key_id}.*``). Two edges
admitting the key's last stream at the same instant can both admit it: the cap holds to within
one stream per edge at that instant.

A stream holds a :class:`Lease`; ending the stream releases it. When a key is revoked,
:meth:`StreamCaps.revoke` ends its open streams (their feeds close; clients see the stream end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from agentstream.eventlog import EventLogError, direct_get_batch
from schemas import subjects

log = logging.getLogger(__name__)

REFRESH = 20.0
"""Seconds between an edge's re-publications of its counts (the bucket keeps entries 60 s)."""


class Lease:
    """One open stream of one key. :meth:`release` (idempotent) when the stream ends; ``on_revoke``
    callbacks run when the key is revoked (they end the stream)."""

    __slots__ = ("_caps", "key_id", "on_revoke", "released")

    def __init__(self, caps: StreamCaps, key_id: str):
        self._caps = caps
        self.key_id = key_id
        self.released = False
        self.on_revoke: list[Callable[[], None]] = []

    def release(self) -> None:
        """The stream ended: stop counting it."""
        if not self.released:
            self.released = True
            self._caps._release(self)


class StreamCaps:
    """This edge's open streams per key, and admission against ``max_streams`` across edges."""

    def __init__(self, nc: NATS, kv: KeyValue):
        self.nc = nc
        self.kv = kv
        self.edge_id = secrets.token_hex(8)
        self._leases: dict[str, set[Lease]] = {}
        self._task: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Start publishing counts (on change, and every :data:`REFRESH` seconds)."""
        self._task = asyncio.create_task(self._publisher())

    async def stop(self) -> None:
        """Stop publishing (this edge's entries then expire)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def local(self, key_id: str) -> int:
        """Streams of ``key_id`` open on this edge."""
        return len(self._leases.get(key_id, ()))

    async def admit(self, key_id: str, cap: int | None) -> Lease | None:
        """A lease for one more stream of ``key_id``, or None when ``cap`` streams are open
        (counting every edge). ``cap`` None: no cap (counted all the same)."""
        if cap is not None and self.local(key_id) + await self._others(key_id) >= cap:
            return None
        lease = Lease(self, key_id)
        self._leases.setdefault(key_id, set()).add(lease)
        self._changed(key_id)
        return lease

    def revoke(self, key_ids: set[str]) -> int:
        """End every open stream of the keys ``key_ids``; returns how many."""
        ended = 0
        for key_id in key_ids:
            for lease in list(self._leases.get(key_id, ())):
                for callback in lease.on_revoke:
                    callback()
                lease.release()
                ended += 1
        return ended

    def _release(self, lease: Lease) -> None:
        group = self._leases.get(lease.key_id)
        if group is not None:
            group.discard(lease)
            if not group:
                del self._leases[lease.key_id]
        self._changed(lease.key_id)

    def _changed(self, key_id: str) -> None:
        self._dirty.add(key_id)
        self._wake.set()

    async def _others(self, key_id: str) -> int:
        """Streams of ``key_id`` other edges published (0 if the bucket cannot be read)."""
        request = {"multi_last": [f"$KV.{subjects.STREAM_COUNTS_BUCKET}.{key_id}.*"], "batch": 1000}
        try:
            msgs, _ = await direct_get_batch(self.nc, f"KV_{subjects.STREAM_COUNTS_BUCKET}", request,
                                             what=f"stream counts of {key_id}", within=2.0)
        except EventLogError as err:
            log.warning("open streams of other edges not known: %s", err)
            return 0
        total = 0
        mine = f".{self.edge_id}"
        for msg in msgs:
            if msg.subject.endswith(mine) or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                continue
            with contextlib.suppress(ValueError):
                total += int(msg.data or b"0")
        return total

    async def _publisher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._wake.wait()
            self._wake.clear()
            keys = self._dirty | set(self._leases)
            self._dirty = set()
            for key_id in keys:
                try:
                    await self.kv.put(f"{key_id}.{self.edge_id}", str(self.local(key_id)).encode())
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
                    log.warning("could not publish open streams of %s: %s", key_id, err)
                    self._dirty.add(key_id)
