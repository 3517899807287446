"""The LocalAI agent-pool view of run events (``GET /api/agents/{name}/sse``).

Event names and payloads follow LocalAI's standalone agent pool (mudler/LocalAI
``core/http/endpoints/localai/agents.go``, and LocalAGI's ``core/sse/sse.go``), so LocalAI's
UI and clients can read the stream: ``json_message`` (user and agent messages),
``json_message_status`` (processing / completed), ``stream_event`` (content, tool_call,
tool_result, done), ``status`` (LocalAI's plain-text action log, ``<br>`` for newlines) and
``json_error``. Unlike LocalAI, every message names its ``message_id`` and ``run_id``, and the
SSE ``id:`` allows resuming; timestamps are RFC 3339 UTC as LocalAI's standalone mode sends them.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import events as E


def _short(value: Any, limit: int = 2000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


def _result(data: E.ToolResultData) -> Any:
    """What a tool call returned as LocalAI shows it: the output, or ``{"error": {type, message}}``."""
    return data.output if data.ok else {"error": data.error.model_dump() if data.error else None}


def render(event: E.RunEvent) -> list[tuple[str, dict[str, Any] | str]]:
    """The LocalAI events for one run event: ``[(event name, payload), ...]``."""
    mid = event.message_id
    common = {"message_id": mid, "run_id": event.run_id, "timestamp": E.stored_time(event.ts)}
    match event:
        case E.RunQueued(data=data):
            return [("json_message", {"id": f"{mid}-user", "sender": "user", "content": data.message or "", **common})]
        case E.RunStarted():
            return [("json_message_status", {"status": "processing", **common})]
        case E.RunRetrying(data=data):
            return [("json_message_status", {"status": "processing", "attempt": data.attempt, **common})]
        case E.RunRequeued(data=data):
            return [("json_message_status", {"status": "queued", "reason": data.reason, **common})]
        case E.MessageDelta(data=data):
            return [("stream_event", {"type": "content", "content": data.text, **common})]
        case E.ToolCall(data=data):
            return [("stream_event", {"type": "tool_call", "tool_name": data.name, "tool_args": data.arguments,
                                      **common})]
        case E.ToolResult(data=data):
            shown = _short(_result(data))
            status = f"Action taken: {data.name}<br>Result: {shown}".replace("\n", "<br>")
            return [
                ("stream_event", {"type": "tool_result", "tool_name": data.name, "tool_result": shown, **common}),
                ("status", status),
            ]
        case E.ToolApprovalRequested(data=data):
            status = f"Awaiting approval: {data.name}<br>Parameters: {_short(data.arguments)}"
            return [
                ("json_message_status", {"status": "awaiting_approval", "tool_name": data.name,
                                         "tool_call_id": data.tool_call_id, **common}),
                ("status", status.replace("\n", "<br>")),
            ]
        case E.ToolApprovalDecided(data=data):
            return [("status", f"Approval: {data.name} {data.decision}")]
        case E.MessageCompleted(data=data):
            return [
                ("stream_event", {"type": "done", **common}),
                ("json_message", {"id": f"{mid}-agent", "sender": "agent", "content": data.text, **common}),
            ]
        case E.RunCompleted():
            return [("json_message_status", {"status": "completed", **common})]
        case E.RunFailed(data=data):
            return [
                ("json_error", {"error": data.error.message or data.reason or "agent request failed", **common}),
                ("json_message_status", {"status": "completed", **common}),
            ]
        case E.RunCancelled(data=data):
            return [
                ("json_error", {"error": f"agent request was cancelled: {data.reason}".rstrip(": "), **common}),
                ("json_message_status", {"status": "completed", **common}),
            ]
    return []


def status_history(records: list[Any]) -> list[str]:
    """LocalAI's ``History`` strings (newest first) from run records, one per tool call:
    ``"Reasoning: …\\nAction taken: …\\nParameters: …\\nResult: …"``."""
    lines: list[str] = []
    for record in records:
        for call in reversed(record.tool_calls):
            result = call.output if call.ok else {"error": call.error}
            lines.append(
                f"Reasoning: run {record.run_id}, step {call.step}\n"
                f"Action taken: {call.name}\nParameters: {call.arguments}\nResult: {_short(result, 500)}"
            )
    return lines
