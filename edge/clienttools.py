"""Checking client-side tools (OpenAI ``tools``, Responses function tools, AG-UI frontend tools)
before they reach an agent: every protocol's client tools become ``RunRequest.tools``, and a call
of one ends the run for the client to answer (``finish_reason: "tool_calls"``)."""

from __future__ import annotations

import re
from collections.abc import Callable

from edge.errors import ApiError
from schemas.agents import AgentDefinition
from schemas.common import FunctionTool
from schemas.tools import BUILTIN_AGENT_TOOLS

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What OpenAI allows as a function name (and what a tool call can carry back)."""


def check_client_tools(tools: list[FunctionTool], agent: AgentDefinition, name_param: Callable[[int], str],
                       *, status: int = 400) -> None:
    """ApiError (``status``, naming ``name_param(i)``) when a tool's name is not a valid function
    name, is taken by the agent's own tools, or is given twice."""
    taken = set(agent.tool_names) | set(BUILTIN_AGENT_TOOLS)
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        name = tool.function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise ApiError(status, "invalid_request", f"tool {i}: the name must match ^[A-Za-z0-9_-]{{1,64}}$",
                           name_param(i))
        if name in taken:
            raise ApiError(status, "invalid_request", f"tool name {name!r} is taken by the agent's own tools",
                           name_param(i))
        if name in seen:
            raise ApiError(status, "invalid_request", f"tool name {name!r} is given twice", name_param(i))
        seen.add(name)
