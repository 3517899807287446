"""Model Context Protocol servers an agent may use, and how their tools travel on the bus.

An agent file lists MCP servers under ``mcp_servers`` (:class:`McpServer`): a **stdio** server
(``command`` + ``args`` + ``env``: a process a tool runner starts) or a **streamable HTTP**
server (``url``), each with an optional allow-list of its tools (``tools``).

The model sees an MCP tool under the name :func:`model_tool_name` gives it: ``{server}__{tool}``
(two underscores). OpenAI's function names must match ``^[a-zA-Z0-9_-]{1,64}$`` (Chat Completions
API reference, ``tools[].function.name``), so ``files.read`` is not possible; an MCP tool name
holding other characters (MCP allows ``.`` too, spec 2025-11-25, Tools, "Tool names"), or a
combined name longer than 64, is made valid by replacing each other character with ``_`` and, when
anything was replaced or cut, ending the name with ``_`` and 8 hex digits of the SHA-256 of
``{server}/{tool}``; when two tools of an agent would still share a name (``a__b`` + ``c`` and
``a`` + ``b__c``), the second one gets the hashed form too (agent_runner.mcp_tools).

On the bus an MCP tool is not a subject of its own (tool names may hold characters a subject token
may not): agent runners call the generic tool :data:`~schemas.subjects.MCP_CALL_TOOL`
(``tools.{tenant}.mcp``) with :class:`McpCallArgs` as the request's ``arguments``, and list a
server's tools through :data:`~schemas.subjects.MCP_LIST_TOOL` (``tools.{tenant}.mcp_list``) with
:class:`McpListArgs`; the answer's ``output`` is :class:`McpToolList`. The tool runner resolves
the server from the agent files it read itself (``AGENTS_DIR``), never from the request, so a
request cannot make it start a command (docs/security.md).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any

from pydantic import Field, StringConstraints, WrapValidator, model_validator

from schemas.approval_rules import ApprovalPolicy, validate_policy
from schemas.common import Strict, Token

MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an OpenAI-compatible server accepts as a function name."""
SEPARATOR = "__"
"""Between the server's name and the tool's in the name the model sees."""

McpToolName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""An MCP tool's own name (spec 2025-11-25: 1 to 128 characters)."""
EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class McpServer(Strict):
    """One MCP server of an agent (``mcp_servers[]`` in its file).

    - ``name``: ``[A-Za-z0-9_-]{1,64}``, unique in the agent; prefixes its tools' names.
    - ``command``, ``args``, ``env``: a stdio server, started by a tool runner as its own user,
      with a minimal environment (``HOME``, ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``, ``USER``:
      the SDK's default) plus ``env``, in the tenant's tool root. ``command`` must be listed in the
      operator's ``MCP_STDIO_COMMANDS`` (checked when agent files are loaded, and again before
      starting it).
    - ``url``: a streamable HTTP server (``http://`` or ``https://``); reached only at public
      addresses unless the operator's ``MCP_ALLOW_HOSTS`` lists its host (tool_runner/netguard.py).
    - ``tools``: the server's tools the agent may use (default: all); others are never offered
      and a call to one is refused.
    - ``approval``: when a call of one of its tools waits for a person's approval, as for an
      action (schemas/approval_rules.py; a rule is matched against the tool's arguments).

    Exactly one of ``command`` and ``url``.
    """

    name: Token
    command: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(default_factory=list, max_length=256)
    env: dict[EnvVarName, Annotated[str, StringConstraints(max_length=8192)]] = Field(default_factory=dict)
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/@]+(/\S*)?$", max_length=2048)] | None = None
    tools: list[McpToolName] | None = None
    approval: Annotated[ApprovalPolicy, WrapValidator(validate_policy)] = "never"

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (a streamable HTTP server), not both")
        if self.url is not None and (self.args or self.env):
            raise ValueError("args and env are for stdio servers (command); a url server takes neither")
        if self.tools is not None and len(set(self.tools)) != len(self.tools):
            raise ValueError("tools lists a tool twice")
        return self

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``."""
        return "stdio" if self.command is not None else "http"

    def allows(self, tool: str) -> bool:
        """True when the allow-list (if any) names ``tool``."""
        return self.tools is None or tool in self.tools


def command_allowed(command: str, allowed: str) -> bool:
    """True when ``command`` (as written in the agent file) is one of the comma-separated entries
    of ``allowed`` (MCP_STDIO_COMMANDS), compared exactly: ``python`` allows ``python``, not
    ``/usr/bin/python``. Empty ``allowed``: nothing is."""
    return command in {c.strip() for c in allowed.split(",") if c.strip()}


def command_refusal(command: str, allowed: str) -> str:
    """Why ``command`` is refused under ``allowed`` (for an error naming ``mcp_servers.N.command``)."""
    listed = allowed.strip() or "empty: no stdio MCP server may be started"
    return (f"{command[:200]!r} is not in MCP_STDIO_COMMANDS ({listed}); the operator lists the commands agents "
            "may start")


def model_tool_name(server: str, tool: str, *, hashed: bool = False) -> str:
    """The name the model calls an MCP tool by (see the module docstring): ``{server}__{tool}``,
    made valid for OpenAI-compatible servers when it is not (or when ``hashed``: always with the
    hash, to tell it from another tool's same name)."""
    plain = f"{server}{SEPARATOR}{tool}"
    if MODEL_NAME_RE.fullmatch(plain) and not hashed:
        return plain
    digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", plain)
    return f"{safe[:55]}_{digest}"


class McpListArgs(Strict):
    """``arguments`` of a ``tools.{tenant}.mcp_list`` request: which agent's which server."""

    agent: Token
    server: Token


class McpCallArgs(Strict):
    """``arguments`` of a ``tools.{tenant}.mcp`` request: the agent, its server, the server's own
    tool name, and the tool's arguments (a JSON object, passed through)."""

    agent: Token
    server: Token
    tool: McpToolName
    arguments: dict[str, Any] = Field(default_factory=dict)


class McpToolInfo(Strict):
    """One tool a server offers an agent (its allow-list applied).

    ``name``: the server's name for it; ``model_name``: the name the model sees
    (:func:`model_tool_name`); ``input_schema``: its JSON Schema (``inputSchema``), given to the
    model as the function's parameters; ``read_only``: the server's ``readOnlyHint`` annotation
    (spec 2025-11-25, Tools, "Tool annotations"): only such a tool is executed again when a call is
    retried; every other one is executed at most once (tool_runner/once.py)."""

    name: str
    model_name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    read_only: bool = False


class McpToolList(Strict):
    """``output`` of a ``tools.{tenant}.mcp_list`` answer."""

    server: str
    tools: list[McpToolInfo] = Field(default_factory=list)
