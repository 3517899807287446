"""Resuming runs that wait for tool approvals: every agent runner watches the APPROVALS bucket,
and exactly one of them resumes each run once it is ready.

A run is ready when every waiting call is decided (edges write the decisions), when its deadline
(``expires_at``, the agent's ``approval_timeout``) has passed (the calls still undecided are then
rejected, ``by: timeout``), or when it was cancelled. The runner that claims it (a compare-and-set
of the entry from ``waiting`` to ``resuming``: only one claim can win, however many runners try)
publishes the run request again (``Nats-Msg-Id`` ``{run_id}:resume:{resume_id}``, so a repeat is
stored once), then marks the entry ``resumed``. The request waits in its tenant's queue like any
other, and whichever runner takes it continues the run from its events (agent_runner.opening).

Why a bucket with deadlines and a claim rather than JetStream's delayed redelivery (a ``nak``
with a delay as long as the approval timeout): a request held unacknowledged counts against its
tenant's ``max_ack_pending`` (``max_concurrent_runs``) for the whole wait, so waiting runs would
hold their tenant's places; a nak's delay cannot be cut short when a person decides, so a
decision would need a second path anyway; and the bucket is where the decisions are kept, so one
watch sees both the decisions and the deadlines. The deadlines are durable (the entries are
stored in a file-backed, replicated stream); every runner holds all of them in memory (a few
hundred bytes each) and, after a restart, reads them all again, so a deadline that passed while
every runner was down fires at once when one comes back. A claim whose runner died before
publishing (``resuming`` for longer than :data:`CLAIM_LEASE`) is claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from agentstream import approvals
from agentstream.approvals import ApprovalConflict, Stored
from agentstream.kvwatch import BucketEntry, BucketWatcher
from schemas import headers as H
from schemas import subjects
from schemas.approvals import PendingApproval

log = logging.getLogger(__name__)

CLAIM_LEASE = 30.0
"""Seconds a claim may stay ``resuming`` (its runner publishing the request) before another runner
claims the run again. Shorter than the run requests' duplicate window (RUN_DEDUPE_WINDOW), so a
second publication of the same request is recognised as a repeat."""
IDLE_CHECK = 30.0
"""Longest sleep between two looks at the waiting runs (changes wake it at once)."""
RETRY_AFTER = 1.0
"""Seconds before a run whose resumption failed (NATS unreachable) is tried again."""


def resume_msg_id(entry: PendingApproval) -> str:
    """The ``Nats-Msg-Id`` of the request that resumes ``entry``'s run."""
    return f"{entry.run_id}:resume:{entry.resume_id}"


