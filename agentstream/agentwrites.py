"""Changing a tenant's agents: checking a change against the tenant's catalog, then storing it.

A change is checked before anything is stored (:func:`check_changes`), so a bad write can never
break a working agent:

- the agent itself must be valid in the catalog it would join: its skills exist
  (``AGENTS_DIR/skills``), an ensemble's members and combiner are plain agents the tenant has
  and may use; refused with 422 naming the field, as ``agentstream agents check`` names it;
- no other agent of the tenant that works now may stop working: deleting an agent an ensemble
  uses, or turning a member into an ensemble, is refused with 409 naming the ensemble.

Writes are conditional on the key's last revision this process has seen (JetStream's
``Nats-Expected-Last-Subject-Sequence``), so two edges changing one agent at once cannot both
win: the second gets :class:`ChangedMeanwhile` and the caller checks again against the newer entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from agentstream.agents import AgentFileError, ensemble_problems
from agentstream.agentstore import AgentRegistry, OwnAgent, PauseState, TenantCatalog, build_catalog
from agentstream.eventlog import EventLogError, direct_get_batch
from agentstream.kvwatch import BucketEntry
from schemas import headers as H
from schemas import subjects
from schemas.agents import AgentDefinition, AgentPause, StoredAgent
from schemas.streams import AGENT_REVISIONS

log = logging.getLogger(__name__)

_WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(frozen=True)
class Change:
    """One change of a tenant's agents: store ``definition`` as the tenant's agent ``name``, or
    (``definition`` None) delete the tenant's own agent ``name``."""

    name: str
    definition: AgentDefinition | None


@dataclass(frozen=True)
class Refusal:
    """Why a change is refused: HTTP ``status`` (422: the agent itself is not valid; 409: another
    agent would stop working), error ``type``, the index of the change in the list (``index``),
    and the error (its ``file`` is the agent's name)."""

    status: int
    type: str
    index: int
    error: AgentFileError


def check_changes(catalog: TenantCatalog, changes: list[Change], visible: Callable[[str], bool]) -> list[Refusal]:
    """Check ``changes`` (made together) against the tenant's ``catalog``; empty when they may be
    stored. ``visible``: the tenant's allow-list (an ensemble may use only agents it accepts)."""
    own = dict(catalog.own)
    for change in changes:
        if change.definition is None:
            own.pop(change.name, None)
        else:
            own[change.name] = OwnAgent(catalog.tenant, change.name, 0, 0.0, None, change.definition)
    after = build_catalog(catalog.files, catalog.tenant, own)
    hidden = ensemble_problems(after.agents, visible)
    refusals: list[Refusal] = []
    changed = {change.name: i for i, change in enumerate(changes)}
    for i, change in enumerate(changes):
        if change.definition is None:
            continue
        problems = after.invalid.get(change.name, [])
        if not problems and change.name in hidden:
            problems = [AgentFileError(change.name, *hidden[change.name])]
        refusals += [Refusal(422, "invalid_agent", i, AgentFileError(change.name, p.field, p.reason))
                     for p in problems]
    for name in sorted(n for n in catalog.agents if visible(n)):
        if name in changed or name in after.agents:
            continue
        problem = after.invalid.get(name, [AgentFileError(name, None, "it would be gone")])[0]
        culprit = next((i for i, c in enumerate(changes) if _uses(catalog.agents[name], c.name)), 0)
        refusals.append(Refusal(409, "agent_in_use", culprit, AgentFileError(
            changes[culprit].name, None,
            f"agent {name!r} would stop working ({problem.field}: {problem.reason}); change or delete {name!r} first",
        )))
    return refusals


def _uses(agent: AgentDefinition, name: str) -> bool:
    return name in agent.members or agent.combiner == name


class ChangedMeanwhile(Exception):
    """The key was changed by someone else since this process last saw it; check again."""


class StoreUnavailable(Exception):
    """The bucket could not be read or written (NATS down, a timeout); retry."""


@dataclass(frozen=True)
class Revision:
    """One stored revision of a tenant's agent: ``revision`` (the bucket's sequence), ``time``
    (UTC), and the ``stored`` entry (None for a deletion)."""

    revision: int
    time: datetime
    stored: StoredAgent | None


