"""AG-UI: ``POST /ag-ui/{agent}`` runs one of the caller's agents for an AG-UI client.

Source: the AG-UI protocol (ag-ui.com, spec 1.0), as the ``ag-ui-protocol`` package models it.
The body is a ``RunAgentInput`` (``threadId``, ``runId``, ``messages``, ``tools``, ``state``,
``context``, ``forwardedProps``), validated with ``ag_ui.core.RunAgentInput`` (422 naming the
field). ``threadId`` is the run's ``conversation_id``; ``runId`` is its ``message_id``, so the
same ``runId`` posted again names the same run (it is not run twice). The conversation in
``messages`` follows the agent's own system prompt (``context`` as one system message before
it); ``tools`` are frontend tools, executed by the application. ``state`` and
``forwardedProps`` are accepted and not used: agentstream's agents keep no shared state.

The answer is AG-UI events as SSE (edge.dialects.agui), with ``: ping`` comments in silences;
the run id is in ``X-Run-Id``. A client that disconnects cancels the run.

Tool approval uses AG-UI's interrupts: a call of the agent's own tools that waits for a person's
approval ends the AG-UI run with an interrupt outcome (the agentstream run waits, holding no
runner). A new AG-UI run whose ``resume`` entries answer those interrupts (``status:
"resolved"`` with ``payload: {approved: bool, reason?}``, or ``"cancelled"``: a rejection)
records the decisions (as ``POST /api/runs/{run_id}/approve`` / ``reject`` would) and streams the
rest of the same agentstream run under the new ``runId``; its ``messages`` are not used (the run
goes on from its own events).
"""

from __future__ import annotations

import logging
from typing import Any

from ag_ui.core import BaseEvent, RunAgentInput
from ag_ui.encoder import EventEncoder
from pydantic import ValidationError
from quart import Blueprint, Response

from agentstream.runstate import fold
from edge.api_approvals import decide_call
from edge.auth import Tenant
from edge.clienttools import check_client_tools
from edge.dialects.agui import AguiStream, chat_messages, frontend_tools, parse_interrupt_id
from edge.dialects.responses import split_last_user
from edge.errors import ApiError
from edge.http import (
    agent_for,
    json_object,
    open_stream,
    run_events,
    run_feed,
    sse_response,
    state,
    submit_run,
    tenant,
)
from edge.streaming import stream_run
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.events import Decision, RunEvent
from schemas.runs import RunRequest, run_id_for

log = logging.getLogger(__name__)

bp = Blueprint("agui", __name__)

MAX_ID_CHARS = 200
"""Longest ``threadId`` / ``runId`` (they become the run's conversation and message ids)."""


async def _input() -> RunAgentInput:
    doc = await json_object()
    try:
        inp = RunAgentInput.model_validate(doc)
    except ValidationError as err:
        raise _invalid(err) from None
    for name, value in (("threadId", inp.thread_id), ("runId", inp.run_id)):
        if not value.strip() or len(value) > MAX_ID_CHARS:
            raise ApiError(422, "invalid_request", f"{name} must be 1 to {MAX_ID_CHARS} characters", name)
    return inp


_ROLES = frozenset({"developer", "system", "assistant", "user", "tool", "activity", "reasoning"})


def _invalid(err: ValidationError) -> ApiError:
    """422 naming the field as the client wrote it: ``messages.0.content``, not pydantic's
    ``messages.0.user.content`` (the union's tag), and ``messages.0.role`` for a wrong role."""
    first = err.errors()[0]
    loc = [p for i, p in enumerate(first["loc"])
           if not (i > 0 and isinstance(first["loc"][i - 1], int) and p in _ROLES)]
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append(str((first.get("ctx") or {}).get("discriminator", "type")).strip("'"))
    field = ".".join(str(p) for p in loc)
    if first["type"] == "missing":
        return ApiError(422, "invalid_request", f"{field!r} is required", field)
    return ApiError(422, "invalid_request", f"{field}: {first['msg']}", field)


