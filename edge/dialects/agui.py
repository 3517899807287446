"""Run events rendered as AG-UI events (the Agent User Interaction Protocol, ag-ui.com, spec 1.0),
and AG-UI's ``RunAgentInput`` read as a run request.

The events are the ``ag_ui.core`` models (the ``ag-ui-protocol`` package), encoded by its
``EventEncoder``. One run is, in order: ``RUN_STARTED``; per LLM step ``STEP_STARTED`` (name
``step N``), the step's text as one assistant message (``TEXT_MESSAGE_START`` /
``TEXT_MESSAGE_CONTENT`` / ``TEXT_MESSAGE_END``), each tool call the model made
(``TOOL_CALL_START`` / ``TOOL_CALL_ARGS`` / ``TOOL_CALL_END``, parented to the step's message)
and, for the agent's own tools, their results (``TOOL_CALL_RESULT``), then ``STEP_FINISHED``;
last ``RUN_FINISHED`` (with the run's token usage; a cancelled run's outcome is ``cancelled``)
or ``RUN_ERROR``. A call of a frontend tool (``tools`` in the input) ends the run after its
``TOOL_CALL_END``: the application runs the tool and starts the next run with its result.

A call of the agent's own tools that waits for a person's approval ends the AG-UI run with
AG-UI's interrupt outcome (``RUN_FINISHED``, ``outcome: {type: "interrupt", interrupts: [...]}``,
one interrupt per waiting call: ``id`` :func:`interrupt_id`, ``reason: "tool_approval"``,
``toolCallId``, ``expiresAt``, a ``responseSchema`` for ``{approved, reason}``). agentstream's
run itself goes on waiting; the application resumes it with a new AG-UI run whose ``resume``
entries answer the interrupts (edge/api_agui.py), and that run shows the rest of it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ag_ui.core import (
    AssistantMessage,
    BaseEvent,
    Context,
    DeveloperMessage,
    Interrupt,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SystemMessage,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)

from edge.dialects.replay import Replay
from edge.errors import ApiError
from schemas import events as E
from schemas.common import ChatMessage, FunctionTool

RESTART_DIVERGED = ("the agent's run was interrupted and restarted, and its new answer differs from what was "
                    "already sent; retry")

INTERRUPT_PREFIX = "approval:"
APPROVAL_REASON = "tool_approval"
APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 1000}},
    "required": ["approved"],
}
"""What a ``resume`` entry's ``payload`` answers an approval interrupt with."""


def interrupt_id(run_id: str, tool_call_id: str) -> str:
    """The id of the interrupt of a tool call waiting for approval: ``approval:{run_id}:{tool_call_id}``."""
    return f"{INTERRUPT_PREFIX}{run_id}:{tool_call_id}"


def parse_interrupt_id(value: str) -> tuple[str, str] | None:
    """``(run id, tool call id)`` of an :func:`interrupt_id`, or None."""
    if not value.startswith(INTERRUPT_PREFIX):
        return None
    run_id, sep, tool_call_id = value[len(INTERRUPT_PREFIX):].partition(":")
    return (run_id, tool_call_id) if sep and run_id and tool_call_id else None


