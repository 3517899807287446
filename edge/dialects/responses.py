"""Run events rendered as an OpenAI Responses API response: streamed events and the response object.

Source: the OpenAI API reference, "Responses" (create, retrieve, cancel, streaming events); the
shapes are those of the ``openai`` SDK's ``openai.types.responses`` models, which the tests
validate every event against.

A run is one response, id ``resp_{run_id}``. Its stream is, in order: ``response.created``,
``response.in_progress``, then per LLM step that writes text one ``message`` output item
(``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta``
..., ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``),
per client-side tool call one ``function_call`` item (``added``, ``function_call_arguments.delta``,
``function_call_arguments.done``, ``output_item.done``), and one closing event:
``response.completed``, ``response.incomplete`` (the model hit ``max_output_tokens``) or
``response.failed`` (the run failed; or was cancelled: then ``response.status`` is
``cancelled``). The agent's own (server-side) tool calls stay out of this view, as in the chat
view: they are in the run's native events (``X-Run-Id``), except one that waits for a person's
approval: it is an ``mcp_approval_request`` output item (``output_item.added`` and ``.done``; id
``mcpr_{tool_call_id}``, ``server_label`` ``agentstream``), mirroring OpenAI's MCP approvals.
The response stays ``in_progress`` meanwhile (the run waits, it has not ended) and goes on in the
same response once the call is decided (``POST /api/runs/{run_id}/approve`` or ``/reject``, or an
``mcp_approval_response`` input item: edge/api_responses.py).

Every event carries ``sequence_number``, counted from 0 by :class:`ResponseView` over the run's
stored events alone, so replaying the same events gives the same numbers: that is what lets a
client resume a stream with ``starting_after``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from edge.dialects.replay import Replay
from edge.errors import ApiError
from schemas import events as E
from schemas.common import ChatMessage, Usage

PREFIX = "resp_"
ECHO_API = "responses"
APPROVAL_PREFIX = "mcpr_"
APPROVAL_SERVER_LABEL = "agentstream"
"""``server_label`` of the approval requests (the agent's own tools have no MCP server of the caller's)."""

RESTART_DIVERGED = ("the agent's run was interrupted and restarted, and its new answer differs from what was "
                    "already sent; retry")


def response_id(run_id: str) -> str:
    """``resp_{run_id}``."""
    return f"{PREFIX}{run_id}"


def run_id_of(resp_id: str) -> str | None:
    """The run id inside a response id, or None if ``resp_id`` is not one."""
    return resp_id[len(PREFIX):] if resp_id.startswith(PREFIX) and len(resp_id) > len(PREFIX) else None


def approval_request_id(tool_call_id: str) -> str:
    """The id of the ``mcp_approval_request`` item of a call waiting for approval."""
    return f"{APPROVAL_PREFIX}{tool_call_id}"


def tool_call_id_of(approval_id: str) -> str | None:
    """The tool call id inside an approval request id, or None if ``approval_id`` is not one."""
    return approval_id[len(APPROVAL_PREFIX):] if approval_id.startswith(APPROVAL_PREFIX) else None


def usage(u: Usage | None) -> dict[str, Any]:
    """A run's usage (zeros when none was reported) as the Responses API's ``usage``."""
    u = u or Usage()
    prompt, completion = u.prompt_tokens, u.completion_tokens
    return {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def base_object(resp_id: str, echo: dict[str, Any]) -> dict[str, Any]:
    """The fields of a response object that come from its request (``echo``, see api_responses)."""
    return {
        "id": resp_id, "object": "response", "created_at": echo.get("created_at", 0), "status": "in_progress",
        "background": bool(echo.get("background")), "error": None, "incomplete_details": None,
        "instructions": echo.get("instructions"), "max_output_tokens": echo.get("max_output_tokens"),
        "model": echo.get("model", ""), "output": [], "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": echo.get("previous_response_id"), "store": echo.get("store", True),
        "temperature": echo.get("temperature"), "top_p": echo.get("top_p"),
        "text": echo.get("text") or {"format": {"type": "text"}}, "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools") or [], "truncation": echo.get("truncation", "disabled"), "usage": None,
        "user": echo.get("user"), "metadata": echo.get("metadata") or {},
    }


class ResponseView:
    """One response, built from its run's events (typed envelopes, in stream order).

    :meth:`start` gives the two opening events, :meth:`render` the events for one run event;
    both return event dicts with their ``sequence_number``. :meth:`snapshot` is the response
    object as it stands (what ``GET /v1/responses/{id}`` returns). ``done``: the closing event
    was produced.
    """

    def __init__(self, resp_id: str, echo: dict[str, Any]):
        self.id = resp_id
        self.run_id = run_id_of(resp_id) or resp_id
        self.base = base_object(resp_id, echo)
        self.background = bool(echo.get("background"))
        self.seq = -1
        self.status = "queued" if self.background else "in_progress"
        self.started = False  # a runner took the run (run.started)
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.error_type: str | None = None
        self.incomplete: dict[str, Any] | None = None
        self.completed_at: int | None = None
        self.done = False
        self._finished = False  # message.completed seen
        self._finish_reason = "stop"
        self._message: int | None = None  # output index of the open message item
        self._message_step = 0
        self._replay = Replay()
        self._approvals: set[str] = set()  # calls whose approval request was shown
        self._awaiting: set[str] = set()  # calls the run waits for now

    @property
    def waiting(self) -> bool:
        """The run waits for a person's decision on every call it asked about (nothing more will
        come until one is made)."""
        return bool(self._awaiting) and self._awaiting <= self._approvals and not self.done

    @property
    def awaiting(self) -> frozenset[str]:
        """The tool call ids the run waits (or last waited) for."""
        return frozenset(self._awaiting)

    # -- the response object

    def snapshot(self) -> dict[str, Any]:
        """The response object now (a deep copy)."""
        obj = copy.deepcopy(self.base)
        obj.update(status=self.status, output=copy.deepcopy(self.output), usage=self.usage, error=self.error,
                   incomplete_details=self.incomplete)
        if self.completed_at is not None:
            obj["completed_at"] = self.completed_at
        return obj

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": type_, "sequence_number": self.seq, **fields}

    # -- events

    def start(self) -> list[dict[str, Any]]:
        """``response.created`` (status ``queued`` for a background response) and ``response.in_progress``."""
        created = self._event("response.created", response=self.snapshot())
        self.status = "in_progress"
        return [created, self._event("response.in_progress", response=self.snapshot())]

    def render(self, event: E.RunEvent) -> list[dict[str, Any]]:
        """The events one run event makes; empty for those this view does not show."""
        if self.done:
            return []
        match event:
            case E.RunStarted():
                self.started = True
                self._awaiting = set()
            case E.ToolApprovalRequested(data=data) if not self._finished:
                self._awaiting = set(data.awaiting or [data.tool_call_id])
                if data.tool_call_id in self._approvals:
                    return []
                self._approvals.add(data.tool_call_id)
                return [*self._close_message(), *self._approval_request(data)]
            case E.RunRetrying(data=data):
                self.started = True
                self._replay.restart(data.resume_step)
            case E.MessageDelta(data=data) if not self._finished:
                return self._delta(data.step, data.text)
            case E.ToolCall(data=data) if data.client and not self._finished:
                return [*self._close_message(), *self._function_call(data)]
            case E.MessageCompleted(data=data) if not self._finished:
                self._finished = True
                self._finish_reason = data.finish_reason or "stop"
                return self._close_message()
            case E.RunCompleted(data=data):
                out = self._close_message()
                self.usage = usage(data.usage)
                self.completed_at = int(event.ts.timestamp())
                if self._finish_reason == "length":
                    self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
                    return self._end([*out], "response.incomplete")
                self.status = "completed"
                return self._end(out, "response.completed")
            case E.RunFailed(data=data):
                self.error_type = data.error.type or "run_failed"
                return self._fail(data.error.message or data.reason or "the run failed", data.usage)
            case E.RunCancelled(data=data):
                out = self._close_message()
                self.status, self.usage, self.error_type = "cancelled", usage(data.usage), "run_cancelled"
                return self._end(out, "response.failed")
        return []

    def _fail(self, message: str, run_usage: Usage | None) -> list[dict[str, Any]]:
        out = self._close_message()
        self.status, self.usage = "failed", usage(run_usage)
        self.error = {"code": "server_error", "message": message}
        return self._end(out, "response.failed")

    def _end(self, out: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
        self.done = True
        return [*out, self._event(type_, response=self.snapshot())]

    def _delta(self, step: int, text: str) -> list[dict[str, Any]]:
        new = self._replay.text(step, text)
        if new is None:
            self.error_type = "run_restarted"
            return self._fail(RESTART_DIVERGED, None)
        if not new:
            return []
        out: list[dict[str, Any]] = []
        if self._message is not None and self._message_step != step:
            out.extend(self._close_message())
        if self._message is None:
            out.extend(self._open_message(step))
        index = self._message
        assert index is not None
        item = self.output[index]
        item["content"][0]["text"] += new
        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=index,
                               content_index=0, delta=new, logprobs=[]))
        return out

    def _open_message(self, step: int) -> list[dict[str, Any]]:
        index = len(self.output)
        item: dict[str, Any] = {"id": f"msg_{self.run_id}_{index}", "type": "message", "role": "assistant",
                                "status": "in_progress", "content": []}
        self.output.append(item)
        self._message, self._message_step = index, step
        added = self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item))
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item["content"].append(part)
        return [added, self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                   content_index=0, part=copy.deepcopy(part))]

    def _close_message(self) -> list[dict[str, Any]]:
        index = self._message
        if index is None:
            return []
        self._message = None
        item = self.output[index]
        item["status"] = "incomplete" if self._finish_reason == "length" else "completed"
        part = item["content"][0]
        return [
            self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                        text=part["text"], logprobs=[]),
            self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                        part=copy.deepcopy(part)),
            self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)),
        ]

    def _approval_request(self, data: E.ToolApprovalRequestedData) -> list[dict[str, Any]]:
        index = len(self.output)
        item = {"id": approval_request_id(data.tool_call_id), "type": "mcp_approval_request",
                "server_label": APPROVAL_SERVER_LABEL, "name": data.name, "arguments": data.arguments}
        self.output.append(item)
        return [self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item)),
                self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item))]

    def _function_call(self, data: E.ToolCallData) -> list[dict[str, Any]]:
        index = len(self.output)
        arguments = data.arguments
        item: dict[str, Any] = {"id": f"fc_{self.run_id}_{index}", "type": "function_call",
                                "call_id": data.tool_call_id, "name": data.name, "arguments": "",
                                "status": "in_progress"}
        self.output.append(item)
        out = [self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item))]
        if arguments:
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=index, delta=arguments))
        item.update(arguments=arguments, status="completed")
        out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               arguments=arguments))
        out.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)))
        return out


def echo_of(events: list[E.RunEvent], index_echo: dict[str, Any] | None, agent: str) -> dict[str, Any]:
    """The request fields a response shows: the Responses request's ``echo`` (from ``run.queued``,
    else the run's index entry); for a run started through another API, its agent as the model."""
    for event in events:
        if isinstance(event, E.RunQueued):
            if event.data.echo is not None:
                return event.data.echo
            return {"model": agent, "created_at": int(event.ts.timestamp())}
    return index_echo if index_echo is not None else {"model": agent}


