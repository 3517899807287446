"""``/api/agents``: each tenant's agents as managed resources.

A tenant sees the agents of ``AGENTS_DIR`` (``source: "file"``, read-only here) and its own
(``source: "api"``), stored in the AGENTS bucket and applied by every edge and agent runner as soon
as the server delivers the change (agentstream.agentstore). Its allow-list (keys file ``agents:``)
applies on top. Another tenant's agents do not exist for it: 404.

=====================================  ==================================================================
``GET /api/agents``                    the tenant's agents (LocalAI's shape), each with ``source``,
                                       ``paused``, ``revision``; and the errors of agents that cannot run
``POST /api/agents``                   create (JSON, YAML, or LocalAI's agent configuration) → 201
``GET /api/agents/{name}``             one agent
``PUT /api/agents/{name}``             create or replace; of a file agent: the tenant's own copy, which
                                       then wins for it. ``?revision=N``: roll back to revision N
``DELETE /api/agents/{name}``          delete the tenant's own agent (a file agent it copied is back)
``POST /api/agents/{name}/pause``      runs of it are refused (409 ``agent_paused``); queued ones wait
``POST /api/agents/{name}/resume``     and go on
``GET /api/agents/{name}/export``      the definition as YAML (no secret: ``llm.api_key_env`` is a name)
``POST /api/agents/import``            one agent or a list (JSON or YAML), all or nothing
``GET /api/agents/{name}/revisions``   the stored revisions: number, time, definition
=====================================  ==================================================================

Every write is checked first, with the rules and messages of ``agentstream agents check``
(agentstream.agents, agentstream.agentwrites): 422 naming the field when the agent is not valid,
409 when another agent of the tenant would stop working (an ensemble using it), so a bad write
never breaks a working agent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import yaml
from quart import Blueprint, Response, request

from agentstream.agents import AgentFileError, check_document, load_document
from agentstream.agentstore import MCP_SERVERS_REFUSAL, TenantCatalog, check_own
from agentstream.agentwrites import AgentWriter, Change, ChangedMeanwhile, Refusal, StoreUnavailable, check_changes
from agentstream.localai_config import LocalAIFieldError, from_localai
from edge.auth import Tenant
from edge.errors import ApiError
from edge.guard import YAML_TYPES
from edge.http import json_response, state, tenant
from schemas import subjects
from schemas.agents import AgentAction, AgentDefinition, StoredAgent
from schemas.streams import MAX_AGENT_ENTRY_BYTES

log = logging.getLogger(__name__)

bp = Blueprint("agents", __name__)

BODY = "body"
ENTRY_OVERHEAD = 1024
"""Bytes of an AGENTS entry besides the definition (action, key id, revision it restored)."""
T = TypeVar("T")


# -- reading


@bp.get("/api/agents")
async def list_agents() -> Response:
    """``GET /api/agents``: the tenant's agents that can run, in LocalAI's shape (``agents``,
    ``agentCount``, ``statuses``: name -> active) plus ``items`` (each with ``source``, ``paused``,
    ``revision``) and ``errors`` (agents that cannot run: file, field, reason)."""
    t = tenant()
    st = state()
    catalog = st.agents.catalog(t.name)
    agents = [a for name, a in sorted(catalog.agents.items()) if t.may_use(name)]
    # The agents directory's errors are every tenant's (as before); the tenant's agents' only if it may use them.
    visible_errors = [*catalog.files.errors, *(e for name, errors in sorted(catalog.invalid.items())
                                               if t.may_use(name) for e in errors)]
    return json_response({
        "tenant": t.name,
        "agents": [a.name for a in agents],
        "agentCount": len(agents),
        "actions": len({x for a in agents for x in a.tool_names}),
        "connectors": 0,
        "statuses": {a.name: st.agents.paused(t.name, a.name) is None for a in agents},
        "items": [_summary(t, catalog, a) for a in agents],
        "errors": [e.as_dict() for e in visible_errors],
    })


@bp.get("/api/agents/<name>")
async def get_agent(name: str) -> Response:
    """``GET /api/agents/{name}``: the agent (LocalAI's ``active``, every field, ``source``,
    ``paused``, ``revision``, ``valid`` and ``errors``); 404 naming ``name`` if the tenant has none."""
    t = tenant()
    catalog = _catalog_with(t, name)
    return json_response(_view(t, catalog, name))


@bp.get("/api/agents/<name>/export")
async def export_agent(name: str) -> Response:
    """``GET /api/agents/{name}/export``: the agent's definition as a YAML file, ready for
    ``POST /api/agents/import`` or ``AGENTS_DIR``. It holds no secret: an agent names the variable
    holding its key (``llm.api_key_env``), never the key."""
    t = tenant()
    catalog = _catalog_with(t, name)
    doc = _document(catalog, name)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)
    return Response(text.encode(), content_type="application/yaml; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.yaml"'})


@bp.get("/api/agents/<name>/revisions")
async def agent_revisions(name: str) -> Response:
    """``GET /api/agents/{name}/revisions``: the tenant's stored revisions of the agent, newest
    first: ``revision`` (the number ``PUT ?revision=`` takes), ``time``, ``action``, ``deleted``,
    ``definition``. A file agent the tenant never copied has none. 404 if the tenant has no agent
    ``name`` and never had."""
    t = tenant()
    _check_name(name)
    if not t.may_use(name):
        raise _not_found(name)
    writer = _writer()
    revisions = await _unavailable_as_503(writer.revisions(t.name, name))
    catalog = state().agents.catalog(t.name)
    if not revisions and not catalog.exists(name):
        raise _not_found(name)
    return json_response({
        "name": name,
        "source": catalog.source(name),
        "current": catalog.revision(name),
        "revisions": [{
            "revision": r.revision,
            "time": r.time.isoformat().replace("+00:00", "Z"),
            "action": r.stored.action if r.stored else "delete",
            "deleted": r.stored is None,
            "key_id": r.stored.key_id if r.stored else None,
            "from_revision": r.stored.from_revision if r.stored else None,
            "definition": r.stored.definition if r.stored else None,
        } for r in reversed(revisions)],
    })


# -- writing


@bp.post("/api/agents")
async def create_agent() -> Response:
    """``POST /api/agents`` with one agent (JSON, YAML with ``Content-Type: application/yaml``, or
    LocalAI's agent configuration) → 201 and the agent. 409 when the tenant has an agent of that
    name (``PUT`` replaces, and copies a file agent), 422 naming the field when it is not valid."""
    t = tenant()
    doc = await _body()
    if isinstance(doc, list):
        raise ApiError(422, "invalid_agent", "the body holds a list: POST /api/agents/import takes several agents",
                       BODY)
    definition = _definition(doc, None)
    _check_allowed(t, definition.name)
    catalog = state().agents.catalog(t.name)
    if catalog.exists(definition.name) or definition.name in catalog.own:
        raise ApiError(409, "agent_exists", f"agent {definition.name!r} exists ({catalog.source(definition.name)}); "
                       f"PUT /api/agents/{definition.name} replaces it", "name")
    revisions = await _store(t, [Change(definition.name, definition)], action="create")
    return _written(t, definition.name, revisions[0], 201)


@bp.put("/api/agents/<name>")
async def put_agent(name: str) -> Response:
    """``PUT /api/agents/{name}``: create or replace the tenant's agent (201 when it had no own
    agent of that name, else 200). The body's ``name``, if any, must be ``name``. With
    ``?revision=N`` (no body): roll back to the tenant's revision N, stored as a new revision;
    404 naming ``revision`` if the tenant has no such revision of the agent."""
    t = tenant()
    _check_name(name)
    _check_allowed(t, name)
    raw_revision = request.args.get("revision")
    from_revision = None
    if raw_revision is not None:
        from_revision = _revision_number(raw_revision)
        stored = await _unavailable_as_503(_writer().revision(t.name, name, from_revision))
        if stored is None:
            raise ApiError(404, "not_found", f"agent {name!r} has no revision {from_revision}", "revision")
        definition = _definition(stored.definition, name)
    else:
        definition = _definition(await _body(), name)
    existed = name in state().agents.catalog(t.name).own
    action: AgentAction = "rollback" if from_revision is not None else "update" if existed else "create"
    revisions = await _store(t, [Change(name, definition)], action=action, from_revision=from_revision)
    return _written(t, name, revisions[0], 200 if existed else 201)


@bp.delete("/api/agents/<name>")
async def delete_agent(name: str) -> Response:
    """``DELETE /api/agents/{name}``: delete the tenant's own agent (its revisions stay, for
    rollback); a file agent it had copied is its agent again. 409 ``read_only`` for a file agent
    it never copied, 409 ``agent_in_use`` when an ensemble of the tenant uses it, 404 if none."""
    t = tenant()
    catalog = _catalog_with(t, name)
    if name not in catalog.own:
        raise ApiError(409, "read_only", f"agent {name!r} comes from the agents directory (AGENTS_DIR) and cannot be "
                       f"deleted over the API; PUT /api/agents/{name} makes the tenant's own copy", "name")
    revisions = await _store(t, [Change(name, None)], action="update")
    after = state().agents.catalog(t.name)
    if not after.exists(name):
        await _unavailable_as_503(_writer().resume(t.name, name))
    return json_response({"name": name, "deleted": True, "revision": revisions[0], "source": after.source(name)})


@bp.post("/api/agents/import")
async def import_agents() -> Response:
    """``POST /api/agents/import``: one agent or a list (JSON or YAML), each created or replaced as
    ``PUT`` would; all are checked first and none is stored unless all may be (errors name the
    field as ``{index}.{field}`` for a list). → 200 ``{"agents": [{"name", "revision", "created"}]}``."""
    t = tenant()
    doc = await _body()
    many = isinstance(doc, list)
    docs = doc if many else [doc]
    if not docs:
        raise ApiError(422, "invalid_agent", "the list holds no agent", BODY)
    if len(docs) > state().settings.agents_max_per_tenant:
        raise ApiError(409, "limit_reached", f"at most {state().settings.agents_max_per_tenant} agents per tenant "
                       "(AGENTS_MAX_PER_TENANT)", BODY)
    definitions: list[AgentDefinition] = []
    for i, item in enumerate(docs):
        definition = _definition(item, None, index=i if many else None)
        if any(d.name == definition.name for d in definitions):
            raise _invalid([AgentFileError(BODY, "name", f"agent {definition.name!r} is listed twice")],
                           i if many else None)
        _check_allowed(t, definition.name)
        definitions.append(definition)
    own_before = set(state().agents.catalog(t.name).own)
    revisions = await _store(t, [Change(d.name, d) for d in definitions], action="import", many=many)
    return json_response({"agents": [
        {"name": d.name, "revision": rev, "created": d.name not in own_before}
        for d, rev in zip(definitions, revisions, strict=True)
    ]})


@bp.post("/api/agents/<name>/pause")
async def pause_agent(name: str) -> Response:
    """``POST /api/agents/{name}/pause`` (body ``{}`` or none): from now on every API that submits
    runs answers 409 ``agent_paused``; runs already queued wait on the agent runners (they are not
    failed) until ``resume``. Kept in the AGENT_PAUSES bucket: it survives restarts."""
    t = tenant()
    _catalog_with(t, name)
    pause = await _unavailable_as_503(_writer().pause(t.name, name, t.key_id))
    return json_response({"name": name, "paused": True, "paused_at": _iso(pause.since)})


@bp.post("/api/agents/<name>/resume")
async def resume_agent(name: str) -> Response:
    """``POST /api/agents/{name}/resume``: runs are accepted again; queued ones start."""
    t = tenant()
    _catalog_with(t, name)
    await _unavailable_as_503(_writer().resume(t.name, name))
    return json_response({"name": name, "paused": False})


# -- helpers


async def _store(t: Tenant, changes: list[Change], *, action: AgentAction, from_revision: int | None = None,
                 many: bool = False) -> list[int]:
    """Check ``changes`` against the tenant's catalog and store them, all or none; returns each
    one's new revision. A change made meanwhile by another edge is read and checked again once."""
    st = state()
    writer = _writer()
    for _ in range(2):
        catalog = st.agents.catalog(t.name)
        refusals = check_changes(catalog, changes, t.may_use)
        if refusals:
            raise _refused(refusals, many)
        own_after = set(catalog.own) | {c.name for c in changes if c.definition is not None}
        own_after -= {c.name for c in changes if c.definition is None}
        if len(own_after) > st.settings.agents_max_per_tenant and len(own_after) > len(catalog.own):
            raise ApiError(409, "limit_reached", f"tenant {t.name} has {len(catalog.own)} agents of its own, at most "
                           f"{st.settings.agents_max_per_tenant} (AGENTS_MAX_PER_TENANT); delete some first", "name")
        try:
            return await _write_all(writer, t, catalog, changes, action, from_revision)
        except ChangedMeanwhile:
            for change in changes:
                await st.agents.refresh(t.name, change.name)
        except StoreUnavailable as err:
            log.error("agents of %s not stored: %s", t.name, err)
            raise ApiError(503, "unavailable", "the agent could not be stored; nothing was changed; retry",
                           retry_after=1) from None
    raise ApiError(409, "conflict", "the agent is being changed by another request; retry", "name")


