"""Which MCP tools a run offers its model, learnt from tool runners and kept for a while.

At a run's start the agent runner asks a tool runner for each of the agent's MCP servers' tools
(``tools.{tenant}.mcp_list``, through the same request/reply path, retries and progress as any
tool call: agent_runner.tool_client), concurrently, within MCP_LIST_TIMEOUT seconds. A list is
kept for MCP_TOOLS_CACHE seconds per tenant, agent and server, so a busy agent does not ask at
every run. A server whose list cannot be had (it does not start, it is not reachable, its address
is refused) is left out of that run: the run goes on with its other tools, and the agent runner
logs why. The model calls an MCP tool by its model name (schemas/mcp.py); the call goes to
``tools.{tenant}.mcp`` with the agent, server and tool named in the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from agent_runner.tool_client import ToolClient
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.mcp import McpToolInfo, McpToolList, model_tool_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class McpTool:
    """An MCP tool as a run offers it: the model's name for it, its server, its own name there,
    and its OpenAI function definition."""

    model_name: str
    server: str
    tool: str
    read_only: bool
    definition: dict[str, Any]

    def request_arguments(self, agent: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The ``arguments`` of the ``tools.{tenant}.mcp`` request calling this tool (McpCallArgs)."""
        return {"agent": agent, "server": self.server, "tool": self.tool, "arguments": arguments}


def function_definition(info: McpToolInfo) -> dict[str, Any]:
    """The OpenAI ``tools[]`` entry for an MCP tool: its model name, description, and its input
    JSON Schema as the parameters (an object schema, without its top-level ``$schema`` and
    ``title``, which some servers refuse; anything else becomes ``{"type": "object"}``)."""
    schema: dict[str, Any] = {"type": "object"}
    if info.input_schema.get("type") == "object":
        schema = {k: v for k, v in info.input_schema.items() if k not in ("$schema", "title")}
    schema.setdefault("properties", {})
    return {"type": "function", "function": {
        "name": info.model_name, "description": info.description[:1024] or info.name, "parameters": schema}}


class McpToolLister:
    """The MCP tools of agents, cached. ``ttl``: seconds a list is reused (MCP_TOOLS_CACHE);
    ``timeout``: seconds to wait for a list (MCP_LIST_TIMEOUT)."""

    def __init__(self, tools: ToolClient, *, ttl: float, timeout: float):
        self.tools = tools
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[tuple[str, str, str], tuple[float, list[McpTool]]] = {}

    async def tools_for(self, tenant: str, agent: AgentDefinition, run_id: str) -> dict[str, McpTool]:
        """The MCP tools ``agent`` offers in a run of ``tenant``, by model name. Never raises: a
        server whose tools cannot be listed contributes none."""
        if not agent.mcp_servers:
            return {}
        lists = await asyncio.gather(*(self._server_tools(tenant, agent, s.name, run_id) for s in agent.mcp_servers))
        offered: dict[str, McpTool] = {}
        for tools in lists:
            for tool in tools:
                if tool.model_name in offered:  # "a__b" + "c" and "a" + "b__c": the second gets the hashed name
                    name = model_tool_name(tool.server, tool.tool, hashed=True)
                    function = {**tool.definition["function"], "name": name}
                    tool = replace(tool, model_name=name, definition={**tool.definition, "function": function})
                offered.setdefault(tool.model_name, tool)
        return offered

    async def _server_tools(self, tenant: str, agent: AgentDefinition, server: str, run_id: str) -> list[McpTool]:
        key = (tenant, agent.name, server)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        outcome = await self.tools.call(
            tenant, subjects.MCP_LIST_TOOL, run_id=run_id, tool_call_id=f"mcp_list-{server}",
            idempotency_key=f"{run_id}:mcp_list:{server}", arguments={"agent": agent.name, "server": server},
            budget=min(self.timeout, agent.tool_timeout),
        )
        if not outcome.ok:
            why = f"{outcome.error.type}: {outcome.error.message}" if outcome.error else "failed"
            log.warning("run %s: MCP server %s of agent %s left out: its tools could not be listed (%s)",
                        run_id, server, agent.name, why)
            return []
        try:
            listing = McpToolList.model_validate(outcome.output)
        except ValidationError as err:
            log.warning("run %s: MCP server %s of agent %s left out: unreadable tool list (%s)", run_id, server,
                        agent.name, err)
            return []
        tools = [McpTool(model_name=t.model_name, server=server, tool=t.name, read_only=t.read_only,
                         definition=function_definition(t)) for t in listing.tools]
        self._cache[key] = (time.monotonic() + self.ttl, tools)
        return tools
