"""The tools a tool runner executes, by name. Each is ``async def tool(args, ctx) -> dict``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentstream.settings import Settings
from tool_runner.filepool import FilePool


@dataclass
class ToolContext:
    """What tools share in one tool runner: settings, the resolved file root, one HTTP client,
    the file tools' pool of threads."""

    settings: Settings
    root: Path
    http: httpx.AsyncClient
    files: FilePool


ToolFunc = Callable[[Any, ToolContext], Awaitable[dict[str, Any]]]


def registry() -> dict[str, ToolFunc]:
    """Tool name -> implementation; the names match ``schemas.tools.TOOL_RUNNER_TOOLS``."""
    from tool_runner.tools.files import list_dir, read_file
    from tool_runner.tools.http import http_request

    return {"read_file": read_file, "list_dir": list_dir, "http_request": http_request}
