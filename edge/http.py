"""Request helpers shared by the edge's APIs: who is calling, which agent, the JSON body, the
``Last-Event-ID``, responses (JSON and SSE), opening a run's event feed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import nats.errors
import nats.js.errors
import orjson
from pydantic import BaseModel, ValidationError
from quart import Response, current_app, g, has_request_context, request

from agentstream import conversations, eventlog, logs, sse, tracing
from agentstream.runs import SubmitError, Submitted, read_index, submit
from agentstream.runstate import RunRecord, fold
from edge import metrics
from edge.auth import Tenant
from edge.errors import ApiError, from_validation
from edge.feed import EventFeed
from edge.state import EdgeState
from edge.streamcaps import Lease
from schemas import events as E
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.runs import RunControl, RunIndexEntry, RunRequest

log = logging.getLogger(__name__)

MAX_EVENT_ID = 2**63 - 1


def state() -> EdgeState:
    """This edge's :class:`EdgeState`."""
    st: EdgeState = current_app.extensions["agentstream"]
    return st


def tenant() -> Tenant:
    """The caller, as the gate found it (edge.gate: ``Authorization: Bearer``, or ``?api_key=`` on
    the SSE routes). ApiError 401."""
    caller: Tenant | None = g.get("caller")
    if caller is None:
        caller = state().auth.tenant_for(request.headers.get("Authorization"))
    return caller


def agent_for(t: Tenant, name: str, *, field: str = "name") -> AgentDefinition:
    """The agent ``name`` of ``t``'s effective catalog (agentstream.agentstore) if ``t`` may use
    it. ApiError 400 (unsafe name), 404 (unknown, or not on the tenant's allow-list), 409
    ``agent_invalid`` (the tenant's agent cannot run: its stored definition is not valid here).

    For a ``POST`` (every route that submits a run resolves its agent here) a paused agent is a
    409 ``agent_paused``, before anything is claimed or stored.
    """
    if not subjects.is_token(name):
        raise ApiError(400, "invalid_name", f"{name[:80]!r} is not a valid agent name (1-64 of A-Z a-z 0-9 _ -)", field)
    st = state()
    catalog = st.agents.catalog(t.name)
    agent = catalog.get(name)
    if agent is None or not t.may_use(name):
        if name in catalog.invalid and t.may_use(name):
            raise ApiError(409, "agent_invalid", f"agent {name!r} cannot run: {catalog.invalid[name][0]}", field)
        raise ApiError(404, "not_found", f"no agent named {name!r}", field)
    if request.method == "POST" and st.agents.paused(t.name, name) is not None:
        raise ApiError(409, "agent_paused", f"agent {name!r} is paused: runs are not accepted until it is resumed "
                       f"(POST /api/agents/{name}/resume)", field)
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
        raise ApiError(
            400, "invalid_request", f"{name} must be a non-negative integer event id, not {raw[:40]!r}", name
        )
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
    """All stored events of one of ``t``'s runs (empty for a run still waiting in its tenant's
    queue). ApiError 400 / 404 (neither events nor an index entry)."""
    check_run_id(run_id)
    events = await eventlog.read_list(state().bus(), subjects.run_events_of_run(t.name, run_id))
    if events and E.is_deleted(events[-1].type):
        raise ApiError(404, "not_found", f"no run {run_id!r} (it was deleted)", "run_id")
    if not events and await run_index_entry(t, run_id) is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
    return events


async def run_record(t: Tenant, run_id: str) -> RunRecord:
    """The run's record: folded from its events, or (a run still waiting in its tenant's queue,
    no event yet) from its index entry. ApiError 400 / 404."""
    record = fold(await run_events(t, run_id))
    if record is not None:
        return record
    entry = await run_index_entry(t, run_id)
    if entry is None:
        raise ApiError(404, "not_found", f"no run {run_id!r}", "run_id")
    return RunRecord(run_id=run_id, tenant=t.name, agent=entry.agent, message_id=entry.message_id,
                     message=entry.message, conversation_id=entry.conversation_id,
                     created_at=entry.submitted_at.isoformat().replace("+00:00", "Z"),
                     schedule=entry.schedule.model_dump(mode="json") if entry.schedule is not None else None)


async def run_index_entry(t: Tenant, run_id: str) -> RunIndexEntry | None:
    """The run's RUN_INDEX entry (written at submit), or None. ApiError 503 if unreadable."""
    st = state()
    if st.run_index is None:
        return None
    try:
        return await read_index(st.run_index, t.name, run_id)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        raise ApiError(503, "unavailable", f"the run index could not be read ({type(err).__name__}); retry",
                       retry_after=1) from None


