"""Loading a directory of agent YAML files (and their skills) into a catalog.

A bad file (YAML syntax, unknown field, wrong type, unknown tool, missing skill, duplicate name)
is reported as an :class:`AgentFileError` with the file, the field and the reason; every other
file still loads (design card, "Agents").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from schemas.agents import AgentDefinition
from schemas.subjects import is_token

MAX_FILE_BYTES = 256 * 1024
SKILLS_SUBDIR = "skills"


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


def load_skills(directory: Path, errors: list[AgentFileError]) -> dict[str, Skill]:
    """Read ``directory/skills/*.md``. A skill's name is its file name without ``.md``."""
    skills: dict[str, Skill] = {}
    skills_dir = directory / SKILLS_SUBDIR
    if not skills_dir.is_dir():
        return skills
    for path in sorted(skills_dir.glob("*.md")):
        rel = f"{SKILLS_SUBDIR}/{path.name}"
        name = path.stem
        if not is_token(name):
            errors.append(AgentFileError(rel, None, "a skill's file name must be 1-64 of A-Z a-z 0-9 _ - plus .md"))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            errors.append(AgentFileError(rel, None, f"cannot read: {err}"))
            continue
        first = next((line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip()), "")
        skills[name] = Skill(name=name, description=first, text=text)
    return skills


def load_agent_file(path: Path, rel: str) -> tuple[AgentDefinition | None, list[AgentFileError]]:
    """Parse and validate one YAML file. Returns the agent (None if invalid) and its errors."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, [AgentFileError(rel, None, f"file is larger than {MAX_FILE_BYTES} bytes")]
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, [AgentFileError(rel, None, f"cannot read: {err}")]
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        return None, [AgentFileError(rel, None, f"YAML syntax error{where}: {problem}")]
    if not isinstance(doc, dict):
        return None, [AgentFileError(rel, None, "expected a mapping of fields (name: ..., model: ...)")]
    try:
        return AgentDefinition.model_validate(doc), []
    except ValidationError as err:
        return None, [
            AgentFileError(rel, ".".join(str(p) for p in e["loc"]) or None, _reason(e)) for e in err.errors()
        ]


def load_agents(directory: Path) -> AgentCatalog:
    """Load every ``*.yaml`` / ``*.yml`` directly in ``directory`` plus its skills.

    Never raises for a bad file; a missing directory is one catalog error.
    """
    directory = Path(directory)
    catalog = AgentCatalog(directory=directory)
    if not directory.is_dir():
        catalog.errors.append(AgentFileError(str(directory), None, "agents directory not found"))
        return catalog
    catalog.skills = load_skills(directory, catalog.errors)
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in files:
        rel = path.name
        agent, errors = load_agent_file(path, rel)
        if agent is not None:
            missing = [s for s in agent.skills if s not in catalog.skills]
            if missing:
                errors.append(
                    AgentFileError(
                        rel, "skills", f"no skill file {', '.join(f'{SKILLS_SUBDIR}/{m}.md' for m in missing)}"
                    )
                )
            elif agent.name in catalog.agents:
                errors.append(AgentFileError(rel, "name", f"agent {agent.name!r} is already defined by another file"))
            else:
                catalog.agents[agent.name] = agent
                catalog.created[agent.name] = int(path.stat().st_mtime)
                catalog.files[rel] = agent.name
        catalog.errors.extend(errors)
    _check_ensembles(catalog)
    return catalog


def _check_ensembles(catalog: AgentCatalog) -> None:
    """An ensemble's members and combiner must be agents of the directory, and not ensembles."""
    for name, agent in list(catalog.agents.items()):
        if not agent.is_ensemble:
            continue
        for field_name, names in (("members", agent.members), ("combiner", [agent.combiner])):
            problems = [n for n in names if n not in catalog.agents]
            nested = [n for n in names if n in catalog.agents and catalog.agents[n].is_ensemble]
            if problems or nested:
                reason = (
                    f"no agent {', '.join(map(repr, problems))}"
                    if problems
                    else f"{', '.join(map(repr, nested))} is an ensemble; members and combiner must be plain agents"
                )
                file = next((f for f, n in catalog.files.items() if n == name), f"{name}.yaml")
                catalog.errors.append(AgentFileError(file, field_name, reason))
                del catalog.agents[name]
                break


def _reason(error: ErrorDetails) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    msg = error.get("msg", "invalid")
    return msg.removeprefix("Value error, ")
