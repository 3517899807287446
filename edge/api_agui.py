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
"""

from __future__ import annotations

import logging
from typing import Any

from ag_ui.core import BaseEvent, RunAgentInput
from ag_ui.encoder import EventEncoder
from pydantic import ValidationError
from quart import Blueprint, Response

from edge.clienttools import check_client_tools
from edge.dialects.agui import AguiStream, chat_messages, frontend_tools
from edge.dialects.responses import split_last_user
from edge.errors import ApiError
from edge.http import (
    agent_for,
    json_object,
    open_stream,
    run_feed,
    sse_response,
    state,
    submit_run,
    tenant,
)
from edge.streaming import stream_run
from schemas import subjects
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
    if inp.resume:
        raise ApiError(422, "unsupported", "resume is not supported: agentstream's agents do not interrupt runs",
                       "resume")
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

    def render(self, envelope: dict[str, Any]) -> bytes:
        return self._encode(self.view.render(envelope))

    def interrupted(self) -> bytes:
        return self._encode(self.view.error("the server is restarting; run again", "server_restarting"))
