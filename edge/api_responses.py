"""The OpenAI Responses API: ``POST /v1/responses``, ``GET /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``.

Source: the OpenAI API reference, "Responses". ``model`` names one of the caller's agents, as on
``/v1/chat/completions``; the request becomes a run of it on the bus and the response is a view
of the run's events (edge.dialects.responses). The response id is ``resp_{run_id}``; the run id is
also in the ``X-Run-Id`` header. Another tenant's response is a 404.

- ``input`` (a string, or ``message`` / ``function_call`` / ``function_call_output`` items) and
  ``instructions`` come after the agent's own system prompt; function ``tools`` are client-side
  tools: a call of one is a ``function_call`` output item, and the client answers with a
  ``function_call_output`` item in its next request.
- ``previous_response_id`` continues a conversation: the earlier runs' turns are rebuilt from
  their stored events (``run.queued`` keeps each run's own input, unless ``store: false``).
  ``instructions`` are not carried over, as in OpenAI's API.
- ``background: true`` answers at once (``status: "queued"``); the response is then polled with
  ``GET``, streamed from any point with ``GET ...?stream=true&starting_after=N``, or cancelled.
  A background response goes on when its client disconnects; any other is cancelled then.
- A parameter this server does not support is refused (400, ``param`` naming it), as OpenAI
  refuses unknown parameters.
- A tool call of the agent's that waits for a person's approval is an ``mcp_approval_request``
  output item (edge.dialects.responses). A non-streaming request is answered as soon as the run
  waits (``status: "in_progress"``; the run is not cancelled). The decision is ``POST
  /api/runs/{run_id}/approve`` / ``reject``, or, as with OpenAI's MCP approvals, a request whose
  ``input`` holds only ``mcp_approval_response`` items (``approval_request_id``, ``approve``,
  ``reason``) with the waiting response as ``previous_response_id``: it is answered with that same
  response (same id: one response is one run) as it goes on, streamed (its events after those
  already sent) or whole (when it ends or waits again).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, Response, request

from agentstream import eventlog, sse
from edge.api_approvals import decide_call
from edge.api_openai import model_agent
from edge.auth import Tenant
from edge.clienttools import check_client_tools
from edge.dialects.responses import (
    ResponseView,
    echo_of,
    fold_turn,
    input_messages,
    response_id,
    run_id_of,
    split_last_user,
    tool_call_id_of,
)
from edge.errors import ApiError, from_validation
from edge.feed import HEARTBEAT
from edge.http import (
    cancel_later,
    int_arg,
    json_object,
    json_response,
    open_stream,
    request_cancel,
    run_feed,
    run_index_entry,
    sse_response,
    state,
    submit_run,
    tenant,
)
from edge.state import EdgeState
from edge.streaming import stream_run
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import ChatMessage, FunctionTool
from schemas.errors import ErrorKind
from schemas.events import RunEvent
from schemas.runs import RunRequest, new_run_id

log = logging.getLogger(__name__)

bp = Blueprint("responses", __name__, url_prefix="/v1")

MAX_TURNS = 200
"""Most earlier responses a ``previous_response_id`` chain may reach back through (each is a stored run read)."""
CANCEL_WAIT = 5.0
"""Seconds ``POST /v1/responses/{id}/cancel`` waits for the run to end before answering with its state."""

IGNORED = frozenset({"user", "safety_identifier", "prompt_cache_key", "service_tier", "truncation",
                     "stream_options", "include"})
"""Request fields accepted and shown back (or of no effect here): OpenAI's account-side options."""


class ResponsesBody(BaseModel):
    """The fields of ``POST /v1/responses`` agentstream reads; any other field is refused (400)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="One of the caller's agents.", examples=["programmer-helper"])
    input: str | list[Any] = Field(examples=["Who are you?"])
    instructions: str | None = None
    stream: bool | None = False
    background: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None


async def _body() -> ResponsesBody:
    doc = await json_object()
    for key in doc:
        if key not in ResponsesBody.model_fields:
            raise ApiError(400, "unsupported", f"the parameter {key!r} is not supported here", key,
                           code="unsupported_parameter")
    try:
        body = ResponsesBody.model_validate(doc)
    except ValidationError as err:
        raise from_validation(err, status=400) from None
    if body.include:
        raise ApiError(400, "unsupported", "include is not supported", "include", code="unsupported_parameter")
    if body.background and body.store is False:
        raise ApiError(400, "invalid_request", "a background response must be stored (store: true)", "background")
    return body


def _client_tools(body: ResponsesBody, agent: AgentDefinition) -> list[FunctionTool]:
    """The request's function tools in chat shape; ApiError 400 naming the tool otherwise."""
    if not body.tools or body.tool_choice == "none":
        return []
    tools = []
    for i, tool in enumerate(body.tools):
        if tool.get("type") != "function":
            raise ApiError(400, "unsupported", f"tools[{i}]: only function tools are supported, not "
                           f"{tool.get('type')!r}", f"tools.{i}.type", code="unsupported_parameter")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        tools.append(FunctionTool(function=function))
    check_client_tools(tools, agent, lambda i: f"tools.{i}.name")
    return tools


