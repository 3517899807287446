"""Request helpers shared by the edge's APIs: who is calling, which agent, the JSON body, the
``Last-Event-ID``, responses (JSON and SSE), opening a run's event feed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from quart import Response, current_app, request

from agentstream import eventlog, sse
from edge.auth import Tenant
from edge.errors import ApiError, from_validation
from edge.feed import EventFeed
from edge.guard import SSE_ENDPOINTS
from edge.state import EdgeState
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.runs import RunControl

log = logging.getLogger(__name__)

MAX_EVENT_ID = 2**63 - 1


def state() -> EdgeState:
    """This edge's :class:`EdgeState`."""
    return current_app.extensions["agentstream"]


def tenant() -> Tenant:
    """The caller's tenant, from ``Authorization: Bearer`` (or, on the SSE routes only,
    ``?api_key=``; see edge.guard). ApiError 401."""
    api_key = request.args.get("api_key") if request.endpoint in SSE_ENDPOINTS else None
    return state().auth.tenant_for(request.headers.get("Authorization"), api_key)


def agent_for(t: Tenant, name: str, *, field: str = "name") -> AgentDefinition:
    """The agent ``name`` if ``t`` may use it. ApiError 400 (unsafe name) or 404 (unknown)."""
    if not subjects.is_token(name):
        raise ApiError(400, "invalid_name", f"{name[:80]!r} is not a valid agent name (1-64 of A-Z a-z 0-9 _ -)", field)
    agent = state().catalog.get(name)
    if agent is None or not t.may_use(name):
        raise ApiError(404, "not_found", f"no agent named {name!r}", field)
    return agent


def check_run_id(run_id: str) -> None:
    """ApiError 400 unless ``run_id`` is subject-safe."""
    if not subjects.is_token(run_id):
        raise ApiError(400, "invalid_name", f"{run_id[:80]!r} is not a valid run id", "run_id")


async def json_object(*, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object. ApiError 400 (not a JSON object). (Its Content-Type,
    ``application/json``, is checked for every POST by edge.guard.)

    ``optional``: an empty body is ``{}``.
    """
    raw = await request.get_data()
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_json", "the request body must be a JSON object", "body")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {err}", "body") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object", "body")
    return doc


async def json_body(model: type[BaseModel], *, optional: bool = False, status: int = 422) -> Any:
    """The request body validated as ``model``; ApiError naming the field (``status``) if invalid."""
    doc = await json_object(optional=optional)
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        raise from_validation(err, status=status) from None


def last_event_id() -> int:
    """``Last-Event-ID`` (header, else ``?last_event_id=``) as an int, 0 if absent. ApiError 400."""
    raw = request.headers.get("Last-Event-ID")
    name = "Last-Event-ID"
    if raw is None:
        raw, name = request.args.get("last_event_id"), "last_event_id"
    if raw is None or raw.strip() == "":
        return 0
    raw = raw.strip()
    if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
        raise ApiError(400, "invalid_request", f"{name} must be a non-negative integer event id, not {raw[:40]!r}", name)
    return int(raw)


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    """A query parameter as an int in ``[lo, hi]``. ApiError 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ApiError(400, "invalid_request", f"{name} must be an integer from {lo} to {hi}", name)
    return int(raw)


async def run_events(t: Tenant, run_id: str) -> list[eventlog.StoredEvent]:
    """All stored events of one of ``t``'s runs. ApiError 400 / 404."""
    check_run_id(run_id)
    events = await eventlog.read_list(state().bus(), subjects.run_events_of_run(t.name, run_id))
    if not events:
        raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
    return events


def run_feed(tenant_name: str, run_id: str, filter_subject: str, after: int = 0) -> EventFeed:
    """A feed of one run's events after ``after`` (stored, then live; ends after the terminal event)."""
    st = state()
    return EventFeed(
        st.bus(), st.hub, scope="run", tenant=tenant_name, name=run_id, filter_subject=filter_subject,
        after=after, heartbeat=st.settings.sse_heartbeat, buffer=st.settings.edge_watch_buffer,
    )


def agent_feed(tenant_name: str, agent: str, after: int) -> EventFeed:
    """A feed of every run of one agent after ``after`` (never ends by itself)."""
    st = state()
    return EventFeed(
        st.bus(), st.hub, scope="agent", tenant=tenant_name, name=agent,
        filter_subject=subjects.run_events_of_agent(tenant_name, agent),
        after=after, heartbeat=st.settings.sse_heartbeat, buffer=st.settings.edge_watch_buffer,
    )


async def request_cancel(st: EdgeState, tenant_name: str, run_id: str, reason: str) -> None:
    """Store a cancel request for the run (RUN_CONTROL); the runner holding it, or the next one to
    take it, obeys. ApiError 503 if it cannot be stored. (``st`` is passed in so this also works
    outside a request, e.g. from a stream being torn down.)"""
    control = RunControl(reason=reason)
    try:
        await st.bus().jetstream().publish(
            subjects.control(tenant_name, run_id), control.model_dump_json().encode(), timeout=5.0
        )
    except ApiError:
        raise
    except Exception as err:  # NATS down or slow
        raise ApiError(503, "unavailable", f"the cancel request could not be stored ({type(err).__name__}); retry") from None


_background: set[asyncio.Task] = set()


def cancel_later(st: EdgeState, tenant_name: str, run_id: str, reason: str) -> None:
    """Cancel a run without waiting for it to be stored (from a stream being torn down because
    its client went away: nobody will read the answer)."""

    async def cancel() -> None:
        try:
            await request_cancel(st, tenant_name, run_id, reason)
        except Exception as err:  # logged; the run's budget still ends it
            log.warning("could not cancel run %s: %s", run_id, err)

    task = asyncio.create_task(cancel())
    _background.add(task)
    task.add_done_callback(_background.discard)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (compact, UTF-8)."""
    return Response(orjson.dumps(doc), status=status, content_type="application/json", headers=headers)


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> Response:
    """A streaming SSE response with no time limit (Quart's default would cut it after 60 s)."""
    response = Response(body, headers={**sse.HEADERS, **(headers or {})})
    response.timeout = None
    return response
