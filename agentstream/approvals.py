"""Reading and changing a run's entry in the APPROVALS bucket (schemas/approvals.py), for edges
(decisions) and agent runners (waiting, claiming, resuming).

Every change is a compare-and-set on the entry's revision (``KeyValue.update(..., last=rev)``),
retried on a conflict with a fresh read, so decisions made at once on several edges, and claims
made at once by several agent runners, never overwrite each other: the first to be stored wins,
the others see it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import nats.js.errors
from nats.js.kv import KeyValue

from schemas import subjects
from schemas.approvals import PendingApproval
from schemas.events import Decision

log = logging.getLogger(__name__)

CAS_ATTEMPTS = 20
"""Reads and compare-and-sets one change tries before giving up (only under heavy contention)."""


class ApprovalConflict(Exception):
    """The entry kept changing under a compare-and-set (CAS_ATTEMPTS times): retry later."""


@dataclass(frozen=True)
class Stored:
    """An entry and its revision (for a compare-and-set)."""

    entry: PendingApproval
    revision: int


async def load(kv: KeyValue, tenant: str, run_id: str) -> Stored | None:
    """The run's entry, or None (it is not waiting, or no longer). Raises nats errors."""
    try:
        got = await kv.get(subjects.approval_key(tenant, run_id))
    except nats.js.errors.NotFoundError:  # never there, or deleted (KeyDeletedError)
        return None
    if not got.value:
        return None
    return Stored(PendingApproval.model_validate_json(got.value), int(got.revision or 0))


async def change(
    kv: KeyValue, tenant: str, run_id: str, edit: Callable[[PendingApproval], PendingApproval | None]
) -> Stored | None:
    """Apply ``edit`` to the run's entry by compare-and-set, reading again after a conflict.

    ``edit`` returns the new entry, or None to leave it as it is; it is called again on a fresh
    read after a lost compare-and-set, so what it records must be reset at its start. Returns the
    entry stored (or left), None when there is none. Raises ApprovalConflict, nats errors.
    """
    key = subjects.approval_key(tenant, run_id)
    for _ in range(CAS_ATTEMPTS):
        current = await load(kv, tenant, run_id)
        if current is None:
            return None
        new = edit(current.entry.model_copy(deep=True))
        if new is None:
            return current
        try:
            revision = await kv.update(key, new.model_dump_json().encode(), last=current.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
        return Stored(new, int(revision))
    raise ApprovalConflict(f"the approval entry of run {run_id} kept changing")


async def wait_for(kv: KeyValue, tenant: str, entry: PendingApproval) -> Stored:
    """Store ``entry`` for its run (the run stops to wait). If the run has an entry already (an
    earlier attempt stopped at the same step), the calls keep any decision made; calls not in it
    are added. Raises ApprovalConflict, nats errors."""
    key = subjects.approval_key(tenant, entry.run_id)
    try:
        revision = await kv.create(key, entry.model_dump_json().encode())
        return Stored(entry, int(revision))
    except nats.js.errors.KeyWrongLastSequenceError:
        pass

    def merge(current: PendingApproval) -> PendingApproval | None:
        if current.step != entry.step:
            return entry.model_copy(update={"state": "waiting"})  # a stale entry of an earlier step
        known = {c.tool_call_id for c in current.calls}
        missing = [c for c in entry.calls if c.tool_call_id not in known]
        if not missing:
            return None
        return current.model_copy(update={"calls": [*current.calls, *missing]})

    stored = await change(kv, tenant, entry.run_id, merge)
    if stored is None:  # removed meanwhile: create it again
        return await wait_for(kv, tenant, entry)
    return stored


DecideOutcome = Literal["decided", "same", "opposite", "unknown_call", "not_waiting"]


@dataclass(frozen=True)
class DecideResult:
    """What a decision did: ``decided`` (stored), ``same`` (already decided so: nothing to do),
    ``opposite`` (already decided the other way, ``entry.call(id)`` says how and by whom),
    ``unknown_call`` (the run waits, but not for this call), ``not_waiting`` (no entry, or its
    wait ended undecided: it was cancelled). ``entry``: the entry after it (None when none)."""

    outcome: DecideOutcome
    entry: PendingApproval | None = None


def expire(entry: PendingApproval, now: datetime) -> bool:
    """Reject (``by: timeout``) every undecided call of a waiting entry whose deadline has passed;
    True when that changed anything. Whoever looks first applies it, edge or agent runner."""
    if entry.state != "waiting" or now < entry.expires_at:
        return False
    changed = False
    for call in entry.calls:
        if call.decision is None:
            call.decision, call.by, call.decided_at = "rejected", "timeout", now
            changed = True
    return changed


async def decide(
    kv: KeyValue, tenant: str, run_id: str, tool_call_id: str, decision: Decision, *,
    reason: str | None, now: datetime | None = None,
) -> DecideResult:
    """Record a person's ``decision`` (``by: request``) for one call of a waiting run, by
    compare-and-set. Past the wait's deadline the undecided calls are rejected by the timeout
    first, so a late approval is ``opposite``. Raises ApprovalConflict, nats errors."""
    outcome: list[DecideOutcome] = ["decided"]
    when = now or datetime.now(UTC)

    def edit(entry: PendingApproval) -> PendingApproval | None:
        expired = expire(entry, when)
        call = entry.call(tool_call_id)
        if call is None:
            outcome[0] = "unknown_call"
        elif call.decision is not None:
            outcome[0] = "same" if call.decision == decision else "opposite"
        elif entry.state != "waiting":
            outcome[0] = "not_waiting"
        else:
            outcome[0] = "decided"
            call.decision, call.reason, call.by, call.decided_at = decision, reason, "request", when
            return entry
        return entry if expired else None

    stored = await change(kv, tenant, run_id, edit)
    if stored is None:
        return DecideResult("not_waiting")
    return DecideResult(outcome[0], stored.entry)


async def remove(kv: KeyValue, tenant: str, run_id: str) -> None:
    """Remove the run's entry (its decisions are in its events now). Never raises: an entry left
    behind is found again and removed by the next runner that takes the run, or expires."""
    try:
        await kv.delete(subjects.approval_key(tenant, run_id))
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        log.warning("approval entry of run %s not removed: %s", run_id, err)