class ApprovalKeeper:
    """One agent runner's watch on the runs waiting for approvals. ``start()``, then ``stop()``.

    ``cancel_reason(tenant, run_id)``: the reason a run was cancelled, or None (the runner's
    memory of RUN_CONTROL); :meth:`poke` after a cancel or anything else that may make a run ready.
    """

    def __init__(self, js: JetStreamContext, kv: KeyValue, runner_id: str,
                 cancel_reason: Callable[[str, str], str | None]):
        self.js = js
        self.kv = kv
        self.runner_id = runner_id
        self.cancel_reason = cancel_reason
        self.pending: dict[tuple[str, str], Stored] = {}
        self._retry_at: dict[tuple[str, str], datetime] = {}
        self._wake = asyncio.Event()
        self._watcher = BucketWatcher(js, subjects.APPROVALS_BUCKET, self._on_entry)
        self.ready = self._watcher.ready
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, within: float = 30.0) -> None:
        """Read every waiting run, then follow the changes; returns once they are read."""
        self._tasks = [asyncio.create_task(self._timer(), name="approvals timer")]
        await self._watcher.start(within)

    async def stop(self) -> None:
        """Stop watching (a claim in progress is finished by another runner after the lease)."""
        await self._watcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def waiting(self) -> int:
        """How many runs wait for decisions now (known to this runner)."""
        return sum(1 for stored in self.pending.values() if stored.entry.state == "waiting")

    def poke(self) -> None:
        """Look at the waiting runs again now."""
        self._wake.set()

    # -- the watch

    async def _on_entry(self, entry: BucketEntry) -> None:
        self._apply(entry)
        self._wake.set()

    def _apply(self, stored: BucketEntry) -> None:
        try:
            where = subjects.parse_approval_key(stored.key)
        except subjects.SubjectTokenError:
            log.warning("ignoring approval entry with key %r", stored.key)
            return
        if stored.value is None or not stored.value:  # deleted, purged, or emptied
            self.pending.pop(where, None)
            self._retry_at.pop(where, None)
            return
        try:
            entry = PendingApproval.model_validate_json(stored.value)
        except ValidationError as err:
            log.error("approval entry %s unreadable, ignored: %s", stored.key, err)
            return
        self._remember(where, Stored(entry, stored.revision))

    # -- deadlines and claims

    def _due(self, now: datetime) -> tuple[list[tuple[str, str]], float]:
        """The runs to claim now, and seconds until the next one may be."""
        due: list[tuple[str, str]] = []
        next_at = now + timedelta(seconds=IDLE_CHECK)
        for where, stored in self.pending.items():
            entry = stored.entry
            retry = self._retry_at.get(where)
            if retry is not None and now < retry:
                next_at = min(next_at, retry)
                continue
            if entry.state == "waiting":
                if entry.ready(now) or self.cancel_reason(*where) is not None:
                    due.append(where)
                else:
                    next_at = min(next_at, entry.expires_at)
            elif entry.state == "resuming" and entry.claimed_at is not None:
                stale = entry.claimed_at + timedelta(seconds=CLAIM_LEASE)
                if now >= stale:
                    due.append(where)
                else:
                    next_at = min(next_at, stale)
        return due, max(0.0, (next_at - now).total_seconds())

    async def _timer(self) -> None:
        while True:
            due, wait = self._due(datetime.now(UTC))
            if due:
                await asyncio.gather(*(self._resume(*where) for where in due))
            self._wake.clear()
            if not due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait + 0.01)

    async def _resume(self, tenant: str, run_id: str) -> None:
        """Claim the run (if it is still ready and nobody else did), publish its request again,
        mark the entry resumed. Errors are logged: the next look tries again."""
        claimed = [False]
        cancel = self.cancel_reason(tenant, run_id)

        def claim(entry: PendingApproval) -> PendingApproval | None:
            claimed[0] = False  # called again after a lost compare-and-set: only the stored one counts
            now = datetime.now(UTC)
            if cancel is not None and entry.cancel_reason is None:
                entry.cancel_reason = cancel
            if entry.state == "waiting" and entry.ready(now):
                approvals.expire(entry, now)  # the deadline passed: what is undecided is rejected
            elif not (entry.state == "resuming" and entry.claimed_at is not None
                      and now >= entry.claimed_at + timedelta(seconds=CLAIM_LEASE)):
                return None
            claimed[0] = True
            entry.state, entry.claimed_by, entry.claimed_at = "resuming", self.runner_id, now
            return entry

        where = (tenant, run_id)
        try:
            stored = await approvals.change(self.kv, tenant, run_id, claim)
            if stored is None:
                self.pending.pop(where, None)
                return
            self._remember(where, stored)
            if not claimed[0]:
                return
            entry = stored.entry
            subject = (subjects.member_request(tenant, entry.agent) if entry.member
                       else subjects.run_request(tenant, entry.agent))
            request = entry.request.model_copy(update={"logged": True})
            ack = await self.js.publish(subject, request.model_dump_json().encode(), timeout=5.0,
                                        headers={H.MSG_ID: resume_msg_id(entry), H.RESUME: entry.resume_id})
            log.info("run %s of tenant %s resumed after its approvals (%s)%s", run_id, tenant,
                     ", ".join(f"{c.tool_call_id}: {c.decision or 'cancelled'}" for c in entry.calls),
                     " (already queued)" if ack.duplicate else "")

            def published(current: PendingApproval) -> PendingApproval | None:
                if current.resume_id != entry.resume_id or current.claimed_by != self.runner_id:
                    return None
                current.state = "resumed"
                return current

            done = await approvals.change(self.kv, tenant, run_id, published)
            if done is not None:
                self._remember(where, done)
            self._retry_at.pop(where, None)
        except (ApprovalConflict, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("run %s waiting for approvals not resumed yet: %s: %s", run_id, type(err).__name__, err)
            self._retry_at[where] = datetime.now(UTC) + timedelta(seconds=RETRY_AFTER)

    def _remember(self, where: tuple[str, str], stored: Stored) -> None:
        """Keep what this runner itself stored (the watch brings the same revision soon)."""
        known = self.pending.get(where)
        if known is None and stored.entry.state == "resumed":
            return  # removed meanwhile (its run goes on): nothing to keep
        if known is None or known.revision < stored.revision:
            self.pending[where] = stored
