"""Runs across a tenant's agents: the listing (``GET /api/runs``), deletion (``DELETE
/api/runs/{id}``) and usage (``GET /api/usage``), all answered from the run log
(agentstream/runlog.py), so their cost does not grow with the number of runs stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from quart import Blueprint, Response, request

from agentstream import eventlog, runlog
from edge.auth import Tenant
from edge.errors import ApiError
from edge.http import (
    check_run_id,
    int_arg,
    json_response,
    request_cancel,
    run_record,
    state,
    tenant,
)
from schemas import events as E
from schemas import subjects
from schemas.runs import RunLogEntry

log = logging.getLogger(__name__)

bp = Blueprint("runs", __name__)

STATUSES = ("queued", "running", "awaiting_approval", "completed", "failed", "cancelled")
SCAN_MAX = 5000
"""Most log entries one listing looks through for runs matching a filter the log is not ordered
by (``queued``/``running``/``awaiting_approval`` status, ``conversation_id``): past it the page
ends with a cursor."""
DELETE_WAIT = 10.0
"""Seconds DELETE /api/runs/{id} waits for an agent runner to replace the run's events."""


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an ISO 8601 time such as 2026-11-30T12:00:00Z",
                       name) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _agent_arg(t: Tenant) -> str | None:
    agent = request.args.get("agent")
    if agent is None:
        return None
    if not subjects.is_token(agent):
        raise ApiError(400, "invalid_name", f"{agent[:80]!r} is not a valid agent name", "agent")
    if not t.may_use(agent):
        raise ApiError(404, "not_found", f"no agent named {agent!r}", "agent")
    return agent


async def list_runs(
    t: Tenant, *, agent: str | None, status: str | None, conversation_id: str | None, since: datetime | None,
    until: datetime | None, limit: int, cursor: int | None,
) -> tuple[list[dict[str, Any]], int | None]:
    """The tenant's runs, newest first (by submission; by end for a completed/failed/cancelled
    filter), and the cursor of the next page (None: no more)."""
    nc = state().bus()
    kind = status if status in ("completed", "failed", "cancelled") else "submitted"
    filter_subject = subjects.run_log_filter(t.name, agent, kind)
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    before = cursor
    scanned = 0
    while len(found) < limit:
        page, more = await runlog.newest(nc, filter_subject, want=limit, before=before, since=since, until=until)
        if not page:
            return found, None
        latest = await runlog.latest_events(nc, t.name, [(e.entry.agent, e.entry.run_id) for e in page])
        for logged in page:
            before = logged.seq
            entry = logged.entry
            if entry.run_id in seen or not t.may_use(entry.agent):
                continue
            seen.add(entry.run_id)
            event = latest.get(entry.run_id)
            if event is not None and E.is_deleted(event.type):
                continue
            summary = runlog.summary(entry, event)
            if status and summary["status"] != status:
                continue
            if conversation_id and entry.conversation_id != conversation_id:
                continue
            found.append(summary)
            if len(found) == limit:
                return found, logged.seq if (more or logged is not page[-1]) else None
        scanned += len(page)
        if not more:
            return found, None
        if scanned >= SCAN_MAX:
            return found, before
    return found, before


@bp.get("/api/runs")
async def runs() -> Response:
    """``GET /api/runs?agent=&status=&conversation_id=&since=&until=&limit=&cursor=``: the caller's
    runs across its agents, newest first, ``{"runs": [...], "next_cursor"}``; 400 naming a bad
    parameter."""
    t = tenant()
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_request", f"status must be one of {', '.join(STATUSES)}", "status")
    conversation_id = request.args.get("conversation_id")
    if conversation_id is not None and len(conversation_id) > 200:
        raise ApiError(400, "invalid_request", "conversation_id must be at most 200 characters", "conversation_id")
    raw_cursor = request.args.get("cursor")
    if raw_cursor is not None and not raw_cursor.isdigit():
        raise ApiError(400, "invalid_request", "cursor must be the next_cursor of an earlier page", "cursor")
    found, next_cursor = await _read(list_runs(
        t, agent=_agent_arg(t), status=status, conversation_id=conversation_id, since=_time_arg("since"),
        until=_time_arg("until"), limit=int_arg("limit", 20, 1, 200), cursor=int(raw_cursor) if raw_cursor else None,
    ))
    return json_response({"runs": found, "next_cursor": str(next_cursor) if next_cursor else None})


