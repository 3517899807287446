"""``POST /api/process``: llm-sse's endpoint, done on the bus (an ensemble run: README, "Ensembles").

Body: ``{"message", "message_id", "conversation_id"?, "agent"?}``; ``agent`` picks the agent
(an ensemble, typically), default ``PROCESS_DEFAULT_AGENT``. The same ``message_id`` names the same
run, so a client that retries gets the run it started, not a second one. The answer streams as
llm-sse frames (edge.dialects.llmsse) with ``: ping`` heartbeats and no time limit; a client that
disconnects cancels the run, and with it the member runs.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response

from edge.dialects.llmsse import ProcessStream
from edge.errors import ApiError
from edge.http import agent_for, json_body, open_stream, run_feed, sse_response, state, submit_run, tenant
from edge.idempotency import claim, request_fingerprint
from edge.streaming import stream_run
from edge.webhooks import check_target, parse_target
from schemas import subjects
from schemas.common import MessageId
from schemas.events import RunEvent
from schemas.runs import PENDING_RUN_ID, RunRequest

log = logging.getLogger(__name__)

bp = Blueprint("llmsse", __name__)


class ProcessBody(BaseModel):
    """llm-sse's request (unknown fields are accepted, as llm-sse does), plus ``agent`` and a
    ``webhook`` (a URL, or ``{url, events}``: README, Webhooks)."""

    model_config = ConfigDict(extra="allow")
    message: str = Field(min_length=1, max_length=200_000, examples=["Who are you?"])
    message_id: MessageId
    conversation_id: str | None = Field(default=None, max_length=200)
    agent: str | None = Field(default=None, description="The agent to ask (default PROCESS_DEFAULT_AGENT).",
                              examples=["trio"])
    webhook: str | dict[str, Any] | None = None


@bp.post("/api/process")
async def process() -> Response:
    t = tenant()
    body: ProcessBody = await json_body(ProcessBody, status=400)
    if not body.message.strip():
        raise ApiError(400, "invalid_request", "'message' must not be empty", "message")
    st = state()
    agent = agent_for(t, body.agent or st.settings.process_default_agent, field="agent")
    webhook = parse_target(body.webhook, "webhook")
    if webhook is not None:
        await check_target(st, webhook, "webhook")
    draft = RunRequest(run_id=PENDING_RUN_ID, message_id=body.message_id, message=body.message.strip(),
                       conversation_id=body.conversation_id, webhooks=[webhook] if webhook is not None else [])
    # llm-sse clients use message_id as a label: a different message under a used id is its own run.
    run_id, _ = await claim(st, t.name, agent.name, body.message_id, request_fingerprint(agent.name, draft),
                            on_reuse="new_run")
    request = draft.model_copy(update={"run_id": run_id})
    lease = await open_stream(t)
    try:
        await submit_run(t, agent.name, request)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    renderer = ProcessStream(body.message_id, body.conversation_id, agent=agent.name,
                             source=agent.combiner or agent.name, members=len(agent.members),
                             min_success=agent.min_success)
    feed = run_feed(t.name, run_id, subjects.run_events(t.name, agent.name, run_id), lease=lease)
    return sse_response(stream_run(st, t.name, run_id, feed, _Frames(renderer)), {"X-Run-Id": run_id}, lease=lease)


class _Frames:
    """llm-sse's ``/api/process`` frames as a RunRenderer (edge/streaming.py)."""

    def __init__(self, renderer: ProcessStream):
        self.renderer = renderer

    @property
    def done(self) -> bool:
        return self.renderer.done

    def start(self) -> bytes:
        return b""

    def render(self, event: RunEvent) -> bytes:
        return b"".join(self.renderer.render(event))

    def interrupted(self) -> bytes:
        return b""