async def submit_run(t: Tenant, agent: str, req: RunRequest, *, caller_headers: tracing.Headers | None = None
                     ) -> Submitted:
    """Store a run request of ``t`` (after its ``max_queued_runs`` check). ApiError 429 when the
    tenant's queue is full, 503 when the request cannot be stored.

    With tracing on, this is the run's ``submit`` span, a child of the ``traceparent`` in
    ``caller_headers`` (default: the HTTP request's headers) if there is one; its context is
    stored with the request (agentstream.runs.submit). The outcome is kept in ``g.submitted`` for
    the submit metrics (edge.metrics)."""
    st = state()
    nc = st.bus()
    logs.bind(run_id=req.run_id, tenant=t.name, agent=agent)
    attributes: dict[str, tracing.AttributeValue] = {
        "gen_ai.agent.name": agent, "agentstream.run_id": req.run_id, "agentstream.tenant": t.name,
    }
    if has_request_context():  # an MCP tool call runs outside the HTTP request's context
        attributes.update({"http.request.method": request.method, "url.path": request.path})
        if caller_headers is None:
            caller_headers = request.headers
    with tracing.span(f"submit {agent}", kind=tracing.SpanKind.SERVER, parent=caller_headers,
                      attributes=attributes) as span:
        await check_queue(st, t)
        if req.conversation_id and req.parent_run_id is None:
            await take_turn(st, t, agent, req)
        try:
            submitted = await submit(nc, t.name, agent, req, index=st.run_index, log=True)
        except SubmitError as err:
            log.error("submit failed: %s", err)
            raise ApiError(503, "unavailable", "the run could not be stored; retry with the same message_id",
                           retry_after=1) from None
        if span is not None:
            span.set_attribute("agentstream.duplicate", submitted.duplicate)
        log.debug("run stored%s", " (a duplicate)" if submitted.duplicate else "")
    g.submitted = submitted
    return submitted


async def take_turn(st: EdgeState, t: Tenant, agent: str, req: RunRequest) -> None:
    """Make the run the next turn of its conversation, applying the agent's ``on_busy`` while the
    previous turn still runs: ``enqueue`` (it waits for it), ``reject`` (409 ``conversation_busy``),
    ``interrupt`` (the previous run is cancelled first). ApiError 409 / 503."""
    assert req.conversation_id is not None
    kv = st.conversations
    if kv is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    definition = st.agents.get(t.name, agent)
    on_busy = definition.on_busy if definition is not None else "enqueue"
    try:
        current, _ = await conversations.load(kv, t.name, req.conversation_id)
        earlier = current.before(req.run_id) if current else []
        busy = earlier[-1] if earlier else None
        if busy is not None and on_busy != "enqueue" and busy.run_id != req.run_id:
            last = await eventlog.last_event(st.bus(), subjects.run_events(t.name, busy.agent, busy.run_id))
            if last is not None:
                running = not (E.is_terminal(last.type) or E.is_deleted(last.type))
            else:  # no event yet: still queued if it was submitted at all
                index = st.run_index
                running = index is not None and await read_index(index, t.name, busy.run_id) is not None
            if running and on_busy == "reject":
                raise ApiError(409, "conversation_busy", f"conversation {req.conversation_id[:80]!r} is still "
                               f"answering run {busy.run_id}; retry when it has ended", "conversation_id",
                               run_id=busy.run_id)
            if running:
                await request_cancel(st, t.name, busy.run_id, "interrupted by a new message")
        await conversations.append(kv, t.name, req.conversation_id, conversations.Turn(
            run_id=req.run_id, agent=agent, message_id=req.message_id, submitted_at=req.submitted_at))
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, eventlog.EventLogError, RuntimeError) as err:
        raise ApiError(503, "unavailable", f"the conversation could not be updated ({type(err).__name__}); retry",
                       retry_after=1) from None