async def _write_all(writer: AgentWriter, t: Tenant, catalog: TenantCatalog, changes: list[Change], action: AgentAction,
                     from_revision: int | None) -> list[int]:
    """Write ``changes`` in order; when one fails, put back what the earlier ones replaced."""
    registry = state().agents
    written: list[tuple[str, int]] = []
    try:
        for change in changes:
            last = registry.last_revision(t.name, change.name)
            if change.definition is None:
                revision = await writer.delete(t.name, change.name, last=last)
            else:
                stored = StoredAgent(definition=change.definition.document(), action=action, key_id=t.key_id,
                                     from_revision=from_revision)
                revision = await writer.put(t.name, change.name, stored, last=last)
            written.append((change.name, revision))
        return [revision for _, revision in written]
    except (ChangedMeanwhile, StoreUnavailable):
        for name, revision in reversed(written):
            before = catalog.own.get(name)
            try:
                if before is None or before.stored is None:
                    await writer.delete(t.name, name, last=revision)
                else:
                    await writer.put(t.name, name, before.stored, last=revision)
            except (ChangedMeanwhile, StoreUnavailable) as err:
                log.error("tenant %s: agent %s could not be put back after a failed import: %s", t.name, name, err)
        raise


def _refused(refusals: list[Refusal], many: bool) -> ApiError:
    first = next((r for r in refusals if r.status == 422), refusals[0])  # the agent's own fault first

    def field(r: Refusal) -> str | None:
        return _prefixed(r.error.field or "name", r.index if many else None)

    where = field(first)
    return ApiError(first.status, first.type, f"{where}: {first.error.reason}", where,
                    agent=first.error.file,
                    errors=[{"agent": r.error.file, "field": field(r), "reason": r.error.reason} for r in refusals])


