"""The run log: an entry when a run is submitted and one when it ends, in stream RUN_LOG, read
newest first to list runs in time independent of how many runs exist.

Subjects are ``runlog.{tenant}.{agent}.{kind}`` (``kind``: submitted, completed, failed,
cancelled), so one tenant's, one agent's, or one outcome's entries are a subject filter away. A
listing reads backwards from the newest matching entry in growing windows of stream sequence
(a batched direct get per window, ADR-31), so the newest N entries cost a few requests whether
the stream holds a hundred runs or a million. The run's current state comes from its latest
event, read for all listed runs in one batched request (``multi_last``).

Edges write ``submitted`` (they may not write run events); the agent runner writes it for runs
that arrived over the bus directly (``RunRequest.logged`` false) and writes the ending entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS

from agentstream import eventlog
from agentstream.bus import jetstream
from schemas import events as E
from schemas import headers as H
from schemas import subjects
from schemas.runs import RunLogEntry, RunLogKind, RunRequest

log = logging.getLogger(__name__)

MESSAGE_CHARS = 2000
"""How much of a message or an answer a log entry keeps."""


def submitted_entry(agent: str, request: RunRequest) -> RunLogEntry:
    """The ``submitted`` entry of a run request."""
    return RunLogEntry(
        run_id=request.run_id, agent=agent, kind="submitted", message_id=request.message_id,
        conversation_id=request.conversation_id, parent_run_id=request.parent_run_id,
        submitted_at=request.submitted_at, message=(request.message or "")[:MESSAGE_CHARS] or None,
    )


async def write(nc: NATS, tenant: str, entry: RunLogEntry) -> None:
    """Append ``entry`` (deduplicated by ``{run_id}:{kind}`` within the stream's window).

    Never raises: the log is an index of the run events, not their record; a lost entry is
    logged as a warning and the run goes on.
    """
    subject = subjects.run_log(tenant, entry.agent, entry.kind)
    try:
        await jetstream(nc).publish(subject, entry.model_dump_json(exclude_none=True).encode(),
                                    headers={H.MSG_ID: f"{entry.run_id}:{entry.kind}"}, timeout=5.0)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        log.warning("run log entry %s of run %s not stored: %s", entry.kind, entry.run_id, err)


@dataclass(frozen=True)
class Logged:
    """A run log entry and its stream sequence (the listing cursor)."""

    seq: int
    entry: RunLogEntry


async def newest(
    nc: NATS,
    filter_subject: str,
    *,
    want: int,
    before: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    window: int = 64,
) -> tuple[list[Logged], bool]:
    """Up to ``want`` entries on ``filter_subject``, newest first, with sequence below ``before``
    (a cursor) and time in ``[since, until)``. Returns ``(entries, more)``: ``more`` when older
    matching entries remain. Raises EventLogError.
    """
    stream = subjects.RUN_LOG_STREAM
    newest_seq = await _last_seq(nc, filter_subject)
    if newest_seq is None:
        return [], False
    hi = newest_seq if before is None else min(newest_seq, before - 1)
    if until is not None:
        at_until = await _first_seq_at(nc, filter_subject, until)
        if at_until is not None:
            hi = min(hi, at_until - 1)
    lo_bound = 1
    if since is not None:
        at_since = await _first_seq_at(nc, filter_subject, since)
        if at_since is None:
            return [], False
        lo_bound = at_since
    found: list[Logged] = []
    while hi >= lo_bound and len(found) < want:
        lo = max(lo_bound, hi - window + 1)
        chunk: list[Logged] = []
        after = lo - 1
        while True:
            request = {"seq": after + 1, "next_by_subj": filter_subject, "batch": 256}
            msgs, pending = await eventlog.direct_get_batch(nc, stream, request, what=filter_subject)
            past = False
            for msg in msgs:
                seq = int((msg.headers or {}).get(H.SEQUENCE, "0"))
                if seq > hi:
                    past = True
                    break
                chunk.append(Logged(seq, RunLogEntry.model_validate_json(msg.data)))
                after = seq
            if past or not msgs or pending == 0:
                break
        found.extend(reversed(chunk))
        hi = lo - 1
        window *= 4
    more = hi >= lo_bound or len(found) > want
    return found[:want], more


async def _last_seq(nc: NATS, filter_subject: str) -> int | None:
    """Sequence of the newest entry on ``filter_subject``, or None."""
    last = await eventlog.last_event(nc, filter_subject, stream=subjects.RUN_LOG_STREAM)
    return last.seq if last is not None else None


async def _first_seq_at(nc: NATS, filter_subject: str, at: datetime) -> int | None:
    """Sequence of the first entry on ``filter_subject`` stored at or after ``at``, or None."""
    request = {"start_time": at.isoformat().replace("+00:00", "Z"), "next_by_subj": filter_subject, "batch": 1}
    msgs, _ = await eventlog.direct_get_batch(nc, subjects.RUN_LOG_STREAM, request, what=filter_subject)
    if not msgs:
        return None
    return int((msgs[0].headers or {}).get(H.SEQUENCE, "0"))


async def latest_events(nc: NATS, tenant: str, runs: list[tuple[str, str]]) -> dict[str, eventlog.StoredEvent]:
    """The latest event of each ``(agent, run_id)`` of ``tenant``, by run id, in one request."""
    if not runs:
        return {}
    subjects_list = [subjects.run_events(tenant, agent, run_id) for agent, run_id in runs]
    msgs, _ = await eventlog.direct_get_batch(
        nc, subjects.RUN_EVENTS_STREAM, {"multi_last": subjects_list, "batch": len(subjects_list)},
        what=f"latest events of {len(runs)} runs")
    out: dict[str, eventlog.StoredEvent] = {}
    for msg in msgs:
        event = eventlog.StoredEvent.from_message(msg.subject, msg.headers, msg.data)
        out[subjects.parse_run_events(event.subject).run_id or ""] = event
    return out


STATUS_OF_EVENT: dict[str, str] = {
    E.RUN_COMPLETED: "completed", E.RUN_FAILED: "failed", E.RUN_CANCELLED: "cancelled",
    E.RUN_QUEUED: "queued", E.RUN_REQUEUED: "queued", E.TOOL_APPROVAL_REQUESTED: "awaiting_approval",
}
"""A run's status from its latest event; any other (non-deleted) event type means ``running``."""


def status_of(event: eventlog.StoredEvent | None) -> str:
    """The run's status from its latest event (None: no event yet, so ``queued``)."""
    if event is None:
        return "queued"
    return STATUS_OF_EVENT.get(event.type, "running")


def ended_kind(event_type: str) -> RunLogKind:
    """The log kind of a terminal event type."""
    kinds: dict[str, RunLogKind] = {E.RUN_COMPLETED: "completed", E.RUN_FAILED: "failed",
                                    E.RUN_CANCELLED: "cancelled"}
    return kinds[event_type]


def summary(entry: RunLogEntry, latest: eventlog.StoredEvent | None) -> dict[str, object]:
    """A run as listings show it: the log entry, with status and outcome from its latest event."""
    out: dict[str, object] = {
        "run_id": entry.run_id, "agent": entry.agent, "status": status_of(latest),
        "message_id": entry.message_id, "conversation_id": entry.conversation_id,
        "parent_run_id": entry.parent_run_id, "message": entry.message,
        "submitted_at": entry.submitted_at.isoformat().replace("+00:00", "Z"),
        "ended_at": None, "duration_ms": None, "usage": None, "error": None,
        "events_url": f"/api/runs/{entry.run_id}/events", "last_event_id": latest.seq if latest else None,
    }
    if latest is not None and E.is_terminal(latest.type):
        body = orjson.loads(latest.data)
        data = body.get("data") or {}
        out.update(ended_at=body.get("ts"), duration_ms=data.get("duration_ms"), usage=data.get("usage"),
                   error=data.get("error"))
    return out
