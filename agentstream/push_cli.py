"""``agentstream agents push DIR``: upload a directory of agent files to a tenant, through the edge.

The files go to ``POST /api/agents/import`` of the edge at ``AGENTSTREAM_URL`` with the API key
``AGENTSTREAM_API_KEY``, so the tenant is the key's (never a flag's) and they are checked by the
same rules as every other write: all are stored, or none. ``--tenant T`` is a safety check: the
push stops before sending anything when the key belongs to another tenant. Skills are not pushed:
agents may list the skills of the edge's ``AGENTS_DIR/skills``.

The files are read as ``agentstream agents check`` reads them (regular files of at most 256 KiB,
symlinks only inside DIR, no YAML aliases); a file that does not parse is reported with its name
and nothing is sent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx

from agentstream.agents import AgentFileError, load_document, read_beneath


def push(directory: Path, *, url: str, api_key: str | None, tenant: str | None) -> int:
    """Push every ``*.yaml`` / ``*.yml`` directly in ``directory``; returns the exit code (0 pushed,
    1 refused by the edge or a file error, 2 wrong tenant or the edge unreachable)."""
    docs, files, problems = read_directory(directory)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    if not docs:
        print(f"error: {directory}: no agent files (*.yaml, *.yml)", file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30) as client:
            listing = client.get("/api/agents")
            if listing.status_code != 200:
                print(f"error: {url}: {_message(listing)}", file=sys.stderr)
                return 2
            owner = listing.json().get("tenant")
            if tenant is not None and owner != tenant:
                print(f"error: the API key belongs to tenant {owner!r}, not {tenant!r}; nothing was pushed",
                      file=sys.stderr)
                return 2
            resp = client.post("/api/agents/import", json=docs)
    except httpx.HTTPError as err:
        print(f"error: cannot reach {url}: {err}", file=sys.stderr)
        return 2
    if resp.status_code != 200:
        for line in _errors(resp, files):
            print(f"error: {line}", file=sys.stderr)
        print("nothing was pushed", file=sys.stderr)
        return 1
    pushed = resp.json()["agents"]
    print(f"pushed {len(pushed)} agent(s) to tenant {owner}: "
          + ", ".join(f"{a['name']} (revision {a['revision']}{', new' if a['created'] else ''})" for a in pushed))
    return 0


def read_directory(directory: Path) -> tuple[list[Any], list[str], list[AgentFileError]]:
    """The parsed documents of the agent files of ``directory``, their file names (same order),
    and the files that could not be read or parsed."""
    docs: list[Any] = []
    files: list[str] = []
    problems: list[AgentFileError] = []
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        return [], [], [AgentFileError(str(directory), None, f"cannot open the directory: {err.strerror or err}")]
    try:
        real = os.path.realpath(directory)
        for rel in sorted(n for n in os.listdir(fd) if n.endswith((".yaml", ".yml"))):
            raw, _, problem = read_beneath(fd, rel, dir_path=real)
            if problem is None:
                doc, problem = load_document(raw, rel)
            if problem is not None:
                problems.append(problem)
                continue
            docs.append(doc)
            files.append(rel)
    finally:
        os.close(fd)
    return docs, files, problems


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"


def _errors(resp: httpx.Response, files: list[str]) -> list[str]:
    """The edge's refusal, each error naming the file it is about (``{index}.{field}`` → file: field)."""
    try:
        error = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return [f"HTTP {resp.status_code}"]
    lines = []
    for item in error.get("errors") or [{"field": error.get("field"), "reason": error.get("message")}]:
        field = str(item.get("field") or "")
        index, _, rest = field.partition(".")
        if index.isdigit() and int(index) < len(files):
            lines.append(f"{files[int(index)]}: {rest + ': ' if rest else ''}{item.get('reason')}")
        else:
            lines.append(f"{field + ': ' if field else ''}{item.get('reason')}")
    return lines
