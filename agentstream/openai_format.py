"""OpenAI chat-completion objects, built to the letter of docs/streaming.md.

Used by the edge's ``/v1`` API and by the built-in model, which speak the same protocol. Every
builder returns a plain dict; :func:`dumps` serialises it compactly (no indent: docs/streaming.md,
"SSE framing"), and nothing drops ``None`` values: ``finish_reason: null`` and ``usage: null`` must
stay (docs/streaming.md, "Chunks").
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

CHUNK_OBJECT = "chat.completion.chunk"
COMPLETION_OBJECT = "chat.completion"
TEXT_COMPLETION_OBJECT = "text_completion"


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is, newlines escaped)."""
    return orjson.dumps(obj)


def new_id(prefix: str = "chatcmpl") -> str:
    """A fresh response id, e.g. ``chatcmpl-3f2a...`` (one per response, repeated in all chunks:
    docs/streaming.md, "Chunks")."""
    return f"{prefix}-{secrets.token_hex(12)}"


def new_tool_call_id() -> str:
    """A unique tool call id ``call_<hex>`` (docs/streaming.md, "Tool call deltas")."""
    return f"call_{secrets.token_hex(12)}"


def now() -> int:
    """``created``: integer Unix seconds (docs/streaming.md, "Chunks")."""
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """``{prompt_tokens, completion_tokens, total_tokens}`` with total = prompt + completion
    (docs/streaming.md, "Usage")."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunk(
    id: str,
    created: int,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    index: int = 0,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with one choice (docs/streaming.md, "Chunks").

    ``with_usage_field``: add ``"usage": null`` (when the client asked for usage: docs/streaming.md, "Usage").
    """
    chunk: dict[str, Any] = {
        "id": id,
        "object": CHUNK_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": index,
                "delta": delta if delta is not None else {},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }
    if with_usage_field:
        chunk["usage"] = None
    return chunk


def chat_usage_chunk(id: str, created: int, model: str, usage_: dict[str, int]) -> dict[str, Any]:
    """The one usage chunk after the finish chunk: ``choices: []`` and real counts (docs/streaming.md, "Usage")."""
    return {
        "id": id,
        "object": CHUNK_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage_,
    }


def tool_call_delta_first(index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    """The first delta entry of a tool call: index, id, type, full name, first fragment
    (docs/streaming.md, "Tool call deltas")."""
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_call_delta_more(index: int, arguments: str) -> dict[str, Any]:
    """A later delta entry of a tool call: only index and an arguments fragment
    (docs/streaming.md, "Tool call deltas")."""
    return {"index": index, "function": {"arguments": arguments}}


def chat_completion(
    id: str,
    created: int,
    model: str,
    *,
    content: str | None,
    finish_reason: str,
    usage_: dict[str, int],
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion``: tool call arguments are JSON strings (docs/streaming.md,
    "Non-streaming")."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id,
        "object": COMPLETION_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_,
    }


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}`` (docs/streaming.md, "Errors before the first byte" and
    "Errors after the first byte")."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