# -- input: Responses items as chat messages


def _text_parts(content: Any, param: str) -> str | list[dict[str, Any]]:
    """A message's ``content`` (a string or a list of content parts) as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, "invalid_request", f"{param} must be a string or a list of content parts", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise ApiError(400, "unsupported", f"{param}[{j}]: content part type {kind!r} is not supported (use "
                           "input_text, output_text, or input_image with an image_url)", f"{param}.{j}.type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def input_messages(items: str | list[Any]) -> list[ChatMessage]:
    """The Responses ``input`` as chat messages: a string is one user message; ``message`` items
    keep their role, ``function_call`` items become an assistant message's ``tool_calls``,
    ``function_call_output`` items ``tool`` messages. ApiError 400 naming the item for others."""
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)]
    out: list[ChatMessage] = []
    for i, item in enumerate(items):
        param = f"input.{i}"
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_request", f"{param} must be an object", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise ApiError(400, "invalid_request", f"{param}.role must be user, system, developer or assistant",
                               f"{param}.role")
            out.append(ChatMessage(role=role, content=_text_parts(item.get("content"), f"{param}.content")))
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name")):
                raise ApiError(400, "invalid_request", f"{param} needs call_id and name", param)
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": str(item.get("arguments") or "")}}
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                out[-1] = ChatMessage.model_validate({**last.model_dump(exclude_none=True),
                                                      "tool_calls": [*last.model_dump()["tool_calls"], call]})
            else:
                out.append(ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]}))
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise ApiError(400, "invalid_request", f"{param}.call_id is required", f"{param}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_parts(output, f"{param}.output")
            if not isinstance(text, str):
                raise ApiError(400, "unsupported", f"{param}.output: only text output is supported", f"{param}.output")
            out.append(ChatMessage(role="tool", tool_call_id=item["call_id"], content=text))
        elif kind == "mcp_approval_response":
            raise ApiError(400, "invalid_request", f"{param}: an mcp_approval_response answers a response that waits "
                           "for approval: send only such items, with that response as previous_response_id",
                           f"{param}.type")
        else:
            raise ApiError(400, "unsupported", f"{param}: input items of type {kind!r} are not supported (use "
                           "message, function_call and function_call_output)", f"{param}.type")
    return out


def split_last_user(messages: list[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    """(the last message's text if it is a plain-text user message, the messages before it), else
    (None, all of them)."""
    if messages and messages[-1].role == "user" and isinstance(messages[-1].content, str):
        if messages[-1].content.strip():
            return messages[-1].content, messages[:-1]
    return None, messages


# -- a stored turn, for previous_response_id


@dataclass
class Turn:
    """What one run adds to a conversation, from its stored events.

    ``kept``: the turns its request kept (``run.queued`` ``history``), None if not kept;
    ``history_length``: how many turns its request had; ``message``: its user message;
    ``outputs``: what the agent answered, as chat messages (each LLM step's assistant message
    with its tool calls, the agent's own tool results); ``ended``: it has a terminal event.
    """

    kept: list[dict[str, Any]] | None = None
    history_length: int = 0
    message: str | None = None
    previous_response_id: str | None = None
    conversation_id: str | None = None
    echo_store: bool = True
    outputs: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False

    @property
    def stored(self) -> bool:
        """Whether the conversation up to this run can be rebuilt (its own turns were kept, or it had none)."""
        return self.echo_store and (self.kept is not None or self.history_length == 0)

    def messages(self) -> list[dict[str, Any]]:
        """This run's part of the conversation: its kept turns, its message, its answer."""
        out = list(self.kept or [])
        if self.message:
            out.append({"role": "user", "content": self.message})
        return out + self.outputs


def tool_content(result: E.ToolResultData) -> str:
    """What the model read as a tool's answer (agent_runner.loop.tool_message_content)."""
    if result.ok:
        return json.dumps(result.output, ensure_ascii=False)
    return json.dumps({"error": result.error.model_dump() if result.error else {"type": "error", "message": "failed"}})


@dataclass
class _Step:
    """One LLM step of a stored run: its text, its tool calls, their results by tool call id."""

    text: str = ""
    calls: list[E.ToolCallData] = field(default_factory=list)
    results: dict[str, E.ToolResultData] = field(default_factory=dict)


def fold_turn(events: list[E.RunEvent]) -> Turn:
    """A run's :class:`Turn` from its typed events (all attempts, in stream order)."""
    turn = Turn()
    steps: dict[int, _Step] = {}
    for event in events:
        match event:
            case E.RunQueued(data=data):
                turn.kept = ([m.model_dump(mode="json", exclude_none=True) for m in data.history]
                             if data.history is not None else None)
                turn.history_length = data.history_length
                turn.message = data.message
                turn.conversation_id = data.conversation_id
                echo = data.echo or {}
                turn.previous_response_id = echo.get("previous_response_id")
                turn.echo_store = echo.get("store", True) is not False
            case E.RunRetrying(data=data):
                for number, step in steps.items():
                    if number >= data.resume_step and not step.calls:
                        step.text = ""  # an interrupted model call: what it wrote is superseded
            case E.MessageDelta(data=data):
                steps.setdefault(data.step, _Step()).text += data.text
            case E.ToolCall(data=data):
                steps.setdefault(data.step, _Step()).calls.append(data)
            case E.ToolResult(data=data):
                steps.setdefault(data.step, _Step()).results[data.tool_call_id] = data
            case E.RunCompleted() | E.RunFailed() | E.RunCancelled():
                turn.ended = True
    for number in sorted(steps):
        step = steps[number]
        if not step.calls:
            if step.text:
                turn.outputs.append({"role": "assistant", "content": step.text})
            continue
        turn.outputs.append({"role": "assistant", "content": step.text or None, "tool_calls": [
            {"id": c.tool_call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in step.calls]})
        for call in step.calls:
            result = step.results.get(call.tool_call_id)
            if result is None and call.client:
                continue  # the client answers it: a function_call_output item of the next request
            content = tool_content(result) if result is not None else json.dumps(
                {"error": {"type": "missing_result", "message": "no result was recorded for this call"}})
            turn.outputs.append({"role": "tool", "tool_call_id": call.tool_call_id, "content": content})
    return turn
