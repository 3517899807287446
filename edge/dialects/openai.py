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

from dataclasses import dataclass, field
from typing import Any

from agentstream import openai_format as oai
from agentstream import sse
from edge.dialects.replay import Replay
from schemas import events as E

_FINISH = {"stop", "length", "tool_calls", "content_filter"}
_TEXT_FINISH = {"stop", "length", "content_filter"}


def error_for_run(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI error object for a ``run.failed`` / ``run.cancelled`` event."""
    data = body.get("data") or {}
    if body.get("type") == E.RUN_CANCELLED:
        return oai.error_body(
            f"the run was cancelled: {data.get('reason', '')}".rstrip(": "), "cancelled", None, "run_cancelled"
        )
    error = data.get("error") or {}
    return oai.error_body(error.get("message") or data.get("reason") or "the run failed", "server_error", None,
                          error.get("type") or "run_failed")


@dataclass
class Collected:
    """A whole run, as the non-streaming endpoints need it."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=lambda: oai.usage(0, 0))
    error: dict[str, Any] | None = None
    error_type: str | None = None


def collect(bodies: list[dict[str, Any]]) -> Collected:
    """Fold a run's events (envelopes, in order) into text, client tool calls, finish, usage."""
    out = Collected()
    by_step: dict[int, str] = {}
    for body in bodies:
        t, data = body.get("type"), body.get("data") or {}
        if t == E.RUN_RETRYING:
            resume = int(data.get("resume_step", 1))
            by_step = {step: text for step, text in by_step.items() if step < resume}
        elif t == E.MESSAGE_DELTA:
            step = int(data.get("step", 1))
            by_step[step] = by_step.get(step, "") + data.get("text", "")
        elif t == E.TOOL_CALL and data.get("client"):
            out.tool_calls.append({"id": data["tool_call_id"], "type": "function",
                                   "function": {"name": data["name"], "arguments": data.get("arguments", "")}})
        elif t == E.MESSAGE_COMPLETED:
            reason = data.get("finish_reason")
            out.finish_reason = reason if reason in _FINISH else "stop"
        elif t == E.RUN_COMPLETED:
            out.usage = _usage(data)
        elif t in (E.RUN_FAILED, E.RUN_CANCELLED):
            out.error = error_for_run(body)
            out.error_type = (data.get("error") or {}).get("type") if t == E.RUN_FAILED else "run_cancelled"
            out.usage = _usage(data)
    out.text = "".join(by_step[step] for step in sorted(by_step))
    return out


def _usage(data: dict[str, Any]) -> dict[str, int]:
    u = data.get("usage") or {}
    return oai.usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))


RESTART_DIVERGED = oai.error_body(
    "the agent's run was interrupted and restarted, and its new answer differs from what was already sent; retry",
    "server_error", None, "run_restarted")


def approval_comment(body: dict[str, Any]) -> str:
    """The SSE comment a ``tool.approval_requested`` event becomes in a completion stream."""
    data = body.get("data") or {}
    text = (f"awaiting approval of tool call {data.get('tool_call_id')} ({data.get('name')}) until "
            f"{data.get('expires_at')}: POST /api/runs/{body.get('run_id')}/approve or /reject")
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

    def _client_tool_call(self, data: dict[str, Any]) -> list[bytes]:
        return []

    def render(self, body: dict[str, Any]) -> list[bytes]:
        """Frames for one run event (an envelope); empty for events this view does not show."""
        if self.done:
            return []
        t, data = body.get("type"), body.get("data") or {}
        if t == E.RUN_RETRYING:
            self._replay.restart(int(data.get("resume_step", 1)))
            return []
        if t == E.MESSAGE_DELTA and not self.finished:
            text = self._replay.text(int(data.get("step", 1)), data.get("text", ""))
            if text is None:
                self.done = True
                return [sse.frame(oai.dumps(RESTART_DIVERGED)), sse.DONE]
            return [self._text(text)] if text else []
        if t == E.TOOL_CALL and data.get("client") and not self.finished:
            return self._client_tool_call(data)
        if t == E.TOOL_APPROVAL_REQUESTED and not self.finished:
            # Only a comment (docs/streaming.md, "Keep-alives"): the stream waits, kept alive by
            # ``: ping`` comments, and the answer follows once the call is decided.
            return [sse.comment(approval_comment(body))]
        if t == E.MESSAGE_COMPLETED and not self.finished:
            self.finished = True
            reason = data.get("finish_reason")
            return [self._finish(reason if reason in self.finish_reasons else "stop")]
        if t == E.RUN_COMPLETED:
            frames = []
            # A run that ended without an answer event: still one finish chunk (docs/streaming.md, "Chunks").
            if not self.finished:
                self.finished = True
                frames.append(self._finish("stop"))
            if self.include_usage:
                frames.append(self._usage_chunk(_usage(data)))
            self.done = True
            return [*frames, sse.DONE]
        if t in (E.RUN_FAILED, E.RUN_CANCELLED):
            self.done = True
            return [sse.frame(oai.dumps(error_for_run(body))), sse.DONE]
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

    def _client_tool_call(self, data: dict[str, Any]) -> list[bytes]:
        index = self._tool_index
        self._tool_index += 1
        first = oai.tool_call_delta_first(index, data["tool_call_id"], data["name"], "")
        frames = [self._chunk(delta={"tool_calls": [first]})]
        if data.get("arguments"):
            frames.append(self._chunk(delta={"tool_calls": [oai.tool_call_delta_more(index, data["arguments"])]}))
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
