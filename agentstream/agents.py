"""Loading a directory of agent YAML files (and their skills) into a catalog.

A bad file (YAML syntax, unknown field, wrong type, unknown tool, missing skill, duplicate name)
is reported as an :class:`AgentFileError` with the file, the field and the reason; every other
file still loads (docs/architecture.md, "Rules that hold everywhere").

Agent files are input from whoever can write to the directory, and the edge shows them to
tenants, so reading them is bounded: files are opened through a descriptor of the directory,
never blocking (a FIFO is an error, not a hang), regular files only (``/dev/zero`` is an error,
not a MemoryError), symlinks followed only while they stay inside the directory (a skill linked
to ``/etc/hostname`` is an error, not a skill), at most :data:`MAX_FILE_BYTES` read; YAML aliases
are refused (an alias bomb is an error, not 30 MB of JSON) and the parsed document is bounded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from agentstream import yamlload
from agentstream.beneath import BeneathError, open_beneath, read_capped
from agentstream.settings import Settings
from schemas.agents import AgentDefinition, key_env_allowed, key_env_refusal
from schemas.errors import ErrorKind
from schemas.mcp import command_allowed, command_refusal
from schemas.subjects import is_token

MAX_FILE_BYTES = 256 * 1024
"""Largest agent or skill file read (bytes); a bigger one is an error of its file."""
MAX_DOCUMENT_SIZE = 256 * 1024
"""Largest parsed agent document (characters, see :func:`agentstream.yamlload.document_size`)."""
SKILLS_SUBDIR = "skills"
_LABEL = "the agents directory"


@dataclass(frozen=True)
class AgentFileError:
    """One problem in one file: ``file`` (name inside the agents directory), ``field`` (dotted
    path, None for whole-file problems), ``reason`` (human text)."""

    file: str
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.reason}"

    def as_dict(self) -> dict[str, str | None]:
        """JSON shape used by the HTTP API and ``agentstream agents check --json``."""
        return {"file": self.file, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class Skill:
    """A skill file ``skills/NAME.md``: its name, a one-line description (its first line) and text."""

    name: str
    description: str
    text: str


@dataclass
class AgentCatalog:
    """The agents and skills of one directory, and the errors found loading it."""

    directory: Path
    agents: dict[str, AgentDefinition] = field(default_factory=dict)
    skills: dict[str, Skill] = field(default_factory=dict)
    errors: list[AgentFileError] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=dict)
    """Agent name -> its file's modification time (Unix seconds), e.g. for ``/v1/models``."""
    files: dict[str, str] = field(default_factory=dict)
    """File name -> the agent it defines."""

    def get(self, name: str) -> AgentDefinition | None:
        """The agent called ``name``, or None."""
        return self.agents.get(name)

    def skills_of(self, agent: AgentDefinition) -> list[Skill]:
        """The skills an agent lists, in its order (all exist: checked at load)."""
        return [self.skills[s] for s in agent.skills if s in self.skills]


def load_skills(directory: Path, errors: list[AgentFileError], *, dir_fd: int | None = None) -> dict[str, Skill]:
    """Read ``directory/skills/*.md``. A skill's name is its file name without ``.md``.

    Each file is opened as :func:`read_beneath` opens agent files (regular files of at most
    :data:`MAX_FILE_BYTES`, symlinks only within ``directory``); a bad one is an error in
    ``errors`` and is left out. ``dir_fd``: ``directory`` already open (else it is opened here).
    """
    skills: dict[str, Skill] = {}
    with _directory(directory, dir_fd) as (fd, real):
        if fd is None:
            return skills
        try:
            opened = open_beneath(fd, SKILLS_SUBDIR, "dir", dir_path=real, label=_LABEL)
        except BeneathError as err:
            if err.kind != ErrorKind.NOT_FOUND:
                errors.append(AgentFileError(SKILLS_SUBDIR, None, err.message))
            return skills
        try:
            names = sorted(n for n in os.listdir(opened.fd) if n.endswith(".md"))
        finally:
            os.close(opened.fd)
        for file_name in names:
            rel = f"{SKILLS_SUBDIR}/{file_name}"
            name = file_name.removesuffix(".md")
            if not is_token(name):
                errors.append(AgentFileError(rel, None, "a skill's file name must be 1-64 of A-Z a-z 0-9 _ - plus .md"))
                continue
            text, _, problem = read_beneath(fd, rel, dir_path=real)
            if problem is not None:
                errors.append(problem)
                continue
            first = next((line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip()), "")
            skills[name] = Skill(name=name, description=first, text=text)
    return skills


