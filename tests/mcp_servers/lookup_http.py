"""A streamable HTTP MCP server for the tests (FastMCP on uvicorn): ``python lookup_http.py PORT``
serves ``http://127.0.0.1:PORT/mcp`` with one read-only tool, ``lookup(key)``."""

from __future__ import annotations

import sys

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("lookup", host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8765,
                 log_level="WARNING")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def lookup(key: str) -> str:
    """Look ``key`` up."""
    return f"the value of {key} is {key.upper()}-42"


if __name__ == "__main__":
    server.run("streamable-http")