def _definition(doc: Any, url_name: str | None, *, index: int | None = None) -> AgentDefinition:
    """The agent ``doc`` defines, validated as ``agentstream agents check`` validates a file (LocalAI's
    fields mapped first). ``url_name``: the name in the URL, which the body's must match (a body
    without one gets it). ApiError 422 naming the field (``{index}.{field}`` in a list)."""
    if not isinstance(doc, dict):
        raise _invalid([AgentFileError(BODY, None, "expected an agent: a mapping of fields (name: ..., model: ...)")],
                       index)
    if "mcp_servers" in doc and doc["mcp_servers"] not in (None, []):  # ours or LocalAI's: never over the API
        raise _invalid([AgentFileError(BODY, "mcp_servers", MCP_SERVERS_REFUSAL)], index)
    try:
        doc = from_localai(doc)
    except LocalAIFieldError as err:  # its message names the field already
        where = _prefixed(err.field, index)
        raise ApiError(422, "invalid_agent", str(err), where, errors=[{"field": where, "reason": str(err)}]) from None
    if url_name is not None:
        named = doc.get("name")
        if named is None:
            doc = {**doc, "name": url_name}
        elif named != url_name:
            raise _invalid([AgentFileError(BODY, "name", f"the body names agent {str(named)[:80]!r}, the URL "
                                           f"{url_name!r}")], index)
    label = str(doc.get("name"))[:64] if isinstance(doc.get("name"), str) else "body"
    definition, errors = check_document(doc, label, key_env_pattern=state().settings.llm_key_env_pattern)
    if definition is None:  # an error of the whole document (its size, a rule across fields) is the body's
        raise _invalid([AgentFileError(e.file, e.field or BODY, e.reason) for e in errors], index)
    refused = check_own(definition, label, state().agents.servers)
    if refused is not None:
        raise _invalid([refused], index)
    stored = len(orjson.dumps(definition.document()))
    if stored > MAX_AGENT_ENTRY_BYTES - ENTRY_OVERHEAD:  # characters JSON escapes take up to 6 bytes each
        raise _invalid([AgentFileError(label, BODY, f"the agent takes {stored} bytes as stored; at most "
                                       f"{MAX_AGENT_ENTRY_BYTES - ENTRY_OVERHEAD}")], index)
    return definition