async def _read(work: Any) -> Any:
    try:
        return await work
    except (eventlog.EventLogError, nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        raise ApiError(503, "unavailable", f"the run log could not be read ({type(err).__name__}); retry",
                       retry_after=1) from None


@bp.delete("/api/runs/<run_id>")
async def delete_run(run_id: str) -> Response:
    """``DELETE /api/runs/{run_id}``: 204 once the run's events are gone (replaced by a tombstone; the
    run is then 404 everywhere); 409 with its status while it runs; 404 if unknown."""
    t = tenant()
    check_run_id(run_id)
    record = await run_record(t, run_id)
    if not record.finished:
        raise ApiError(409, "conflict", f"run {run_id} is {record.status}: cancel it first", "run_id",
                       run_status=record.status)
    st = state()
    await request_cancel(st, t.name, run_id, "deleted on request", action="delete")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DELETE_WAIT
    while True:
        last = await eventlog.last_event(st.bus(), subjects.run_events_of_run(t.name, run_id))
        if last is None or E.is_deleted(last.type):
            break
        if loop.time() > deadline:
            raise ApiError(503, "unavailable", "no agent runner deleted the run in time; retry", retry_after=5)
        await asyncio.sleep(0.05)
    if st.run_index is not None:
        try:
            await st.run_index.delete(subjects.run_index_key(t.name, run_id))
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            log.warning("index entry of deleted run %s not removed: %s", run_id, err)
    return Response(b"", status=204)


@bp.get("/api/usage")
async def usage() -> Response:
    """``GET /api/usage?since=&until=&group_by=agent|day``: runs ended and tokens used by the caller's
    tenant in ``[since, until)`` (default: everything kept), grouped by agent or by UTC day."""
    t = tenant()
    group_by = request.args.get("group_by", "agent")
    if group_by not in ("agent", "day"):
        raise ApiError(400, "invalid_request", "group_by must be agent or day", "group_by")
    since, until = _time_arg("since"), _time_arg("until")
    groups: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total: dict[str, int] = defaultdict(int)
    for kind in ("completed", "failed", "cancelled"):
        async for entry in _entries(subjects.run_log_filter(t.name, None, kind), since, until):
            if not t.may_use(entry.agent):
                continue
            ended = entry.ended_at or entry.submitted_at
            key = entry.agent if group_by == "agent" else ended.astimezone(UTC).date().isoformat()
            for bucket in (groups[key], total):
                bucket["runs"] += 1
                bucket[kind] += 1
                for name, value in (entry.usage or {}).items():
                    bucket[name] += int(value)
    rows = [{group_by: key, **_counts(counts)} for key, counts in sorted(groups.items())]
    return json_response({
        "tenant": t.name, "group_by": group_by,
        "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
        "groups": rows, "total": _counts(total),
    })


def _counts(counts: dict[str, int]) -> dict[str, int]:
    names = ("runs", "completed", "failed", "cancelled", "prompt_tokens", "completion_tokens", "total_tokens")
    return {name: counts.get(name, 0) for name in names}


async def _entries(filter_subject: str, since: datetime | None, until: datetime | None) -> Any:
    """Every log entry on ``filter_subject`` stored in ``[since, until)``, oldest first."""
    nc = state().bus()
    request_doc: dict[str, Any] = {"next_by_subj": filter_subject, "batch": 256}
    if since is not None:
        request_doc["start_time"] = since.isoformat().replace("+00:00", "Z")
    else:
        request_doc["seq"] = 1
    while True:
        msgs, pending = await _read(eventlog.direct_get_batch(nc, subjects.RUN_LOG_STREAM, request_doc,
                                                              what=filter_subject))
        for msg in msgs:
            entry = RunLogEntry.model_validate_json(msg.data)
            if until is not None and (entry.ended_at or entry.submitted_at) >= until:
                return
            yield entry
        if not msgs or pending == 0:
            return
        last_seq = int((msgs[-1].headers or {}).get("Nats-Sequence", "0"))
        request_doc = {"seq": last_seq + 1, "next_by_subj": filter_subject, "batch": 256}
