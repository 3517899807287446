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


def _ts(body: dict[str, Any]) -> str:
    return body.get("ts") or ""


def _short(value: Any, limit: int = 2000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


def render(body: dict[str, Any]) -> list[tuple[str, dict[str, Any] | str]]:
    """The LocalAI events for one run event envelope: ``[(event name, payload), ...]``."""
    t = body.get("type")
    data = body.get("data") or {}
    mid = body.get("message_id")
    common = {"message_id": mid, "run_id": body.get("run_id"), "timestamp": _ts(body)}
    if t == E.RUN_QUEUED:
        return [
            ("json_message", {"id": f"{mid}-user", "sender": "user", "content": data.get("message") or "", **common})
        ]
    if t == E.RUN_STARTED:
        return [("json_message_status", {"status": "processing", **common})]
    if t == E.RUN_RETRYING:
        return [("json_message_status", {"status": "processing", "attempt": data.get("attempt"), **common})]
    if t == E.RUN_REQUEUED:
        return [("json_message_status", {"status": "queued", "reason": data.get("reason"), **common})]
    if t == E.MESSAGE_DELTA:
        return [("stream_event", {"type": "content", "content": data.get("text", ""), **common})]
    if t == E.TOOL_CALL:
        return [
            (
                "stream_event",
                {"type": "tool_call", "tool_name": data.get("name"), "tool_args": data.get("arguments", ""), **common},
            ),
        ]
    if t == E.TOOL_RESULT:
        result = data.get("output") if data.get("ok") else {"error": data.get("error")}
        shown = _short(result)
        status = f"Action taken: {data.get('name')}<br>Result: {shown}".replace("\n", "<br>")
        return [
            ("stream_event", {"type": "tool_result", "tool_name": data.get("name"), "tool_result": shown, **common}),
            ("status", status),
        ]
    if t == E.TOOL_APPROVAL_REQUESTED:
        status = f"Awaiting approval: {data.get('name')}<br>Parameters: {_short(data.get('arguments', ''))}"
        return [
            ("json_message_status", {"status": "awaiting_approval", "tool_name": data.get("name"),
                                     "tool_call_id": data.get("tool_call_id"), **common}),
            ("status", status.replace("\n", "<br>")),
        ]
    if t == E.TOOL_APPROVAL_DECIDED:
        return [("status", f"Approval: {data.get('name')} {data.get('decision')}")]
    if t == E.MESSAGE_COMPLETED:
        return [
            ("stream_event", {"type": "done", **common}),
            ("json_message", {"id": f"{mid}-agent", "sender": "agent", "content": data.get("text", ""), **common}),
        ]
    if t == E.RUN_COMPLETED:
        return [("json_message_status", {"status": "completed", **common})]
    if t == E.RUN_FAILED:
        error = data.get("error") or {}
        return [
            ("json_error", {"error": error.get("message") or data.get("reason") or "agent request failed", **common}),
            ("json_message_status", {"status": "completed", **common}),
        ]
    if t == E.RUN_CANCELLED:
        return [
            ("json_error", {"error": f"agent request was cancelled: {data.get('reason', '')}".rstrip(": "), **common}),
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