async def check_queue(st: EdgeState, t: Tenant) -> None:
    """ApiError 429 when ``t`` has ``max_queued_runs`` runs waiting (stored in AGENT_RUNS and not
    handed to a runner). Counts from the stream, so every edge sees the same queue; two edges
    admitting the last place at once may both admit it."""
    limit = t.policy.max_queued_runs
    if limit is None:
        return
    js = st.bus().jetstream()
    consumer = subjects.tenant_consumer(t.name)
    consumer_read = asyncio.ensure_future(js.consumer_info(subjects.AGENT_RUNS_STREAM, consumer))
    try:
        info = await js.stream_info(subjects.AGENT_RUNS_STREAM, subjects_filter=subjects.run_requests_of_tenant(t.name))
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
        consumer_read.cancel()  # the count is a protection; failing to read it is not the caller's
        log.warning("queue of %s not counted: %s", t.name, err)
        return
    working = 0
    try:
        working = int((await consumer_read).num_ack_pending or 0)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
        pass  # no consumer yet (no runner has seen the tenant): nothing is being worked on
    stored = sum(info.state.subjects.values()) if info.state.subjects else 0
    waiting = stored - working
    if waiting >= limit:
        raise ApiError(429, "queue_full", f"tenant {t.name} has {waiting} runs waiting, its max_queued_runs is "
                       f"{limit}; retry when some have started", None, retry_after=5, code="rate_limit_exceeded")


async def open_stream(t: Tenant) -> Lease | None:
    """Count one more open SSE stream of the caller's key against its tenant's ``max_streams``
    (across edges). Returns the lease the stream holds until it ends (None without a key: open
    mode). ApiError 429 over the cap."""
    st = state()
    if t.key_id is None or st.streams is None:
        return None
    lease = await st.streams.admit(t.key_id, t.policy.max_streams)
    if lease is None:
        raise ApiError(429, "too_many_streams", f"this API key has {t.policy.max_streams} streams open, its "
                       "tenant's max_streams; close one first", None, retry_after=5, code="rate_limit_exceeded")
    return lease


def run_feed(tenant_name: str, run_id: str, filter_subject: str, after: int = 0, *,
             lease: Lease | None = None, sse: bool = True) -> EventFeed:
    """A feed of one run's events after ``after`` (stored, then live; ends after the terminal
    event, or when ``lease``'s key is revoked). ``sse``: its events go to an SSE stream (counted
    in edge.metrics)."""
    st = state()
    feed = EventFeed(
        st.bus(), st.live(), scope="run", tenant=tenant_name, name=run_id, filter_subject=filter_subject,
        after=after, heartbeat=st.settings.sse_heartbeat, buffer=st.settings.edge_watch_buffer,
        on_sent=metrics.SSE_EVENTS_SENT.inc if sse else None,
    )
    if lease is not None:
        lease.on_revoke.append(feed.close)
    return feed


def agent_feed(tenant_name: str, agent: str, after: int, *, lease: Lease | None = None) -> EventFeed:
    """A feed of every run of one agent after ``after`` (ends only when ``lease``'s key is revoked)."""
    st = state()
    feed = EventFeed(
        st.bus(), st.live(), scope="agent", tenant=tenant_name, name=agent,
        filter_subject=subjects.run_events_of_agent(tenant_name, agent),
        after=after, heartbeat=st.settings.sse_heartbeat, buffer=st.settings.edge_watch_buffer,
        on_sent=metrics.SSE_EVENTS_SENT.inc,
    )
    if lease is not None:
        lease.on_revoke.append(feed.close)
    return feed


async def request_cancel(
    st: EdgeState, tenant_name: str, run_id: str, reason: str, *, action: Literal["cancel", "delete"] = "cancel"
) -> None:
    """Store a cancel (or delete) request for the run (RUN_CONTROL); the runner holding it, or the
    next one to take it, obeys. ApiError 503 if it cannot be stored. (``st`` is passed in so this
    also works outside a request, e.g. from a stream being torn down.)"""
    control = RunControl(action=action, reason=reason)
    try:
        await st.bus().jetstream().publish(
            subjects.control(tenant_name, run_id), control.model_dump_json().encode(), timeout=5.0
        )
    except ApiError:
        raise
    except Exception as err:  # NATS down or slow
        raise ApiError(
            503, "unavailable", f"the cancel request could not be stored ({type(err).__name__}); retry"
        ) from None


_background: set[asyncio.Task[None]] = set()


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


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None, *,
                 lease: Lease | None = None) -> Response:
    """A streaming SSE response with no time limit (Quart's default would cut it after 60 s);
    ``lease`` (edge.http.open_stream) is released when the stream ends."""
    if lease is not None:
        body = _releasing(body, lease)
    response = Response(metrics.counted_stream(body), headers={**sse.HEADERS, **(headers or {})})
    response.timeout = None
    return response


async def _releasing(body: AsyncIterator[bytes], lease: Lease) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        lease.release()
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()
