"""Run events rendered as OpenAI chat and text completions, streamed or whole.

The rules are docs/streaming.md's (section names in quotes). A streamed response is: one role
chunk ``{"role": "assistant", "content": ""}`` and content deltas ("Chunks"), spec-exact
``tool_calls`` deltas for client-side tools ("Tool call deltas"), one finish chunk with an empty
delta ("Chunks"), the usage chunk with ``choices: []`` if asked for ("Usage"), ``data: [DONE]``
("Termination"). A failure after the first byte is ``data: {"error": {...}}`` then ``[DONE]``
("Errors after the first byte"). Frames are only ``data:`` lines ("SSE framing"); keep-alives are
comments ("Keep-alives"), written by the caller.

The server-side work of the agent (its own tool calls, retries) stays out of this view: it is in
the run's native event stream, whose id the response names in ``X-Run-Id``. A tool call waiting
for a person's approval is one comment line (``: awaiting approval of tool call …``); the stream
then stays open, with its ``: ping`` comments, until the call is decided and the answer comes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentstream import openai_format as oai
from agentstream import sse
from edge.dialects.replay import Replay
from schemas import events as E
from schemas.common import Usage

_FINISH = {"stop", "length", "tool_calls", "content_filter"}
_TEXT_FINISH = {"stop", "length", "content_filter"}


def error_for_run(event: E.RunFailed | E.RunCancelled) -> dict[str, Any]:
    """The OpenAI error object for a ``run.failed`` / ``run.cancelled`` event."""
    if isinstance(event, E.RunCancelled):
        return oai.error_body(
            f"the run was cancelled: {event.data.reason}".rstrip(": "), "cancelled", None, "run_cancelled"
        )
    error = event.data.error
    return oai.error_body(error.message or event.data.reason or "the run failed", "server_error", None,
                          error.type or "run_failed")


@dataclass
class Collected:
    """A whole run, as the non-streaming endpoints need it."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=lambda: oai.usage(0, 0))
    error: dict[str, Any] | None = None
    error_type: str | None = None


def collect(events: Iterable[E.RunEvent]) -> Collected:
    """Fold a run's events (typed envelopes, in stream order) into text, client tool calls, finish, usage."""
    out = Collected()
    by_step: dict[int, str] = {}
    for event in events:
        match event:
            case E.RunRetrying(data=data):
                by_step = {step: text for step, text in by_step.items() if step < data.resume_step}
            case E.MessageDelta(data=data):
                by_step[data.step] = by_step.get(data.step, "") + data.text
            case E.ToolCall(data=data) if data.client:
                out.tool_calls.append({"id": data.tool_call_id, "type": "function",
                                       "function": {"name": data.name, "arguments": data.arguments}})
            case E.MessageCompleted(data=data):
                out.finish_reason = data.finish_reason if data.finish_reason in _FINISH else "stop"
            case E.RunCompleted(data=data):
                out.usage = _usage(data.usage)
            case E.RunFailed(data=data):
                out.error, out.error_type, out.usage = error_for_run(event), data.error.type, _usage(data.usage)
            case E.RunCancelled(data=data):
                out.error, out.error_type, out.usage = error_for_run(event), "run_cancelled", _usage(data.usage)
    out.text = "".join(by_step[step] for step in sorted(by_step))
    return out


def _usage(usage: Usage | None) -> dict[str, int]:
    """A run's token usage as OpenAI's ``usage`` object (zeros when none was reported)."""
    u = usage or Usage()
    return oai.usage(u.prompt_tokens, u.completion_tokens)


RESTART_DIVERGED = oai.error_body(
    "the agent's run was interrupted and restarted, and its new answer differs from what was already sent; retry",
    "server_error", None, "run_restarted")


def approval_comment(event: E.ToolApprovalRequested) -> str:
    """The SSE comment a ``tool.approval_requested`` event becomes in a completion stream."""
    data = event.data
    text = (f"awaiting approval of tool call {data.tool_call_id} ({data.name}) until "
            f"{E.stored_time(data.expires_at)}: POST /api/runs/{event.run_id}/approve or /reject")
    return " ".join(text.split())  # one line, whatever the model named its call