def read_beneath(dir_fd: int, rel: str, *, dir_path: str | None = None) -> tuple[str, float, AgentFileError | None]:
    """The UTF-8 text of file ``rel`` beneath the agents directory open as ``dir_fd``, and its
    modification time (Unix seconds); or ``("", 0, error)``.

    The file is opened with :func:`agentstream.beneath.open_beneath` (no blocking on a FIFO, no
    device, symlinks followed only while they stay inside the directory; ``dir_path`` is the
    directory's real path, for absolute symlinks into it), must be a regular file of at most
    :data:`MAX_FILE_BYTES` by ``fstat``, and at most that many bytes plus one are read.
    """
    try:
        opened = open_beneath(dir_fd, rel, "file", dir_path=dir_path, label=_LABEL)
    except BeneathError as err:
        return "", 0.0, AgentFileError(rel, None, f"cannot read: {err.message}")
    try:
        data = read_capped(opened.fd, MAX_FILE_BYTES) if opened.st.st_size <= MAX_FILE_BYTES else None
    except OSError as err:
        return "", 0.0, AgentFileError(rel, None, f"cannot read: {err.strerror or err}")
    finally:
        os.close(opened.fd)
    if data is None:
        return "", 0.0, AgentFileError(rel, None, f"file is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8"), opened.st.st_mtime, None
    except UnicodeDecodeError as err:
        return "", 0.0, AgentFileError(rel, None, f"cannot read: not UTF-8 text (byte {err.start})")


def parse_agent(
    raw: str, rel: str, *, key_env_pattern: str | None = None, mcp_stdio_commands: str | None = None
) -> tuple[AgentDefinition | None, list[AgentFileError]]:
    """Parse and validate the text of one agent file named ``rel``. Returns the agent (None if
    invalid) and its errors (file, field, reason).

    Refused besides what :func:`check_document` refuses: YAML that does not parse (field None,
    the line and column in the reason) and YAML aliases (field: where the alias stands).
    """
    doc, problem = load_document(raw, rel)
    if problem is not None:
        return None, [problem]
    return check_document(doc, rel, key_env_pattern=key_env_pattern, mcp_stdio_commands=mcp_stdio_commands)


def load_document(raw: str, rel: str) -> tuple[Any, AgentFileError | None]:
    """The YAML document in ``raw`` (read with :mod:`agentstream.yamlload`: no aliases), or
    ``(None, error)`` for a syntax error or an alias, naming ``rel``."""
    try:
        return yamlload.load(raw), None
    except yamlload.AliasRefused as err:
        return None, AgentFileError(rel, err.field, f"{err}: YAML aliases are not allowed in agent files")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        return None, AgentFileError(rel, None, f"YAML syntax error{where}: {problem}")


def check_document(
    doc: Any, rel: str, *, key_env_pattern: str | None = None, mcp_stdio_commands: str | None = None
) -> tuple[AgentDefinition | None, list[AgentFileError]]:
    """Validate one parsed agent document (from a file named ``rel``, or a request body). Returns
    the agent (None if invalid) and its errors (file ``rel``, field, reason).

    Refused besides what :class:`AgentDefinition` refuses: anything but a mapping, a document
    larger than :data:`MAX_DOCUMENT_SIZE` (see :func:`agentstream.yamlload.document_size`), an
    ``llm.api_key_env`` that does not match ``key_env_pattern`` (LLM_KEY_ENV_PATTERN; None: its
    default), and a stdio MCP server whose ``command`` is not in ``mcp_stdio_commands``
    (MCP_STDIO_COMMANDS; None: its default, empty). What needs other agents (skills, ensemble
    members) is checked by the catalog.
    """
    if not isinstance(doc, dict):
        return None, [AgentFileError(rel, None, "expected a mapping of fields (name: ..., model: ...)")]
    if yamlload.document_size(doc, MAX_DOCUMENT_SIZE) is None:
        return None, [AgentFileError(rel, None, f"the parsed document is larger than {MAX_DOCUMENT_SIZE} characters")]
    try:
        agent = AgentDefinition.model_validate(doc)
    except ValidationError as err:
        return None, [
            AgentFileError(rel, ".".join(str(p) for p in e["loc"]) or None, _reason(e)) for e in err.errors()
        ]
    pattern = key_env_pattern if key_env_pattern is not None else Settings().llm_key_env_pattern
    key_env = agent.llm.api_key_env if agent.llm else None
    if key_env is not None and not key_env_allowed(key_env, pattern):
        return None, [AgentFileError(rel, "llm.api_key_env", key_env_refusal(key_env, pattern))]
    commands = mcp_stdio_commands if mcp_stdio_commands is not None else Settings().mcp_stdio_commands
    refused = [AgentFileError(rel, f"mcp_servers.{i}.command", command_refusal(server.command, commands))
               for i, server in enumerate(agent.mcp_servers)
               if server.command is not None and not command_allowed(server.command, commands)]
    if refused:
        return None, refused
    return agent, []