def _invalid(errors: list[AgentFileError], index: int | None) -> ApiError:
    """422 ``invalid_agent``: the message and ``field`` are the first error's (``field: reason``, as
    ``agentstream agents check`` prints it), ``errors`` lists them all."""
    first = errors[0]
    where = _prefixed(first.field, index)
    message = f"{where}: {first.reason}" if where else first.reason
    return ApiError(422, "invalid_agent", message, where,
                    errors=[{"field": _prefixed(e.field, index), "reason": e.reason} for e in errors])


def _prefixed(field: str | None, index: int | None) -> str | None:
    if index is None:
        return field
    return f"{index}.{field}" if field else str(index)


async def _body() -> Any:
    """The request body: JSON (``application/json``) or YAML (edge.guard.YAML_TYPES; read without
    aliases, as agent files are). ApiError 400 (does not parse), 415 (another type), 422 (an alias)."""
    mimetype = (request.mimetype or "").lower()
    raw = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    if mimetype in YAML_TYPES:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ApiError(400, "invalid_yaml", f"the body is not UTF-8 text (byte {err.start})", BODY) from None
        doc, problem = load_document(text, BODY)
        if problem is not None:
            if problem.reason.startswith("YAML syntax error"):
                raise ApiError(400, "invalid_yaml", f"the body is not valid YAML: {problem.reason}", BODY)
            raise _invalid([AgentFileError(BODY, problem.field or BODY, problem.reason)], None)
        return doc
    if mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the agent as JSON ('Content-Type: application/json') or "
                       "YAML ('Content-Type: application/yaml')", "Content-Type")
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body must be an agent (a JSON object)", BODY)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {err}", BODY) from None