def _parameters(body: ResponsesBody, tools: list[FunctionTool]) -> dict[str, Any]:
    """The request's options as the agent's LLM parameters (chat completions' names)."""
    params: dict[str, Any] = {}
    if body.max_output_tokens is not None:
        params["max_tokens"] = body.max_output_tokens
    for key in ("temperature", "top_p"):
        if getattr(body, key) is not None:
            params[key] = getattr(body, key)
    if body.parallel_tool_calls is not None and tools:
        params["parallel_tool_calls"] = body.parallel_tool_calls
    if body.reasoning and body.reasoning.get("effort"):
        params["reasoning_effort"] = body.reasoning["effort"]
    fmt = (body.text or {}).get("format") or {"type": "text"}
    if fmt.get("type") == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        params["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}}
    elif fmt.get("type") != "text":
        raise ApiError(400, "invalid_request", "text.format.type must be text, json_object or json_schema",
                       "text.format.type")
    choice = body.tool_choice
    if choice in (None, "auto", "none"):
        return params
    names = {t.function.get("name") for t in tools}
    if choice == "required":
        if not tools:
            raise ApiError(400, "invalid_request", "tool_choice 'required' needs tools", "tool_choice")
        params["tool_choice"] = "required"
    elif isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") in names:
        params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise ApiError(400, "invalid_request", "tool_choice must be 'none', 'auto', 'required' or "
                       "{'type': 'function', 'name': <one of tools>}", "tool_choice")
    return params


async def _conversation(t: Tenant, previous: str) -> tuple[list[ChatMessage], str | None]:
    """The conversation up to and including response ``previous`` (rebuilt from the stored events
    of it and the responses it continues), and its conversation id. ApiError 404 / 400 naming
    ``previous_response_id``."""
    nc = state().bus()
    turns = []
    rid: str | None = previous
    while rid is not None:
        run_id = run_id_of(rid)
        events = await eventlog.read_list(nc, subjects.run_events_of_run(t.name, run_id)) if (
            run_id is not None and subjects.is_token(run_id)) else []
        if not events:
            if run_id is not None and subjects.is_token(run_id) and await run_index_entry(t, run_id) is not None:
                raise ApiError(400, "invalid_request", f"response {rid!r} has not finished yet",
                               "previous_response_id")
            raise ApiError(404, "not_found", f"no response {rid!r}", "previous_response_id",
                           code="previous_response_not_found")
        turn = fold_turn(eventlog.typed(events))
        if not turn.ended:
            raise ApiError(400, "invalid_request", f"response {rid!r} has not finished yet", "previous_response_id")
        if not turn.stored:
            raise ApiError(400, "invalid_request", f"response {rid!r} was not stored (store: false, or it was not "
                           "created through /v1/responses), so it cannot be continued", "previous_response_id")
        turns.append(turn)
        if len(turns) > MAX_TURNS:
            raise ApiError(400, "invalid_request", f"the conversation is longer than {MAX_TURNS} responses; send "
                           "its input yourself", "previous_response_id")
        rid = turn.previous_response_id
    messages = [ChatMessage.model_validate(m) for turn in reversed(turns) for m in turn.messages()]
    return messages, turns[0].conversation_id


@bp.post("/responses")
async def create_response() -> Response:
    """``POST /v1/responses``: streamed (typed SSE events), whole, or in the background."""
    t = tenant()
    body = await _body()
    agent = model_agent(t, body.model)
    if isinstance(body.input, list) and body.input and all(
            isinstance(i, dict) and i.get("type") == "mcp_approval_response" for i in body.input):
        return await _approval_responses(t, body)
    tools = _client_tools(body, agent)
    parameters = _parameters(body, tools)
    own = input_messages(body.input)
    before: list[ChatMessage] = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    conversation_id = None
    if body.previous_response_id:
        earlier, conversation_id = await _conversation(t, body.previous_response_id)
        before.extend(earlier)
    message, rest = split_last_user(own)
    if message is None and not rest:
        raise ApiError(400, "invalid_request", "input must not be empty", "input")
    run_id = new_run_id()
    resp_id = response_id(run_id)
    submitted = datetime.now(UTC)
    echo = {
        "api": "responses", "created_at": int(submitted.timestamp()), "model": body.model,
        "instructions": body.instructions, "tools": body.tools or [], "tool_choice": body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False, "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "previous_response_id": body.previous_response_id,
        "background": bool(body.background), "store": body.store is not False, "metadata": body.metadata or {},
        "text": body.text or {"format": {"type": "text"}}, "truncation": body.truncation or "disabled",
        "user": body.user,
    }
    request_ = RunRequest(
        run_id=run_id, message_id=run_id, message=message, history=[*before, *rest], tools=tools,
        parameters=parameters, conversation_id=conversation_id or resp_id, echo=echo,
        keep_history_from=len(before) if body.store is not False else None, submitted_at=submitted,
    )
    limit = state().settings.event_max_bytes // 2
    kept = [m.model_dump(mode="json") for m in request_.kept_history() or []]
    if len(orjson.dumps(kept)) + len((message or "").encode()) + len(orjson.dumps(echo)) > limit:
        raise ApiError(413, "too_large", f"the input is larger than {limit} bytes, more than a run keeps; send less",
                       "input")
    view = ResponseView(resp_id, echo)
    headers = {"X-Run-Id": run_id}
    if body.stream:
        lease = await open_stream(t)
        try:
            await submit_run(t, agent.name, request_)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        feed = run_feed(t.name, run_id, subjects.run_events(t.name, agent.name, run_id), lease=lease)
        body_ = stream_run(state(), t.name, run_id, feed, _Frames(view, -1), resumable=True,
                           cancel_on_exit=not body.background)
        return sse_response(body_, headers, lease=lease)
    await submit_run(t, agent.name, request_)
    if body.background:
        return json_response(view.snapshot(), headers=headers)
    await _follow(state(), t.name, agent.name, run_id, view, cancel_on_exit=True, until_waiting=True)
    if view.status == "failed":
        raise _failed(view, run_id)
    return json_response(view.snapshot(), headers=headers)


class _ApprovalResponse(BaseModel):
    """An ``mcp_approval_response`` input item (the OpenAI Responses API's shape)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1, max_length=250)
    approve: bool
    reason: str | None = Field(default=None, max_length=1000)
    id: str | None = None


async def _approval_responses(t: Tenant, body: ResponsesBody) -> Response:
    """Decide the approval requests of the response ``previous_response_id`` names, and answer
    with that response as it goes on (see the module docstring)."""
    if not body.previous_response_id:
        raise ApiError(400, "invalid_request", "mcp_approval_response items answer the response named by "
                       "previous_response_id", "previous_response_id")
    assert isinstance(body.input, list)
    decisions = []
    for i, item in enumerate(body.input):
        try:
            answer = _ApprovalResponse.model_validate(item)
        except ValidationError as err:
            raise from_validation(err, status=400, prefix=f"input.{i}") from None
        call_id = tool_call_id_of(answer.approval_request_id)
        if not call_id:
            raise ApiError(400, "invalid_request", f"input.{i}.approval_request_id must be the id of an "
                           "mcp_approval_request item (mcpr_...)", f"input.{i}.approval_request_id")
        decisions.append((call_id, answer))
    resp_id = body.previous_response_id
    run_id, agent, events, echo = await _stored(t, resp_id, field="previous_response_id")
    seen = _replayed(resp_id, events, echo)
    for call_id, answer in decisions:
        await decide_call(t, run_id, call_id, "approved" if answer.approve else "rejected", answer.reason)
    decided = frozenset(call_id for call_id, _ in decisions)
    headers = {"X-Run-Id": run_id}
    view = ResponseView(resp_id, echo)
    if body.stream:
        lease = await open_stream(t)
        feed = run_feed(t.name, run_id, subjects.run_events(t.name, agent, run_id), lease=lease)
        frames = stream_run(state(), t.name, run_id, feed, _Frames(view, seen.seq), resumable=True,
                            cancel_on_exit=False)
        return sse_response(frames, headers, lease=lease)
    await _follow(state(), t.name, agent, run_id, view, cancel_on_exit=False, until_waiting=True, answered=decided)
    if view.status == "failed":
        raise _failed(view, run_id)
    return json_response(view.snapshot(), headers=headers)


def _failed(view: ResponseView, run_id: str) -> ApiError:
    """The HTTP error a non-streaming request gets for a failed run (as ``/v1/chat/completions``)."""
    kind = view.error_type or "run_failed"
    message = (view.error or {}).get("message", "the run failed")
    upstream = ErrorKind.is_upstream(kind)
    return ApiError(502 if upstream else 500, kind, message, None, code=kind, run_id=run_id, final=not upstream)


async def _follow(st: EdgeState, tenant_name: str, agent: str, run_id: str, view: ResponseView, *,
                  cancel_on_exit: bool, within: float | None = None, until_waiting: bool = False,
                  answered: frozenset[str] = frozenset()) -> None:
    """Render the run's events into ``view`` until it ends (or ``within`` seconds pass; or, with
    ``until_waiting``, it waits for approvals other than the ``answered`` calls: it is left
    waiting, not cancelled); cancel the run if the caller goes away first and ``cancel_on_exit``."""
    view.start()
    feed = run_feed(tenant_name, run_id, subjects.run_events(tenant_name, agent, run_id), sse=False)
    try:
        async with asyncio.timeout(within):
            async for item in feed:
                if item is not HEARTBEAT and item.event is not None:
                    view.render(item.event)
                    if view.done:
                        return
                    if until_waiting and view.waiting and not view.awaiting <= answered:
                        cancel_on_exit = False
                        return
    except TimeoutError:
        return
    finally:
        if not view.done and cancel_on_exit:
            cancel_later(st, tenant_name, run_id, "client disconnected")


def _frame(event: dict[str, Any]) -> bytes:
    return sse.frame(orjson.dumps(event), event=event["type"])


class _Frames:
    """A Responses stream as a RunRenderer (edge/streaming.py): the view's events with
    ``sequence_number`` above ``after`` (a resumed stream's ``starting_after``)."""

    def __init__(self, view: ResponseView, after: int):
        self.view = view
        self.after = after

    @property
    def done(self) -> bool:
        return self.view.done

    def _frames(self, events: list[dict[str, Any]]) -> bytes:
        return b"".join(_frame(e) for e in events if e["sequence_number"] > self.after)

    def start(self) -> bytes:
        return self._frames(self.view.start())

    def render(self, event: RunEvent) -> bytes:
        return self._frames(self.view.render(event))

    def interrupted(self) -> bytes:
        return b""  # the client resumes from another edge


async def _stored(t: Tenant, resp_id: str, *, field: str = "response_id",
                  ) -> tuple[str, str, list[RunEvent], dict[str, Any]]:
    """(run id, agent, stored events (typed), echo) of one of ``t``'s responses; ApiError 404
    naming ``field``."""
    run_id = run_id_of(resp_id)
    if run_id is None or not subjects.is_token(run_id):
        raise ApiError(404, "not_found", f"no response {resp_id[:80]!r}", field)
    stored = await eventlog.read_list(state().bus(), subjects.run_events_of_run(t.name, run_id))
    events = eventlog.typed(stored)
    if events:
        agent = events[0].agent
        return run_id, agent, events, echo_of(events, None, agent)
    entry = await run_index_entry(t, run_id)  # no event yet: the run waits for a runner
    if entry is None:
        raise ApiError(404, "not_found", f"no response {resp_id!r}", field)
    return run_id, entry.agent, events, echo_of(events, entry.echo, entry.agent)


def _replayed(resp_id: str, events: list[RunEvent], echo: dict[str, Any]) -> ResponseView:
    view = ResponseView(resp_id, echo)
    view.start()
    for event in events:
        view.render(event)
    if not view.done:
        view.status = "in_progress" if view.started else "queued"
    return view


@bp.get("/responses/<resp_id>")
async def get_response(resp_id: str) -> Response:
    """``GET /v1/responses/{id}``: the response object; with ``?stream=true`` its events as SSE,
    after ``starting_after`` (a sequence number) if given."""
    t = tenant()
    run_id, agent, events, echo = await _stored(t, resp_id)
    headers = {"X-Run-Id": run_id}
    if request.args.get("stream", "").lower() != "true":
        return json_response(_replayed(resp_id, events, echo).snapshot(), headers=headers)
    after = int_arg("starting_after", -1, 0, 2**31)
    lease = await open_stream(t)
    feed = run_feed(t.name, run_id, subjects.run_events(t.name, agent, run_id), lease=lease)
    view = ResponseView(resp_id, echo)
    frames = stream_run(state(), t.name, run_id, feed, _Frames(view, after), resumable=True, cancel_on_exit=False)
    return sse_response(frames, headers, lease=lease)


@bp.post("/responses/<resp_id>/cancel")
async def cancel_response(resp_id: str) -> Response:
    """``POST /v1/responses/{id}/cancel``: stop the run; answers with the response once it has
    ended (``status: "cancelled"``), or as it stands after ``CANCEL_WAIT`` seconds. A response
    that already ended otherwise: 409."""
    t = tenant()
    run_id, agent, events, echo = await _stored(t, resp_id)
    view = _replayed(resp_id, events, echo)
    headers = {"X-Run-Id": run_id}
    if view.done:
        if view.status == "cancelled":
            return json_response(view.snapshot(), headers=headers)
        raise ApiError(409, "conflict", f"response {resp_id} already ended: {view.status}", "response_id",
                       code="response_not_cancellable")
    st = state()
    await request_cancel(st, t.name, run_id, "cancelled by request")
    view = ResponseView(resp_id, echo)
    await _follow(st, t.name, agent, run_id, view, cancel_on_exit=False, within=CANCEL_WAIT)
    if not view.done:
        view.status = "in_progress" if view.started else "queued"
    return json_response(view.snapshot(), headers=headers)