def missing_skills(agent: AgentDefinition, skills: dict[str, Skill], rel: str) -> AgentFileError | None:
    """The error of an agent that lists skills ``skills`` does not hold (field ``skills``), or None."""
    missing = [s for s in agent.skills if s not in skills]
    if not missing:
        return None
    return AgentFileError(rel, "skills", f"no skill file {', '.join(f'{SKILLS_SUBDIR}/{m}.md' for m in missing)}")


def load_agents(
    directory: Path, *, key_env_pattern: str | None = None, mcp_stdio_commands: str | None = None
) -> AgentCatalog:
    """Load every ``*.yaml`` / ``*.yml`` directly in ``directory`` plus its skills.

    Files are read through one descriptor of ``directory`` (see :func:`read_beneath`: symlinks
    that leave it, FIFOs, devices and oversized files are errors of their file).
    ``key_env_pattern``: the globs ``llm.api_key_env`` must match (LLM_KEY_ENV_PATTERN; None: its
    default); ``mcp_stdio_commands``: the commands stdio MCP servers may be (MCP_STDIO_COMMANDS;
    None: its default). Never raises for a bad file; a missing directory is one catalog error.
    """
    directory = Path(directory)
    catalog = AgentCatalog(directory=directory)
    with _directory(directory, None) as (fd, real):
        if fd is None:
            catalog.errors.append(AgentFileError(str(directory), None, "agents directory not found"))
            return catalog
        catalog.skills = load_skills(directory, catalog.errors, dir_fd=fd)
        files = sorted(n for n in os.listdir(fd) if n.endswith((".yaml", ".yml")))
        for rel in files:
            raw, mtime, problem = read_beneath(fd, rel, dir_path=real)
            if problem is not None:
                catalog.errors.append(problem)
                continue
            agent, errors = parse_agent(raw, rel, key_env_pattern=key_env_pattern,
                                        mcp_stdio_commands=mcp_stdio_commands)
            if agent is not None:
                missing = missing_skills(agent, catalog.skills, rel)
                if missing is not None:
                    errors.append(missing)
                elif agent.name in catalog.agents:
                    errors.append(
                        AgentFileError(rel, "name", f"agent {agent.name!r} is already defined by another file")
                    )
                else:
                    catalog.agents[agent.name] = agent
                    catalog.created[agent.name] = int(mtime)
                    catalog.files[rel] = agent.name
            catalog.errors.extend(errors)
    _check_ensembles(catalog)
    return catalog


@contextmanager
def _directory(directory: Path, dir_fd: int | None) -> Iterator[tuple[int | None, str]]:
    """``directory`` open as a descriptor (None if it cannot be opened), and its real path;
    an already open ``dir_fd`` is used as it is and left open."""
    real = os.path.realpath(directory)
    if dir_fd is not None:
        yield dir_fd, real
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield None, real
        return
    try:
        yield fd, real
    finally:
        os.close(fd)


def _check_ensembles(catalog: AgentCatalog) -> None:
    """An ensemble's members and combiner must be agents of the directory, and not ensembles."""
    for name, (field_name, reason) in ensemble_problems(catalog.agents).items():
        file = next((f for f, n in catalog.files.items() if n == name), f"{name}.yaml")
        catalog.errors.append(AgentFileError(file, field_name, reason))
        del catalog.agents[name]


def ensemble_problems(
    agents: dict[str, AgentDefinition], visible: Callable[[str], bool] | None = None
) -> dict[str, tuple[str, str]]:
    """The ensembles of ``agents`` that cannot run: name -> (field, reason). A member or combiner
    must be an agent of ``agents`` (and, when ``visible`` is given, one it accepts: a tenant's
    allow-list) and not an ensemble itself. Members being plain agents, one pass finds them all."""
    problems: dict[str, tuple[str, str]] = {}
    for name, agent in agents.items():
        if not agent.is_ensemble:
            continue
        for field_name, names in (("members", agent.members), ("combiner", [agent.combiner])):
            absent = [n for n in names if n is None or n not in agents or (visible is not None and not visible(n))]
            nested = [n for n in names if n is not None and n not in absent and agents[n].is_ensemble]
            if absent or nested:
                problems[name] = (field_name, (
                    f"no agent {', '.join(map(repr, absent))}"
                    if absent
                    else f"{', '.join(map(repr, nested))} is an ensemble; members and combiner must be plain agents"
                ))
                break
    return problems


def _reason(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    return error["msg"].removeprefix("Value error, ")