class _CompletionStream:
    """What the chat and the text completion streams share: which run events become frames, and
    when the stream ends. Subclasses say how a frame looks.

    ``include_usage``: ``stream_options.include_usage`` was true: then every chunk carries
    ``"usage": null`` and one usage chunk precedes ``[DONE]`` (docs/streaming.md, "Usage").
    """

    finish_reasons: frozenset[str] = frozenset()

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool):
        self.id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.finished = False  # the finish chunk was sent
        self.done = False  # [DONE] was sent
        self._replay = Replay()

    def _text(self, text: str) -> bytes:
        raise NotImplementedError

    def _finish(self, reason: str) -> bytes:
        raise NotImplementedError

    def _usage_chunk(self, usage: dict[str, int]) -> bytes:
        raise NotImplementedError

    def _client_tool_call(self, data: E.ToolCallData) -> list[bytes]:
        return []

    def render(self, event: E.RunEvent) -> list[bytes]:
        """Frames for one run event; empty for events this view does not show."""
        if self.done:
            return []
        match event:
            case E.RunRetrying(data=data):
                self._replay.restart(data.resume_step)
            case E.MessageDelta(data=data) if not self.finished:
                text = self._replay.text(data.step, data.text)
                if text is None:
                    self.done = True
                    return [sse.frame(oai.dumps(RESTART_DIVERGED)), sse.DONE]
                return [self._text(text)] if text else []
            case E.ToolCall(data=data) if data.client and not self.finished:
                return self._client_tool_call(data)
            case E.ToolApprovalRequested() if not self.finished:
                # Only a comment (docs/streaming.md, "Keep-alives"): the stream waits, kept alive by
                # ``: ping`` comments, and the answer follows once the call is decided.
                return [sse.comment(approval_comment(event))]
            case E.MessageCompleted(data=data) if not self.finished:
                self.finished = True
                reason = data.finish_reason
                return [self._finish(reason if reason in self.finish_reasons else "stop")]
            case E.RunCompleted(data=data):
                frames = []
                # A run that ended without an answer event: still one finish chunk (docs/streaming.md, "Chunks").
                if not self.finished:
                    self.finished = True
                    frames.append(self._finish("stop"))
                if self.include_usage:
                    frames.append(self._usage_chunk(_usage(data.usage)))
                self.done = True
                return [*frames, sse.DONE]
            case E.RunFailed() | E.RunCancelled():
                self.done = True
                return [sse.frame(oai.dumps(error_for_run(event))), sse.DONE]
        return []


class ChatStream(_CompletionStream):
    """Frames of one streamed ``chat.completion.chunk`` response (all bytes, ready to write)."""

    finish_reasons = frozenset(_FINISH)

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool):
        super().__init__(completion_id, created, model, include_usage=include_usage)
        self._tool_index = 0

    def _chunk(self, **kw: Any) -> bytes:
        return sse.frame(oai.dumps(oai.chat_chunk(self.id, self.created, self.model,
                                                  with_usage_field=self.include_usage, **kw)))

    def start(self) -> bytes:
        """The role chunk (docs/streaming.md, "Chunks")."""
        return self._chunk(delta={"role": "assistant", "content": ""})

    def _text(self, text: str) -> bytes:
        return self._chunk(delta={"content": text})

    def _finish(self, reason: str) -> bytes:
        return self._chunk(delta={}, finish_reason=reason)

    def _usage_chunk(self, usage: dict[str, int]) -> bytes:
        return sse.frame(oai.dumps(oai.chat_usage_chunk(self.id, self.created, self.model, usage)))

    def _client_tool_call(self, data: E.ToolCallData) -> list[bytes]:
        index = self._tool_index
        self._tool_index += 1
        first = oai.tool_call_delta_first(index, data.tool_call_id, data.name, "")
        frames = [self._chunk(delta={"tool_calls": [first]})]
        if data.arguments:
            frames.append(self._chunk(delta={"tool_calls": [oai.tool_call_delta_more(index, data.arguments)]}))
        return frames


class TextCompletionStream(_CompletionStream):
    """Frames of one streamed legacy ``text_completion`` response: ``text`` in every chunk, the same
    ``object`` as the non-streaming response (docs/streaming.md, "Legacy completions"). Client tool
    calls are not shown."""

    finish_reasons = frozenset(_TEXT_FINISH)

    def _chunk(self, text: str, finish_reason: str | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id, "object": oai.TEXT_COMPLETION_OBJECT, "created": self.created, "model": self.model,
            "system_fingerprint": None,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse.frame(oai.dumps(chunk))

    def _text(self, text: str) -> bytes:
        return self._chunk(text, None)

    def _finish(self, reason: str) -> bytes:
        return self._chunk("", reason)

    def _usage_chunk(self, usage: dict[str, int]) -> bytes:
        return sse.frame(oai.dumps({
            "id": self.id, "object": oai.TEXT_COMPLETION_OBJECT, "created": self.created, "model": self.model,
            "system_fingerprint": None, "choices": [], "usage": usage,
        }))


def text_completion(completion_id: str, created: int, model: str, run: Collected) -> dict[str, Any]:
    """A non-streaming legacy completion (docs/streaming.md, "Legacy completions")."""
    finish = run.finish_reason if run.finish_reason in _TEXT_FINISH else "stop"
    return {
        "id": completion_id, "object": oai.TEXT_COMPLETION_OBJECT, "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"text": run.text, "index": 0, "logprobs": None, "finish_reason": finish}],
        "usage": run.usage,
    }
