"""A key-value bucket's current entries, kept in memory and current: an ordered consumer on the
bucket's stream delivering the latest entry of every key, then every change (what ``kv.watch``
does, with the revision of each entry kept, for compare-and-set writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agentstream.kvwatch import follow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One key's latest value and its ``revision`` (its stream sequence)."""

    value: bytes
    revision: int


class KvMirror:
    """The entries of bucket ``bucket`` (key -> :class:`Entry`); deleted keys are absent.

    ``changed`` is set whenever an entry changes (a caller may clear it and wait).
    """

    def __init__(self, js: JetStreamContext, bucket: str):
        self.js = js
        self.bucket = bucket
        self.entries: dict[str, Entry] = {}
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()
        self._sub: JetStreamContext.PushSubscription | None = None
        self._prefix = f"$KV.{bucket}."

    async def start(self, within: float = 30.0) -> None:
        """Start mirroring; returns once the entries present now are in (TimeoutError after
        ``within`` seconds)."""
        self._sub = await follow(self.js, self.bucket, self._on_msg, self.ready)
        await asyncio.wait_for(self.ready.wait(), within)

    async def stop(self) -> None:
        """Stop mirroring."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject.removeprefix(self._prefix)
        operation = (msg.headers or {}).get("KV-Operation")
        try:
            revision = msg.metadata.sequence.stream
            pending = msg.metadata.num_pending
        except Exception:  # not a stream message
            return
        if operation in ("DEL", "PURGE"):
            self.entries.pop(key, None)
        else:
            current = self.entries.get(key)
            if current is None or current.revision < revision:
                self.entries[key] = Entry(msg.data, revision)
        self.changed.set()
        if pending == 0:
            self.ready.set()

    def note(self, key: str, value: bytes | None, revision: int) -> None:
        """Record a write this process made (before its echo arrives), so it acts on it at once."""
        current = self.entries.get(key)
        if current is not None and current.revision >= revision:
            return
        if value is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = Entry(value, revision)
        self.changed.set()