def _check_name(name: str) -> None:
    if not subjects.is_token(name):
        raise ApiError(400, "invalid_name", f"{name[:80]!r} is not a valid agent name (1-64 of A-Z a-z 0-9 _ -)",
                       "name")


def _check_allowed(t: Tenant, name: str) -> None:
    """ApiError 403 when the tenant's allow-list (keys file ``agents:``) leaves ``name`` out."""
    if not t.may_use(name):
        raise ApiError(403, "forbidden_agent", f"tenant {t.name!r} may not use an agent named {name!r} (its "
                       "allow-list in the keys file)", "name")


def _not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"no agent named {name!r}", "name")


def _catalog_with(t: Tenant, name: str) -> TenantCatalog:
    """The tenant's catalog, once it is known to hold ``name`` (runnable or not) and the tenant may
    use it. ApiError 400 / 404 naming ``name``."""
    _check_name(name)
    catalog = state().agents.catalog(t.name)
    if not catalog.exists(name) or not t.may_use(name):
        raise _not_found(name)
    return catalog


def _document(catalog: TenantCatalog, name: str) -> dict[str, Any]:
    """The agent's definition document (a file agent's, or the tenant's stored one, even if invalid)."""
    own = catalog.own.get(name)
    if own is not None and own.stored is not None:
        return own.stored.definition
    agent = catalog.get(name) or catalog.files.agents.get(name)
    if agent is None:  # an invalid agent whose entry cannot be read: nothing to show
        return {"name": name}
    return agent.document()


def _summary(t: Tenant, catalog: TenantCatalog, agent: AgentDefinition) -> dict[str, Any]:
    return {
        "name": agent.name, "description": agent.description, "model": agent.model,
        "actions": agent.tool_names, "skills": agent.skills, "max_steps": agent.max_steps,
        "members": agent.members, "source": catalog.source(agent.name),
        "paused": state().agents.paused(t.name, agent.name) is not None, "revision": catalog.revision(agent.name),
    }


def _view(t: Tenant, catalog: TenantCatalog, name: str) -> dict[str, Any]:
    """What ``GET /api/agents/{name}`` shows: every field (of an agent that cannot run: its name
    only), its ``definition`` as stored or in its file (what ``PUT`` takes back; the web page's
    editor starts from it), and where the agent stands."""
    agent = catalog.get(name)
    pause = state().agents.paused(t.name, name)
    own = catalog.own.get(name)
    fields = agent.public_view() if agent is not None else {"name": name}
    return {
        "active": pause is None and agent is not None,
        **fields,
        "definition": _document(catalog, name),
        "source": catalog.source(name),
        "paused": pause is not None,
        "paused_at": _iso(pause.since) if pause else None,
        "revision": own.revision if own else None,
        "updated_at": _iso(own.time) if own else None,
        "valid": agent is not None,
        "errors": [e.as_dict() for e in catalog.invalid.get(name, [])],
    }


def _written(t: Tenant, name: str, revision: int, status: int) -> Response:
    catalog = state().agents.catalog(t.name)
    return json_response({**_view(t, catalog, name), "revision": revision}, status,
                         headers={"Location": f"/api/agents/{name}"})


def _revision_number(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise ApiError(400, "invalid_request", f"revision must be a positive integer, not {raw[:40]!r}", "revision")
    return int(raw)


def _writer() -> AgentWriter:
    writer = state().agent_writer
    if writer is None:
        raise ApiError(503, "unavailable", "the edge is not connected to NATS yet; retry shortly", retry_after=1)
    return writer


async def _unavailable_as_503(work: Awaitable[T]) -> T:
    try:
        return await work
    except StoreUnavailable as err:
        log.error("agents bucket: %s", err)
        raise ApiError(503, "unavailable", "the agents could not be read or written; retry", retry_after=1) from None


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
