"""Tool invocations: the request/reply contract on ``tools.{tenant}.{tool}``, and the tool catalog.

An agent runner sends a :class:`ToolCallRequest` as a core NATS request to
``tools.{tenant}.{tool}``; exactly one tool runner of the queue group answers with a
:class:`ToolCallResult`. A tool's own failure (file not found, HTTP refused) is a result with
``ok: false``, not a protocol error: it goes back to the model as a tool result. Protocol errors
(unparseable request, unknown tool) are answered with the micro-service error headers
``Nats-Service-Error`` / ``Nats-Service-Error-Code`` (ADR-32).

If the request carries header ``Agentstream-Progress: 1`` the tool runner first sends empty
messages with that header to the reply subject while it works (every ``progress_interval``
seconds), so the caller can tell a slow tool from a dead tool runner.

The catalog below defines each built-in tool's arguments once; the agent runner offers them to the
model as OpenAI function definitions and the tool runner validates calls against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import ErrorInfo, Strict, Token


class ToolCallRequest(Strict):
    """One tool invocation.

    - ``run_id``: the run asking (for logs and idempotency).
    - ``tool_call_id``: the model's id for this call; with ``run_id`` it is the idempotency key.
    - ``arguments``: the tool's arguments, already parsed from the model's JSON.
    - ``timeout``: seconds the caller will wait for this attempt; the tool should give up sooner.
    - ``progress_interval``: seconds between progress messages when progress is asked for.
    """

    run_id: Token
    tool_call_id: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(default=30.0, gt=0, le=3600)
    progress_interval: float = Field(default=1.0, gt=0, le=60)


class ToolCallResult(Strict):
    """How one invocation ended: ``ok`` with ``output`` (JSON value) or ``error``; ``ms`` spent in the tool."""

    tool_call_id: str
    ok: bool
    output: Any = None
    error: ErrorInfo | None = None
    ms: float = 0.0
    runner: str | None = None


# ----------------------------------------------------------------------------------------------
# built-in tool arguments


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadFileArgs(_Args):
    """Read a text file under the tool runner's root. Paths are relative to the root."""

    path: str = Field(description="File path relative to the project root, e.g. 'README.md' or 'src/main.go'.")
    start_line: int | None = Field(default=None, ge=1, description="First line to return (1-based). Default: 1.")
    end_line: int | None = Field(default=None, ge=1, description="Last line to return (inclusive). Default: the end.")


class ListDirArgs(_Args):
    """List a directory under the tool runner's root."""

    path: str = Field(default=".", description="Directory path relative to the project root. Default: the root.")


class HttpRequestArgs(_Args):
    """Make an HTTP request to a public address and return status, headers and body text."""

    url: str = Field(description="Absolute http:// or https:// URL.")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = Field(
        default="GET", description="HTTP method."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers.")
    body: str | None = Field(default=None, description="Request body (text).")
    timeout: float | None = Field(default=None, gt=0, description="Seconds to wait; capped by the operator's limit.")


class LoadSkillArgs(_Args):
    """Load the instructions of one of this agent's skills."""

    name: str = Field(description="The skill's name, one of those listed in the system prompt.")


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model can be offered: its name, what it does, its argument model, where it runs.

    ``where`` is ``"tool_runner"`` (executed by a tool runner over NATS) or ``"agent_runner"``
    (executed inside the agent runner, e.g. ``load_skill``). ``side_effects``: a call changes
    something outside (sends a request, writes): it is executed at most once per idempotency key
    across all tool runners (tool_runner/once.py); a call without is simply run again if retried.
    """

    name: str
    description: str
    args: type[BaseModel]
    where: Literal["tool_runner", "agent_runner"] = "tool_runner"
    side_effects: bool = False

    def function_definition(self, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The OpenAI ``tools[]`` entry: ``{"type": "function", "function": {name, description, parameters}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters if parameters is not None else json_schema_for_llm(self.args),
            },
        }


def json_schema_for_llm(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON Schema trimmed for LLM servers: no titles, no ``$defs``; ``additionalProperties: false``."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema.pop("description", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        # pydantic renders Optional[x] as anyOf [x, null]; LLM servers prefer the plain type.
        if "anyOf" in prop:
            non_null = [s for s in prop["anyOf"] if s.get("type") != "null"]
            if len(non_null) == 1:
                prop.pop("anyOf")
                prop.update(non_null[0])
        if "default" in prop and prop["default"] is None:
            del prop["default"]
    schema["additionalProperties"] = False
    return schema


READ_FILE = ToolSpec(
    "read_file",
    "Read a text file from the project. Returns its content (optionally a line range), its size in bytes "
    "and, when the file was read to its end (read_to_end: true), its total line count; reading stops at "
    "end_line and at a size cap, and then total_lines is null. Paths are relative to the project root.",
    ReadFileArgs,
)
LIST_DIR = ToolSpec(
    "list_dir",
    "List the entries of a directory in the project (name, type, size). Paths are relative to the project root.",
    ListDirArgs,
)
HTTP_REQUEST = ToolSpec(
    "http_request",
    "Make an HTTP request to a public URL. Returns the status code, response headers and body text (size-capped).",
    HttpRequestArgs,
    side_effects=True,
)
LOAD_SKILL = ToolSpec(
    "load_skill",
    "Load the full instructions of one of your skills by name.",
    LoadSkillArgs,
    where="agent_runner",
)

TOOL_RUNNER_TOOLS: dict[str, ToolSpec] = {t.name: t for t in (READ_FILE, LIST_DIR, HTTP_REQUEST)}
"""Tools executed by tool runners; an agent's ``actions`` must name tools from this set."""

BUILTIN_AGENT_TOOLS: dict[str, ToolSpec] = {LOAD_SKILL.name: LOAD_SKILL}
"""Tools the agent runner provides itself (offered automatically, never listed in ``actions``)."""

ToolName = Token