class AgentWriter:
    """Stores tenants' agents (AGENTS) and pauses (AGENT_PAUSES), and applies each write to the
    ``registry`` of this process at once. Every method raises :class:`StoreUnavailable` when NATS
    does not answer; writes raise :class:`ChangedMeanwhile` on a concurrent change."""

    def __init__(self, nc: NATS, registry: AgentRegistry, agents: KeyValue, pauses: KeyValue):
        self.nc = nc
        self.registry = registry
        self.agents = agents
        self.pauses = pauses

    @classmethod
    async def open(cls, nc: NATS, js: JetStreamContext, registry: AgentRegistry) -> AgentWriter:
        """Bind the two buckets (they must exist: declared by the admin identity)."""
        return cls(nc, registry, await js.key_value(subjects.AGENTS_BUCKET),
                   await js.key_value(subjects.AGENT_PAUSES_BUCKET))

    async def put(self, tenant: str, name: str, stored: StoredAgent, *, last: int) -> int:
        """Store ``stored`` as the tenant's agent ``name`` if the key's last revision is ``last``
        (0: none); returns the new revision."""
        key = subjects.agent_key(tenant, name)
        value = stored.model_dump_json(exclude_none=True).encode()
        try:
            revision = await self.agents.update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ChangedMeanwhile(name) from None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from None
        self.registry.apply_agent(BucketEntry(key, value, revision, time.time()))
        return revision

    async def delete(self, tenant: str, name: str, *, last: int) -> int:
        """Delete the tenant's agent ``name`` (a deletion marker: earlier revisions stay, for
        rollback) if the key's last revision is ``last``; returns the marker's revision."""
        key = subjects.agent_key(tenant, name)
        headers = {"KV-Operation": "DEL", H.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        revision = await self._publish(f"$KV.{subjects.AGENTS_BUCKET}.{key}", headers, name)
        self.registry.apply_agent(BucketEntry(key, None, revision, time.time()))
        return revision

    async def pause(self, tenant: str, name: str, key_id: str | None) -> PauseState:
        """Mark the tenant's agent ``name`` paused (kept as it is when already paused)."""
        current = self.registry.paused(tenant, name)
        if current is not None:
            return current
        key = subjects.agent_key(tenant, name)
        value = AgentPause(paused_at=datetime.now(UTC), key_id=key_id).model_dump_json().encode()
        try:
            revision = await self.pauses.put(key, value)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from None
        self.registry.apply_pause(BucketEntry(key, value, revision, time.time()))
        state = self.registry.paused(tenant, name)
        assert state is not None
        return state

    async def resume(self, tenant: str, name: str) -> None:
        """Mark the tenant's agent ``name`` not paused (nothing to do when it is not)."""
        if self.registry.paused(tenant, name) is None:
            return
        key = subjects.agent_key(tenant, name)
        revision = await self._publish(f"$KV.{subjects.AGENT_PAUSES_BUCKET}.{key}", {"KV-Operation": "DEL"}, name)
        self.registry.apply_pause(BucketEntry(key, None, revision, time.time()))

    async def revisions(self, tenant: str, name: str) -> list[Revision]:
        """The stored revisions of the tenant's agent ``name``, oldest first (at most
        ``AGENT_REVISIONS``; deletions included)."""
        subject = f"$KV.{subjects.AGENTS_BUCKET}.{subjects.agent_key(tenant, name)}"
        request = {"seq": 1, "next_by_subj": subject, "batch": AGENT_REVISIONS + 1}
        try:
            msgs, _ = await direct_get_batch(self.nc, f"KV_{subjects.AGENTS_BUCKET}", request,
                                             what=f"revisions of {name}")
        except EventLogError as err:
            raise StoreUnavailable(str(err)) from None
        out: list[Revision] = []
        for msg in msgs:
            headers = msg.headers or {}
            deleted = headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data
            revision = int(headers[H.SEQUENCE])
            try:
                stored = None if deleted else StoredAgent.model_validate_json(msg.data)
            except ValidationError as err:
                log.error("%s revision %d of tenant %s is unreadable, left out: %s", name, revision, tenant, err)
                continue
            out.append(Revision(revision, parse_stamp(headers.get(H.TIME_STAMP, "")), stored))
        return out

    async def revision(self, tenant: str, name: str, number: int) -> StoredAgent | None:
        """Revision ``number`` of the tenant's agent ``name``; None when the bucket does not hold
        it (never held, dropped, a deletion, unreadable, or a revision of another key: of another
        tenant too)."""
        try:
            entry = await self.agents.get(subjects.agent_key(tenant, name), revision=number)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from None
        if not entry.value:
            return None
        try:
            return StoredAgent.model_validate_json(entry.value)
        except ValidationError as err:
            log.error("%s revision %d of tenant %s is unreadable: %s", name, number, tenant, err)
            return None

    async def _publish(self, subject: str, headers: dict[str, str], name: str) -> int:
        try:
            ack = await self.nc.jetstream().publish(subject, b"", headers=headers, timeout=5.0)
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise ChangedMeanwhile(name) from None
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from None
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from None
        return ack.seq


def parse_stamp(text: str) -> datetime:
    """A ``Nats-Time-Stamp`` (RFC 3339, UTC, up to nanoseconds) as a datetime; the epoch if unreadable."""
    main, _, fraction = text.strip().rstrip("Z").partition(".")
    try:
        when = datetime.fromisoformat(main).replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    digits = "".join(c for c in fraction if c.isdigit())[:6]
    return when.replace(microsecond=int(digits.ljust(6, "0"))) if digits else when
