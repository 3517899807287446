"""The two MCP tools of a tool runner: ``mcp_list`` (an agent's server's tools) and ``mcp`` (a call
to one of them), schemas/mcp.py.

The server comes from the agent files this tool runner read itself (``AGENTS_DIR``), by the agent
and server named in the request: a request can name a server, never define one. Before a server is
used: the tenant must be allowed the agent (its policy's allow-list), the server's ``command``
must be in MCP_STDIO_COMMANDS (also checked when the files were loaded), and a tool must be in
the server's ``tools`` allow-list. Sessions are per tenant, agent and server
(tool_runner/mcp/session.py).

A call that was in flight when its session died is not repeated for a tool with side effects (it
may have been executed): it answers ``mcp_connection_lost``, and the next call reconnects. A
read-only tool (``readOnlyHint``) is called once more on a new session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp.types as mt
from pydantic import ValidationError

from agentstream.agents import AgentCatalog
from agentstream.settings import Settings
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.errors import ErrorKind
from schemas.mcp import McpCallArgs, McpListArgs, McpServer, McpToolInfo, McpToolList, command_allowed, model_tool_name
from schemas.tenants import TenantPolicy
from tool_runner.errors import ToolError
from tool_runner.mcp.session import McpPool, McpSession, SessionKey, SessionLost

log = logging.getLogger(__name__)

ENDPOINTS = (subjects.MCP_CALL_TOOL, subjects.MCP_LIST_TOOL)
"""The tool names (``tools.*.{name}``) served here."""


class McpTools:
    """MCP for one tool runner. ``catalog``: the agent files it read; ``policy_of``: a tenant's
    policy (None: unknown, no allow-list); ``root_of``: a tenant's tool root (a stdio server's
    working directory)."""

    def __init__(self, settings: Settings, catalog: AgentCatalog, *,
                 policy_of: Callable[[str], TenantPolicy | None], root_of: Callable[[str], Path]):
        self.settings = settings
        self.catalog = catalog
        self.policy_of = policy_of
        self.root_of = root_of
        self.pool = McpPool(connect_timeout=settings.mcp_connect_timeout, idle_timeout=settings.mcp_idle_timeout,
                            allow_hosts=settings.mcp_allow_hosts)

    def start(self) -> None:
        """Start closing idle sessions."""
        self.pool.start()

    async def close(self) -> None:
        """Close every session (stdio servers' processes end)."""
        await self.pool.close()

    async def execute(self, tool_name: str, tenant: str, arguments: dict[str, Any], timeout: float) -> Any:  # noqa: ASYNC109
        """Run ``mcp_list`` or ``mcp`` for ``tenant``; returns the result's ``output``. Raises
        ToolError (``invalid_arguments``, ``forbidden_agent``, ``unknown_server``, ``unknown_tool``,
        ``command_not_allowed``, ``mcp_unavailable``, ``mcp_error``, ``mcp_tool_error``,
        ``mcp_connection_lost``, ``address_refused``, ``timeout``)."""
        try:
            if tool_name == subjects.MCP_LIST_TOOL:
                listing = _parse(McpListArgs, arguments)
                return (await self.list(tenant, listing.agent, listing.server, timeout)).model_dump(mode="json")
            return await self.call(tenant, _parse(McpCallArgs, arguments), timeout)
        except SessionLost as lost:
            raise ToolError(ErrorKind.MCP_CONNECTION_LOST,
                            f"the MCP server went away ({lost}); it is restarted for the "
                            "next call") from None

    async def read_only(self, tenant: str, arguments: dict[str, Any], timeout: float) -> bool:  # noqa: ASYNC109
        """True when the tool an ``mcp`` request names says ``readOnlyHint: true``: only then may a
        retried call execute it again. False when it cannot be told (treated as side-effecting)."""
        try:
            call = _parse(McpCallArgs, arguments)
            agent, server = self._server(tenant, call.agent, call.server)
            session = await self._session(tenant, agent, server, timeout)
        except ToolError:
            return False
        tool = session.tools.get(call.tool)
        return bool(tool is not None and tool.annotations is not None and tool.annotations.readOnlyHint)

    async def list(self, tenant: str, agent_name: str, server_name: str, timeout: float) -> McpToolList:  # noqa: ASYNC109
        """The tools ``server_name`` of ``agent_name`` offers (its allow-list applied)."""
        agent, server = self._server(tenant, agent_name, server_name)
        session = await self._session(tenant, agent, server, timeout)
        try:
            tools = await session.list_tools(timeout)
        except SessionLost:
            await self.pool.discard(session)
            session = await self._session(tenant, agent, server, timeout)
            tools = await session.list_tools(timeout)
        offered = [_info(server, t) for t in tools.values() if server.allows(t.name)]
        return McpToolList(server=server.name, tools=offered)

    async def call(
        self, tenant: str, call: McpCallArgs, timeout: float  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Call the tool; its result as ``{"text", "structured"?, "other_content"?}``."""
        agent, server = self._server(tenant, call.agent, call.server)
        if not server.allows(call.tool):
            raise ToolError(ErrorKind.UNKNOWN_TOOL, f"MCP server {server.name!r} of agent {agent.name!r} has no tool "
                            f"{call.tool!r} this agent may use (its tools: {', '.join(server.tools or [])})")
        session = await self._session(tenant, agent, server, timeout)
        if call.tool not in session.tools:
            await session.list_tools(timeout)  # the server may have gained it since
            if call.tool not in session.tools:
                raise ToolError(ErrorKind.UNKNOWN_TOOL,
                                f"MCP server {server.name!r} has no tool {call.tool!r} (its tools: "
                                f"{', '.join(t for t in sorted(session.tools) if server.allows(t)) or 'none'})")
        tool = session.tools[call.tool]
        read_only = tool.annotations is not None and bool(tool.annotations.readOnlyHint)
        try:
            result = await session.call(call.tool, call.arguments, timeout)
        except SessionLost as lost:
            await self.pool.discard(session)
            if not read_only:
                raise ToolError(ErrorKind.MCP_CONNECTION_LOST, f"MCP server {server.name!r} went away during the call "
                                f"({lost}); it was not repeated, since it may have been executed. It is restarted "
                                "for the next call.") from None
            log.info("MCP server %s went away during a read-only call; calling again on a new session", server.name)
            session = await self._session(tenant, agent, server, timeout)
            result = await session.call(call.tool, call.arguments, timeout)
        return output_of(result)

    def _server(self, tenant: str, agent_name: str, server_name: str) -> tuple[AgentDefinition, McpServer]:
        policy = self.policy_of(tenant)
        if policy is not None and not policy.may_use(agent_name):
            raise ToolError(ErrorKind.FORBIDDEN_AGENT, f"tenant {tenant!r} may not use agent {agent_name!r}")
        agent = self.catalog.get(agent_name)
        if agent is None:
            raise ToolError(ErrorKind.UNKNOWN_SERVER, f"this tool runner has no agent {agent_name!r} (AGENTS_DIR)")
        server = next((s for s in agent.mcp_servers if s.name == server_name), None)
        if server is None:
            raise ToolError(ErrorKind.UNKNOWN_SERVER, f"agent {agent_name!r} has no MCP server {server_name!r}")
        if server.command is not None and not command_allowed(server.command, self.settings.mcp_stdio_commands):
            raise ToolError(ErrorKind.COMMAND_NOT_ALLOWED,
                            f"MCP server {server_name!r}: command {server.command!r} is not in "
                            "this tool runner's MCP_STDIO_COMMANDS")
        return agent, server

    async def _session(self, tenant: str, agent: AgentDefinition, server: McpServer,
                       timeout: float) -> McpSession:  # noqa: ASYNC109
        key = SessionKey(tenant, agent.name, server.name)
        env = {"AGENTSTREAM_TENANT": tenant, "AGENTSTREAM_AGENT": agent.name}
        return await self.pool.session(key, server, cwd=self.root_of(tenant), env=env, timeout=timeout)


def output_of(result: mt.CallToolResult) -> dict[str, Any]:
    """A tool result as the model reads it: its text blocks joined (``text``), its
    ``structuredContent`` (``structured``), and what other blocks there were (``other_content``:
    type and MIME type; images and audio are not passed on). Raises ToolError ``mcp_tool_error``
    when the server marked it an error (``isError``, spec 2025-11-25, Tools, "Error handling")."""
    texts = [block.text for block in result.content if isinstance(block, mt.TextContent)]
    text = "\n".join(texts)
    if result.isError:
        raise ToolError(ErrorKind.MCP_TOOL_ERROR, text or "the MCP tool reported an error")
    out: dict[str, Any] = {"text": text}
    if result.structuredContent is not None:
        out["structured"] = result.structuredContent
    others = [{"type": block.type, **({"mimeType": m} if (m := getattr(block, "mimeType", None)) else {})}
              for block in result.content if not isinstance(block, mt.TextContent)]
    if others:
        out["other_content"] = others
    return out


def _info(server: McpServer, tool: mt.Tool) -> McpToolInfo:
    annotations = tool.annotations
    return McpToolInfo(
        name=tool.name, model_name=model_tool_name(server.name, tool.name), description=tool.description or "",
        input_schema=tool.inputSchema or {"type": "object"},
        read_only=bool(annotations is not None and annotations.readOnlyHint),
    )


def _parse(model: type[McpCallArgs] | type[McpListArgs], arguments: dict[str, Any]) -> Any:
    try:
        return model.model_validate(arguments)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in err.errors())
        raise ToolError(ErrorKind.INVALID_ARGUMENTS, problems) from None
