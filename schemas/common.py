"""Types shared by several contracts: tokens, chat messages, usage, errors."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.subjects import TOKEN_PATTERN

Token = Annotated[str, StringConstraints(pattern=TOKEN_PATTERN)]
"""A subject-safe name: tenant, agent, tool or run id (``[A-Za-z0-9_-]{1,64}``)."""

MessageId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
"""A client's id for one message, used to make submits idempotent (any printable text)."""


class Strict(BaseModel):
    """Base for contract models: unknown fields are an error, so typos are caught at the edge."""

    model_config = ConfigDict(extra="forbid")


class Usage(Strict):
    """Token counts as reported by the LLM server (OpenAI ``CompletionUsage`` shape), summed over a run."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class ErrorInfo(Strict):
    """A failure, as shown to clients and to the model: a machine ``type`` and a human ``message``."""

    type: str
    message: str


class FunctionCall(BaseModel):
    """The ``function`` part of an OpenAI tool call: a name and JSON-encoded arguments (a string)."""

    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str = ""


class ToolCallRef(BaseModel):
    """An OpenAI assistant tool call: ``{id, type: "function", function: {name, arguments}}``."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of an OpenAI-style conversation (``system``, ``user``, ``assistant``, ``tool``).

    ``content`` is text, or a list of content parts as OpenAI allows; unknown keys are kept and
    passed through to the LLM server.
    """

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallRef] | None = None
    tool_call_id: str | None = None


class FunctionTool(BaseModel):
    """A tool definition, OpenAI's request shape: ``{type: "function", function: {name, description, parameters}}``."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: dict[str, Any] = Field(description="name, description and JSON Schema parameters")


class ScheduleRef(Strict):
    """The schedule tick that fired a run: ``schedule_id`` and ``tick``, the time the tick was due
    (UTC; a run fired late for a tick missed during an outage still names the tick it stands for)."""

    schedule_id: Token
    tick: datetime
