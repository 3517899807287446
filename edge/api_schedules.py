"""Schedules as resources: ``POST /api/schedules``, ``GET /api/schedules``, ``GET`` / ``DELETE
/api/schedules/{id}``, ``POST /api/schedules/{id}/pause`` and ``/resume``. Only the caller's
tenant's schedules are visible (their keys start with the tenant: schemas/subjects.py); edges fire
them (edge/scheduler.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from pydantic import ValidationError
from quart import Blueprint, Response, request

from agentstream import eventlog, ticks
from edge.auth import Tenant
from edge.errors import ApiError
from edge.http import json_body, json_object, json_response, state, tenant
from edge.scheduler import load, next_run
from edge.webhooks import check_target
from schemas import subjects
from schemas.schedules import Schedule, ScheduleBody, ScheduleError, checked, new_schedule_id

bp = Blueprint("schedules", __name__)

MAX_TRIES = 8
_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, eventlog.EventLogError)


def _kv() -> KeyValue:
    kv = state().schedules
    if kv is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    return kv


def _unavailable(err: Exception) -> ApiError:
    return ApiError(503, "unavailable", f"the schedules could not be read or written ({type(err).__name__}); retry",
                    retry_after=1)


def _key(t: Tenant, schedule_id: str) -> str:
    if not subjects.is_token(schedule_id):
        raise ApiError(404, "not_found", f"no schedule {schedule_id[:80]!r}", "schedule_id")
    return subjects.schedule_key(t.name, schedule_id)


async def _get(t: Tenant, schedule_id: str) -> tuple[str, Schedule, int]:
    key = _key(t, schedule_id)
    try:
        schedule, revision = await load(_kv(), key)
    except _NATS_ERRORS as err:
        raise _unavailable(err) from None
    if schedule is None:
        raise ApiError(404, "not_found", f"no schedule {schedule_id!r}", "schedule_id")
    return key, schedule, revision


def _view(schedule: Schedule) -> dict[str, Any]:
    return schedule.view(next_run(schedule))


@bp.post("/api/schedules")
async def create_schedule() -> Response:
    """``POST /api/schedules`` ``{agent, cron | every, timezone?, message, conversation_id?,
    catch_up?, webhook?}`` → ``201`` the schedule (with ``schedule_id`` and ``next_run_at``).
    ``422`` naming the field: a bad cron expression, an unknown time zone, ``every`` under one
    second, both or neither of ``cron`` and ``every``, an agent the caller may not use, a refused
    webhook address."""
    t = tenant()
    body: ScheduleBody = await json_body(ScheduleBody)
    if state().agents.catalog(t.name).get(body.agent) is None or not t.may_use(body.agent):
        raise ApiError(422, "invalid_request", f"no agent named {body.agent!r}", "agent")
    try:
        schedule = checked(body, new_schedule_id(), datetime.now(UTC))
    except ScheduleError as err:
        raise ApiError(422, "invalid_request", err.message, err.field) from None
    if schedule.webhook is not None:
        await check_target(state(), schedule.webhook, "webhook")
    try:
        await _kv().create(subjects.schedule_key(t.name, schedule.schedule_id), schedule.model_dump_json().encode())
    except _NATS_ERRORS as err:
        raise _unavailable(err) from None
    return json_response(_view(schedule), 201)


@bp.get("/api/schedules")
async def list_schedules() -> Response:
    """``GET /api/schedules[?agent=]``: ``{"schedules": [...]}``, the caller's tenant's schedules
    (its own and those its agents' files define), oldest first."""
    t = tenant()
    agent = request.args.get("agent")
    stream = f"KV_{subjects.SCHEDULES_BUCKET}"
    try:
        msgs, _ = await eventlog.direct_get_batch(
            state().bus(), stream, {"multi_last": [subjects.schedules_of_tenant(t.name)], "batch": 10_000},
            what="schedules")
    except _NATS_ERRORS as err:
        raise _unavailable(err) from None
    found = []
    for msg in msgs:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        try:
            schedule = Schedule.model_validate_json(msg.data)
        except ValidationError:
            continue
        if agent is None or schedule.agent == agent:
            found.append(schedule)
    found.sort(key=lambda s: (s.created_at, s.schedule_id))
    return json_response({"schedules": [_view(s) for s in found]})


@bp.get("/api/schedules/<schedule_id>")
async def get_schedule(schedule_id: str) -> Response:
    """``GET /api/schedules/{id}``: the schedule: definition, ``paused``, ``next_run_at``,
    ``last_tick``, ``fired``, ``skipped``, ``last_run_id``, ``last_error``. 404 if unknown (or
    another tenant's)."""
    _, schedule, _ = await _get(tenant(), schedule_id)
    return json_response(_view(schedule))


@bp.delete("/api/schedules/<schedule_id>")
async def delete_schedule(schedule_id: str) -> Response:
    """``DELETE /api/schedules/{id}``: ``204``; no tick fires after. ``409`` for a schedule an agent
    file's ``periodic_runs`` defines (pause it, or remove the field)."""
    t = tenant()
    key, schedule, _ = await _get(t, schedule_id)
    if schedule.source == "agent_file":
        raise ApiError(409, "conflict", f"schedule {schedule_id!r} is defined by agent {schedule.agent!r}'s "
                       "periodic_runs: pause it, or remove periodic_runs from its file", "schedule_id")
    try:
        await _kv().delete(key)
    except _NATS_ERRORS as err:
        raise _unavailable(err) from None
    return Response(b"", status=204)


async def _set_paused(schedule_id: str, paused: bool) -> Response:
    t = tenant()
    await json_object(optional=True)
    for _ in range(MAX_TRIES):
        key, schedule, revision = await _get(t, schedule_id)
        if schedule.paused == paused:
            return json_response(_view(schedule))
        update: dict[str, Any] = {"paused": paused}
        if not paused:
            # Ticks that fell due while paused were not missed: the next tick after now is the next run.
            latest = ticks.Timing.of(schedule).latest_at_or_before(int(time.time()))
            update["last_tick"] = max(schedule.last_tick, latest if latest is not None else schedule.last_tick)
        changed = schedule.model_copy(update=update)
        try:
            await _kv().update(key, changed.model_dump_json().encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # fired meanwhile: read again
        except _NATS_ERRORS as err:
            raise _unavailable(err) from None
        return json_response(_view(changed))
    raise ApiError(503, "unavailable", "the schedule keeps changing; retry", retry_after=1)


@bp.post("/api/schedules/<schedule_id>/pause")
async def pause_schedule(schedule_id: str) -> Response:
    """``POST /api/schedules/{id}/pause`` (body ``{}``): no tick fires until it is resumed."""
    return await _set_paused(schedule_id, True)


@bp.post("/api/schedules/<schedule_id>/resume")
async def resume_schedule(schedule_id: str) -> Response:
    """``POST /api/schedules/{id}/resume`` (body ``{}``): ticks fire again from the next one due
    after now (those that fell due while it was paused are not caught up)."""
    return await _set_paused(schedule_id, False)