@bp.post("/ag-ui/<name>")
async def run_agent(name: str) -> Response:
    """``POST /ag-ui/{agent}``: ``RunAgentInput`` in, AG-UI events out (SSE)."""
    t = tenant()
    agent = agent_for(t, name)
    inp = await _input()
    if inp.resume:
        return await _resume(t, agent, inp)
    tools = frontend_tools(inp)
    check_client_tools(tools, agent, lambda i: f"tools.{i}.name", status=422)
    message, history = split_last_user(chat_messages(inp))
    if message is None and not history:
        raise ApiError(422, "invalid_request", "messages must hold at least one message to answer", "messages")
    run_id = run_id_for(t.name, agent.name, inp.run_id)
    request = RunRequest(run_id=run_id, message_id=inp.run_id, message=message, history=history, tools=tools,
                         conversation_id=inp.thread_id)
    lease = await open_stream(t)
    try:
        await submit_run(t, agent.name, request)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    view = AguiStream(inp.thread_id, inp.run_id, run_id)
    feed = run_feed(t.name, run_id, subjects.run_events(t.name, agent.name, run_id), lease=lease)
    headers = {"Content-Type": EventEncoder().get_content_type(), "X-Run-Id": run_id}
    return sse_response(stream_run(state(), t.name, run_id, feed, _Frames(view)), headers, lease=lease)


def _answers(inp: RunAgentInput) -> tuple[str, list[tuple[str, Decision, str | None, str]]]:
    """The run the ``resume`` entries answer, and per entry (tool call id, decision, reason, field).
    ApiError 422 naming the entry."""
    answers: list[tuple[str, Decision, str | None, str]] = []
    runs: set[str] = set()
    for i, entry in enumerate(inp.resume or []):
        field = f"resume.{i}"
        parsed = parse_interrupt_id(entry.interrupt_id)
        if parsed is None or not subjects.is_token(parsed[0]):
            raise ApiError(422, "invalid_request", f"{entry.interrupt_id[:80]!r} is not an interrupt of this server",
                           f"{field}.interruptId")
        run, call_id = parsed
        runs.add(run)
        payload: Any = entry.payload
        if entry.status == "cancelled":
            answers.append((call_id, "rejected", "the interrupt was cancelled", field))
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("approved"), bool):
            raise ApiError(422, "invalid_request", "a resolved approval's payload is {approved: true|false, reason?}",
                           f"{field}.payload.approved")
        reason = payload.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise ApiError(422, "invalid_request", "reason must be text of at most 1000 characters",
                           f"{field}.payload.reason")
        answers.append((call_id, "approved" if payload["approved"] else "rejected", reason, field))
    if len(runs) != 1:
        raise ApiError(422, "invalid_request", "resume answers the interrupts of one run", "resume")
    return runs.pop(), answers


async def _resume(t: Tenant, agent: AgentDefinition, inp: RunAgentInput) -> Response:
    """Answer the interrupts of a run waiting for approvals, and stream the rest of that run."""
    run_id, answers = _answers(inp)
    try:
        events = await run_events(t, run_id)
    except ApiError as err:
        if err.field == "run_id":
            err.field = "resume.0.interruptId"
        raise
    record = fold(events)
    if record is None or record.agent != agent.name:
        raise ApiError(404, "not_found", f"no run {run_id!r} of agent {agent.name!r}", "resume.0.interruptId")
    after = events[-1].seq  # read before deciding: the rest of the run comes after it
    for call_id, decision, reason, field in answers:
        try:
            await decide_call(t, run_id, call_id, decision, reason)
        except ApiError as err:
            if err.field in ("tool_call_id", "run_id"):
                err.field = f"{field}.interruptId"
            raise
    lease = await open_stream(t)
    view = AguiStream(inp.thread_id, inp.run_id, run_id)
    feed = run_feed(t.name, run_id, events[-1].subject, after, lease=lease)
    headers = {"Content-Type": EventEncoder().get_content_type(), "X-Run-Id": run_id}
    return sse_response(stream_run(state(), t.name, run_id, feed, _Frames(view)), headers, lease=lease)


class _Frames:
    """An AG-UI run as a RunRenderer (edge/streaming.py); a RUN_ERROR if this edge stops first
    (an AG-UI run cannot be resumed elsewhere)."""

    def __init__(self, view: AguiStream):
        self.view = view
        self.encoder = EventEncoder()

    @property
    def done(self) -> bool:
        return self.view.done

    def _encode(self, events: list[BaseEvent]) -> bytes:
        return "".join(self.encoder.encode(e) for e in events).encode()

    def start(self) -> bytes:
        return self._encode(self.view.start())

    def render(self, event: RunEvent) -> bytes:
        return self._encode(self.view.render(event))

    def interrupted(self) -> bytes:
        return self._encode(self.view.error("the server is restarting; run again", "server_restarting"))
