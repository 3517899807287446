"""Each tenant's agents, as every edge and agent runner sees them, kept current without a restart.

A tenant's **effective catalog** (:class:`TenantCatalog`) is:

- the agents of ``AGENTS_DIR`` (loaded once at start-up, agentstream.agents), seen by every tenant;
- over them, the tenant's own agents, created over the API and stored in the AGENTS bucket under
  ``{tenant}.{agent}`` (schemas/subjects.py). An own agent with the name of a file agent is the
  tenant's copy of it and wins for that tenant. An own agent that is not valid (here: another
  ``LLM_KEY_ENV_PATTERN``, a skill file since removed) hides the file agent of its name and is
  reported, not run;
- ensembles checked per tenant: members and combiner must be agents of the tenant's catalog and
  not ensembles; one that is not is reported and left out.

Which agents are paused is kept beside it (bucket AGENT_PAUSES, same keys). The tenant's
allow-list (keys file ``agents:``) is applied by the callers, on top.

:class:`AgentRegistry` follows both buckets with :class:`agentstream.kvwatch.BucketWatcher`, so a
change made on any edge reaches every edge and runner as soon as the server delivers it (in
milliseconds). A writer applies its own write at once (:meth:`AgentRegistry.apply_agent`), and a
runner that does not know an agent reads its key before giving up (:meth:`AgentRegistry.refresh`),
so an agent created on one edge is never missing for a run submitted right after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from agentstream.agents import AgentCatalog, AgentFileError, Skill, check_document, ensemble_problems, missing_skills
from agentstream.kvwatch import BucketEntry, BucketWatcher
from agentstream.origins import ModelServers
from schemas import subjects
from schemas.agents import AgentDefinition, AgentPause, StoredAgent

log = logging.getLogger(__name__)

Source = Literal["file", "api"]
SOURCE_FILE: Source = "file"
SOURCE_API: Source = "api"


def api_label(name: str) -> str:
    """How errors name an agent stored over the API (where a file agent's errors name its file)."""
    return f"api:{name}"


@dataclass(frozen=True)
class OwnAgent:
    """A tenant's agent as the AGENTS bucket holds it now: its ``revision`` (the entry's stream
    sequence), ``time`` (Unix seconds), the ``stored`` entry, and its ``definition`` (None when it
    is not valid here: ``problems`` say why)."""

    tenant: str
    name: str
    revision: int
    time: float
    stored: StoredAgent | None
    definition: AgentDefinition | None
    problems: tuple[AgentFileError, ...] = ()


@dataclass(frozen=True)
class PauseState:
    """A paused agent: since when (Unix seconds), by which key (``key_id``, may be None), and the
    AGENT_PAUSES entry's revision."""

    since: float
    key_id: str | None
    revision: int


@dataclass
class TenantCatalog:
    """One tenant's effective agents (see the module docstring); a snapshot, rebuilt on change.

    ``agents``: those that can run; ``invalid``: name -> errors, for agents of the tenant that
    cannot run (an own agent that is not valid, an ensemble whose members are not plain agents of
    this catalog); ``errors``: the agents directory's errors and these; ``own``: the tenant's own
    agents, valid or not.
    """

    tenant: str
    files: AgentCatalog
    agents: dict[str, AgentDefinition] = field(default_factory=dict)
    own: dict[str, OwnAgent] = field(default_factory=dict)
    invalid: dict[str, list[AgentFileError]] = field(default_factory=dict)
    errors: list[AgentFileError] = field(default_factory=list)

    @property
    def skills(self) -> dict[str, Skill]:
        """The skills agents may list: those of ``AGENTS_DIR/skills``."""
        return self.files.skills

    def get(self, name: str) -> AgentDefinition | None:
        """The agent called ``name`` if it can run, else None."""
        return self.agents.get(name)

    def skills_of(self, agent: AgentDefinition) -> list[Skill]:
        """The skills an agent lists, in its order (missing ones left out: reported already)."""
        return self.files.skills_of(agent)

    def source(self, name: str) -> Source | None:
        """Where the agent ``name`` comes from: ``api`` (the tenant's own), ``file``, or None."""
        if name in self.own:
            return SOURCE_API
        return SOURCE_FILE if name in self.files.agents else None

    def revision(self, name: str) -> int | None:
        """The AGENTS revision of the tenant's own agent ``name`` (None for a file agent)."""
        own = self.own.get(name)
        return own.revision if own is not None else None

    def created(self, name: str) -> int:
        """When the agent was last changed (Unix seconds): its file's time, or its revision's."""
        own = self.own.get(name)
        return int(own.time) if own is not None else self.files.created.get(name, 0)

    def exists(self, name: str) -> bool:
        """True when the tenant has an agent ``name``, whether it can run or not."""
        return name in self.agents or name in self.invalid


def build_catalog(files: AgentCatalog, tenant: str, own: dict[str, OwnAgent]) -> TenantCatalog:
    """The effective catalog of ``tenant`` from the agents directory ``files`` and the tenant's
    own agents ``own`` (see the module docstring)."""
    catalog = TenantCatalog(tenant=tenant, files=files, own=dict(own))
    agents = dict(files.agents)
    invalid: dict[str, list[AgentFileError]] = {}
    for name, mine in own.items():
        agents.pop(name, None)
        if mine.definition is None:
            invalid[name] = list(mine.problems)
            continue
        missing = missing_skills(mine.definition, files.skills, api_label(name))
        if missing is not None:
            invalid[name] = [missing]
            continue
        agents[name] = mine.definition
    for name, (field_name, reason) in ensemble_problems(agents).items():
        label = api_label(name) if name in own else next((f for f, n in files.files.items() if n == name),
                                                           f"{name}.yaml")
        invalid[name] = [AgentFileError(label, field_name, reason)]
        del agents[name]
    catalog.agents = agents
    catalog.invalid = invalid
    catalog.errors = [*files.errors, *(e for name in sorted(invalid) for e in invalid[name])]
    return catalog


MCP_SERVERS_REFUSAL = (
    "agents created over the API cannot declare MCP servers: a stdio server is a program started on a tool "
    "runner, and tool runners take MCP servers only from the agent files of their own AGENTS_DIR "
    "(docs/security.md); ask the operator for an agent file"
)
"""Why ``mcp_servers`` is refused in an agent created over the API (field ``mcp_servers``)."""


def check_own(definition: AgentDefinition, label: str, servers: ModelServers) -> AgentFileError | None:
    """What an agent created over the API may not do that an agent file may: declare MCP servers
    (``mcp_servers``, any kind: :data:`MCP_SERVERS_REFUSAL`), or name a model server the operator
    did not list (``llm.base_url``, agentstream.origins). None when it is fine."""
    if definition.mcp_servers:
        return AgentFileError(label, "mcp_servers", MCP_SERVERS_REFUSAL)
    base_url = definition.llm.base_url if definition.llm else None
    if base_url and not servers.allows(base_url):
        return AgentFileError(label, "llm.base_url", servers.refusal(base_url))
    return None


def own_agent(tenant: str, name: str, entry: BucketEntry, *, key_env_pattern: str,
              servers: ModelServers) -> OwnAgent:
    """The :class:`OwnAgent` an AGENTS entry holds (validated as an agent file is, and by
    :func:`check_own`; never raises)."""
    label = api_label(name)
    assert entry.value is not None
    try:
        stored = StoredAgent.model_validate_json(entry.value)
    except ValidationError as err:
        problem = AgentFileError(label, None, f"unreadable entry (revision {entry.revision}): {err.errors()[0]['msg']}")
        return OwnAgent(tenant, name, entry.revision, entry.time, None, None, (problem,))
    definition, problems = check_document(stored.definition, label, key_env_pattern=key_env_pattern)
    if definition is not None and definition.name != name:
        problems = [AgentFileError(label, "name", f"the entry names agent {definition.name!r}")]
        definition = None
    if definition is not None and (refused := check_own(definition, label, servers)) is not None:
        problems = [refused]
        definition = None
    return OwnAgent(tenant, name, entry.revision, entry.time, stored, definition, tuple(problems))


class AgentRegistry:
    """Every tenant's effective catalog and paused agents on this process (see the module docstring).

    ``files``: the agents directory's catalog; ``key_env_pattern``: LLM_KEY_ENV_PATTERN, which own
    agents are checked against as files are; ``servers``: the model servers own agents may name
    (AGENTS_LLM_ORIGINS; default: none but LLM_BASE_URL's). Use :meth:`start` to follow the
    buckets (before it, tenants see the file agents only), :meth:`stop` at the end.
    """

    def __init__(self, files: AgentCatalog, *, key_env_pattern: str, servers: ModelServers | None = None):
        self.files = files
        self.key_env_pattern = key_env_pattern
        self.servers = servers or ModelServers()
        self._own: dict[str, dict[str, OwnAgent]] = {}
        self._paused: dict[str, dict[str, PauseState]] = {}
        self._seen: dict[tuple[str, str, str], int] = {}  # (bucket, tenant, agent) -> last revision applied
        self._catalogs: dict[str, TenantCatalog] = {}
        self._changed = asyncio.Event()
        self._watchers: list[BucketWatcher] = []
        self._js: JetStreamContext | None = None

    # -- reading

    def catalog(self, tenant: str) -> TenantCatalog:
        """The tenant's effective catalog now (a snapshot; do not change it)."""
        catalog = self._catalogs.get(tenant)
        if catalog is None:
            catalog = self._catalogs[tenant] = build_catalog(self.files, tenant, self._own.get(tenant, {}))
        return catalog

    def get(self, tenant: str, name: str) -> AgentDefinition | None:
        """The tenant's agent ``name`` if it can run, else None."""
        return self.catalog(tenant).get(name)

    def skills_of(self, agent: AgentDefinition) -> list[Skill]:
        """The skills an agent lists (from ``AGENTS_DIR/skills``), in its order."""
        return self.files.skills_of(agent)

    def paused(self, tenant: str, name: str) -> PauseState | None:
        """The pause of the tenant's agent ``name``, or None when it is not paused."""
        return self._paused.get(tenant, {}).get(name)

    def last_revision(self, tenant: str, name: str) -> int:
        """The revision of the latest AGENTS entry of the tenant's ``name`` seen here, deletions
        included (0: none). Writes are made conditional on it."""
        return self._seen.get((subjects.AGENTS_BUCKET, tenant, name), 0)

    async def changed(self) -> None:
        """Return at the next change of any agent or pause."""
        await self._changed.wait()

    # -- following the buckets

    async def start(self, js: JetStreamContext, within: float = 30.0) -> None:
        """Follow AGENTS and AGENT_PAUSES; returns once the entries present now are applied.
        Raises TimeoutError after ``within`` seconds, or a nats error if a bucket cannot be read."""
        self._js = js
        for bucket, apply in ((subjects.AGENTS_BUCKET, self.apply_agent),
                              (subjects.AGENT_PAUSES_BUCKET, self.apply_pause)):

            async def on_entry(entry: BucketEntry, apply: Any = apply) -> None:
                apply(entry)

            watcher = BucketWatcher(js, bucket, on_entry)
            self._watchers.append(watcher)
            await watcher.start(within)

    async def stop(self) -> None:
        """Stop following the buckets."""
        for watcher in self._watchers:
            await watcher.stop()
        self._watchers.clear()

    async def refresh(self, tenant: str, name: str) -> None:
        """Read the tenant's entries for ``name`` from both buckets now and apply them (when newer
        than what was seen). For a runner about to refuse a run of an agent it does not know yet.
        Errors reading are logged; the watcher still brings the entries."""
        if self._js is None:
            return
        key = subjects.agent_key(tenant, name)
        for bucket, apply in ((subjects.AGENTS_BUCKET, self.apply_agent),
                              (subjects.AGENT_PAUSES_BUCKET, self.apply_pause)):
            try:
                msg = await self._js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=True)
            except nats.js.errors.NotFoundError:
                continue
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
                log.warning("could not read %s of %s: %s", name, tenant, err)
                continue
            deleted = (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data
            apply(BucketEntry(key, None if deleted else msg.data, msg.seq or 0,
                              msg.time.timestamp() if msg.time else time.time()))

    async def resolve(self, tenant: str, name: str) -> None:
        """:meth:`refresh` ``name``, and when it is an ensemble of the tenant, its members and
        combiner this process does not know yet."""
        await self.refresh(tenant, name)
        own = self.catalog(tenant).own.get(name)
        if own is not None and own.definition is not None and own.definition.is_ensemble:
            for part in [*own.definition.members, own.definition.combiner]:
                if part is not None and self.get(tenant, part) is None:
                    await self.refresh(tenant, part)

    def apply_agent(self, entry: BucketEntry) -> None:
        """Apply one AGENTS entry (from the watcher, a refresh, or this process' own write). An
        entry older than one applied already is ignored."""
        where = self._key(subjects.AGENTS_BUCKET, entry)
        if where is None:
            return
        tenant, name = where
        own = self._own.setdefault(tenant, {})
        if entry.value is None:
            own.pop(name, None)
        else:
            agent = own[name] = own_agent(tenant, name, entry, key_env_pattern=self.key_env_pattern,
                                          servers=self.servers)
            for problem in agent.problems:
                log.warning("tenant %s: agent %s (revision %d) cannot run: %s", tenant, name, entry.revision, problem)
        if not own:
            del self._own[tenant]
        self._catalogs.pop(tenant, None)
        self._bump()

    def apply_pause(self, entry: BucketEntry) -> None:
        """Apply one AGENT_PAUSES entry (as :meth:`apply_agent`)."""
        where = self._key(subjects.AGENT_PAUSES_BUCKET, entry)
        if where is None:
            return
        tenant, name = where
        paused = self._paused.setdefault(tenant, {})
        if entry.value is None:
            paused.pop(name, None)
        else:
            try:
                pause = AgentPause.model_validate_json(entry.value)
                paused[name] = PauseState(pause.paused_at.timestamp(), pause.key_id, entry.revision)
            except ValidationError as err:  # still paused: someone meant it to be
                log.error("tenant %s: unreadable pause of %s (%s); taken as paused", tenant, name, err)
                paused[name] = PauseState(entry.time, None, entry.revision)
        if not paused:
            del self._paused[tenant]
        self._bump()

    def _key(self, bucket: str, entry: BucketEntry) -> tuple[str, str] | None:
        try:
            tenant, name = subjects.parse_agent_key(entry.key)
        except subjects.SubjectTokenError:
            log.error("ignoring %s entry with key %r", bucket, entry.key)
            return None
        seen = (bucket, tenant, name)
        if entry.revision and entry.revision <= self._seen.get(seen, 0):
            return None
        self._seen[seen] = entry.revision
        return tenant, name

    def _bump(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