def _content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """A message's AG-UI content (text, or text and image parts) as chat content. ApiError 422
    naming the part for other media."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content or []):
        kind = getattr(part, "type", None)
        if kind == "text":
            parts.append({"type": "text", "text": part.text})
        elif kind == "image" and getattr(part.source, "type", None) in ("url", "data"):
            source = part.source
            url = source.value if source.type == "url" else f"data:{source.mime_type};base64,{source.value}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise ApiError(422, "unsupported", f"{param}.{j}: {kind!r} parts are not supported (text and images only)",
                           f"{param}.{j}.type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def chat_messages(inp: RunAgentInput) -> list[ChatMessage]:
    """The input's ``context`` (one system message) and ``messages`` as chat messages; activity
    and reasoning messages are the UI's own and are left out. ApiError 422 naming the message."""
    out: list[ChatMessage] = []
    if inp.context:
        out.append(ChatMessage(role="system", content=context_prompt(inp.context)))
    for i, msg in enumerate(inp.messages):
        param = f"messages.{i}.content"
        if isinstance(msg, (SystemMessage, DeveloperMessage)):
            out.append(ChatMessage(role=msg.role, content=msg.content))
        elif isinstance(msg, UserMessage):
            out.append(ChatMessage(role="user", content=_content(msg.content, param)))
        elif isinstance(msg, AssistantMessage):
            calls = [{"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                                    "arguments": c.function.arguments}}
                     for c in msg.tool_calls or []]
            out.append(ChatMessage.model_validate({"role": "assistant", "content": msg.content,
                                                   **({"tool_calls": calls} if calls else {})}))
        elif isinstance(msg, ToolMessage):
            content = _content(msg.content, param)
            text = content if isinstance(content, str) else json.dumps(content)
            if msg.error:
                text = json.dumps({"error": {"type": "tool_error", "message": msg.error}, "content": text})
            out.append(ChatMessage(role="tool", tool_call_id=msg.tool_call_id, content=text))
    return out


def context_prompt(context: list[Context]) -> str:
    """AG-UI ``context`` entries as one system message."""
    lines = "\n".join(f"- {c.description}: {c.value}" for c in context)
    return f"Context from the application:\n{lines}"


def frontend_tools(inp: RunAgentInput) -> list[FunctionTool]:
    """The input's ``tools`` (the application's frontend tools) as client-side function tools."""
    return [FunctionTool(function={"name": t.name, "description": t.description,
                                   **({"parameters": t.parameters} if t.parameters is not None else {})})
            for t in inp.tools or []]


def tool_content(data: E.ToolResultData) -> str:
    """A ``tool.result`` as the text the model read (agent_runner.loop.tool_message_content)."""
    if data.ok:
        return json.dumps(data.output, ensure_ascii=False)
    return json.dumps({"error": data.error.model_dump() if data.error else {"type": "error", "message": "failed"}})


def _ms(ts: datetime) -> int:
    """An envelope's ``ts`` as AG-UI's ``timestamp``: Unix milliseconds."""
    return int(ts.timestamp() * 1000)


class AguiStream:
    """The AG-UI events of one run. ``thread_id`` and ``run_id`` are the client's (echoed in
    RUN_STARTED and RUN_FINISHED); ``run`` is agentstream's run id (message ids derive from it).
    ``done``: RUN_FINISHED or RUN_ERROR was produced."""

    def __init__(self, thread_id: str, run_id: str, run: str):
        self.thread_id = thread_id
        self.run_id = run_id
        self.run = run
        self.done = False
        self._waits: dict[str, E.ToolApprovalRequestedData] = {}  # the calls waiting, this wait
        self._step = 0  # the highest step started
        self._step_open = False
        self._message: str | None = None  # the open text message
        self._replay = Replay()

    def start(self) -> list[BaseEvent]:
        """RUN_STARTED."""
        return [RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)]

    def render(self, event: E.RunEvent) -> list[BaseEvent]:
        """The events for one run event; empty for those this view does not show."""
        if self.done:
            return []
        ts = _ms(event.ts)
        match event:
            case E.RunRetrying(data=data):
                self._replay.restart(data.resume_step)
            case E.MessageDelta(data=data):
                text = self._replay.text(data.step, data.text)
                if text is None:
                    return self._error(RESTART_DIVERGED, "run_restarted", ts)
                if not text:
                    return []
                out = self._enter(data.step, ts)
                if self._message is None:
                    self._message = f"{self.run}-{data.step}"
                    out.append(TextMessageStartEvent(message_id=self._message, role="assistant", timestamp=ts))
                out.append(TextMessageContentEvent(message_id=self._message, delta=text, timestamp=ts))
                return out
            case E.ToolCall(data=data):
                out = [*self._enter(data.step, ts), *self._end_message(ts)]
                call_id = data.tool_call_id
                out.append(ToolCallStartEvent(tool_call_id=call_id, tool_call_name=data.name,
                                              parent_message_id=f"{self.run}-{data.step}", timestamp=ts))
                if data.arguments:
                    out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=data.arguments, timestamp=ts))
                out.append(ToolCallEndEvent(tool_call_id=call_id, timestamp=ts))
                return out
            case E.ToolApprovalRequested(data=data):
                self._waits[data.tool_call_id] = data
                awaiting = data.awaiting or [data.tool_call_id]
                if not all(a in self._waits for a in awaiting):
                    return []
                waits = [self._waits[a] for a in awaiting]
                self._waits = {}
                out = self._end_step(ts)
                interrupts = [Interrupt(
                    id=interrupt_id(event.run_id, w.tool_call_id), reason=APPROVAL_REASON,
                    message=f"approve the call of {w.name} with {w.arguments or '{}'}",
                    tool_call_id=w.tool_call_id, response_schema=APPROVAL_SCHEMA,
                    expires_at=E.stored_time(w.expires_at),
                ) for w in waits]
                out.append(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, timestamp=ts,
                                            outcome=RunFinishedInterruptOutcome(interrupts=interrupts)))
                self.done = True
                return out
            case E.ToolResult(data=data):
                return [ToolCallResultEvent(message_id=f"{self.run}-{data.tool_call_id}",
                                            tool_call_id=data.tool_call_id, content=tool_content(data), role="tool",
                                            timestamp=ts)]
            case E.MessageCompleted():
                return self._end_step(ts)
            case E.RunCompleted(data=data) | E.RunCancelled(data=data):
                out = self._end_step(ts)
                u = data.usage
                usage = [TokenUsage(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                                    total_tokens=u.prompt_tokens + u.completion_tokens)]
                outcome = RunFinishedCancelledOutcome() if isinstance(event, E.RunCancelled) else None
                out.append(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, outcome=outcome,
                                            usage=usage, timestamp=ts))
                self.done = True
                return out
            case E.RunFailed(data=data):
                return self._error(data.error.message or data.reason or "the run failed",
                                   data.error.type or "run_failed", ts)
        return []

    def error(self, message: str, code: str) -> list[BaseEvent]:
        """RUN_ERROR now (the stream cannot go on, e.g. the edge is stopping)."""
        return self._error(message, code, None)

    def _error(self, message: str, code: str, ts: int | None) -> list[BaseEvent]:
        self.done = True
        return [*self._end_step(ts), RunErrorEvent(message=message, code=code, timestamp=ts)]

    def _enter(self, step: int, ts: int | None) -> list[BaseEvent]:
        """STEP_STARTED when ``step`` is a new one (after finishing the open one)."""
        if step <= self._step:
            return []
        out = self._end_step(ts)
        self._step, self._step_open = step, True
        out.append(StepStartedEvent(step_name=f"step {step}", timestamp=ts))
        return out

    def _end_message(self, ts: int | None) -> list[BaseEvent]:
        if self._message is None:
            return []
        message, self._message = self._message, None
        return [TextMessageEndEvent(message_id=message, timestamp=ts)]

    def _end_step(self, ts: int | None) -> list[BaseEvent]:
        out = self._end_message(ts)
        if self._step_open:
            self._step_open = False
            out.append(StepFinishedEvent(step_name=f"step {self._step}", timestamp=ts))
        return out
