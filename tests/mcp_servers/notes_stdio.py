"""A stdio MCP server for the tests (FastMCP): notes, its own process id, and a tool that crashes it.

Started by a tool runner as an agent's ``mcp_servers`` entry (``command: <python>``, ``args:
[this file]``). Tools:

- ``read_note(name)`` (read-only): ``note NAME says: GREETING from TENANT`` (``NOTES_GREETING``
  from the agent file's ``env``; ``AGENTSTREAM_TENANT`` from the tool runner);
- ``whoami()`` (read-only): this process's id, so a test can kill it between calls;
- ``crash()`` (not read-only): exits at once, mid-call, as a server that dies does;
- ``append_note(name, text)`` (not read-only): keeps a note in memory, says how many it keeps;
- ``secret()`` (read-only): a tool the test agent's allow-list leaves out.
"""

from __future__ import annotations

import os

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("notes")
READ_ONLY = ToolAnnotations(readOnlyHint=True)


@server.tool(annotations=READ_ONLY)
def read_note(name: str) -> str:
    """Read the note called ``name``."""
    greeting = os.environ.get("NOTES_GREETING", "nothing")
    return f"note {name} says: {greeting} from {os.environ.get('AGENTSTREAM_TENANT', '?')}"


@server.tool(annotations=READ_ONLY)
def whoami() -> str:
    """This server's process id."""
    return f"notes server pid {os.getpid()}"


@server.tool()
def crash() -> str:
    """Exit at once (a server that dies in the middle of a call)."""
    os._exit(3)


NOTES: list[tuple[str, str]] = []


@server.tool()
def append_note(name: str, text: str) -> str:
    """Keep a note (a side effect)."""
    NOTES.append((name, text))
    return f"kept {len(NOTES)} note(s)"


@server.tool(annotations=READ_ONLY)
def secret() -> str:
    """A tool the agent is not allowed."""
    return "the secret"


if __name__ == "__main__":
    server.run("stdio")
