"""The edge's response bodies, as the OpenAPI document (edge/openapi.py) describes them.

The request bodies are the models the edge validates with (``edge.api_*``); these are what it
answers. The edge builds its answers as plain JSON; ``tests/system/test_openapi_fuzz.py`` checks the live
edge's answers against these models (schemathesis), so a field added to an answer without being
added here fails the suite. Native answers forbid unknown fields; the views of other protocols
(OpenAI, LocalAI, llm-sse, AG-UI, MCP) list the fields agentstream sends and allow the others
their protocol may add.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from agentstream.runstate import RunRecord, RunStatus, ToolCallRecord
from schemas.agents import AgentDefinition
from schemas.common import Strict
from schemas.events import Decision, DecisionSource
from schemas.runs import DeadLetter
from schemas.schedules import Schedule
from schemas.webhooks import DeliveryRecord


class _Open(BaseModel):
    """A protocol's object: the fields listed, and any others the protocol defines."""

    model_config = ConfigDict(extra="allow")


# ----------------------------------------------------------------------------------------------
# errors


class ErrorDetail(_Open):
    """What was refused: ``type`` (``invalid_request``, ``not_found``, ``unauthorized``, ...), a
    human ``message``, and the request ``field`` at fault (None when no one field is). Some
    refusals add context: ``run_id`` / ``run_status`` (409), ``code`` (429)."""

    message: str
    type: str
    field: str | None


class ErrorBody(Strict):
    """Every refusal of the native API, llm-sse, AG-UI and MCP routes (edge/errors.py)."""

    error: ErrorDetail


class OpenAIErrorDetail(_Open):
    """OpenAI's error object: ``param`` names the field at fault, ``code`` the kind."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(Strict):
    """Every refusal on ``/v1``: OpenAI's shape (docs/streaming.md, "Errors before the first byte")."""

    error: OpenAIErrorDetail


class JsonRpcErrorData(_Open):
    """A JSON-RPC 2.0 error (§5.1): ``code`` and ``message``."""

    code: int
    message: str


class JsonRpcErrorBody(_Open):
    """The MCP SDK's refusal of a transport-level problem (no request id: ``id`` is ``server-error``)."""

    jsonrpc: Literal["2.0"]
    id: str | int | None = None
    error: JsonRpcErrorData


class JsonRpcMessage(_Open):
    """One JSON-RPC 2.0 message of the MCP session: a result, an error, or a notification
    (``notifications/progress``) sent while a tool call runs."""

    jsonrpc: Literal["2.0"]


# ----------------------------------------------------------------------------------------------
# health


class KeysFileState(Strict):
    """The keys file in force: its path and, if the file on disk is not the one in force, why."""

    path: str
    problem: str | None


class Health(Strict):
    """``GET /healthz``: ``starting`` (not yet connected to NATS), ``ok`` or ``unhealthy``
    (``problems`` says what the edge cannot do, e.g. ``storage``)."""

    status: Literal["ok", "unhealthy", "starting"]
    nats: Literal["connected", "disconnected"]
    keys_file: KeysFileState | None
    problems: dict[str, Any] | None = None
    watchers: int | None = None
    overflows: int | None = None


# ----------------------------------------------------------------------------------------------
# agents


AgentSource = Literal["file", "api"]
"""Where an agent comes from: ``AGENTS_DIR`` (``file``), or the tenant's own, made over the API (``api``)."""


class AgentSummary(Strict):
    """An agent as ``GET /api/agents`` lists it: its main fields, ``source``, ``paused``, and the
    revision of the tenant's own agent (None for a file agent)."""

    name: str
    description: str
    model: str | None
    actions: list[str]
    skills: list[str]
    max_steps: int
    members: list[str]
    source: AgentSource | None
    paused: bool
    revision: int | None


class AgentFileError(Strict):
    """A problem of one agent file: the file, the field (None: the whole file), the reason."""

    file: str
    field: str | None
    reason: str


class AgentList(Strict):
    """``GET /api/agents``: the caller's agents, LocalAI's shape plus ``items`` and the ``errors``
    of agents that cannot run."""

    tenant: str
    agents: list[str]
    agentCount: int
    actions: int
    connectors: int
    statuses: dict[str, bool]
    items: list[AgentSummary]
    errors: list[AgentFileError]


class AgentView(AgentDefinition):
    """``GET /api/agents/{name}`` (and the answer to a write): every field of the agent (of one that
    cannot run, its ``name`` only; no secret: an agent names the variable holding its key), its
    ``definition`` as stored or in its file (what ``PUT`` takes back), and where it stands."""

    active: bool
    definition: dict[str, Any]
    source: AgentSource | None
    paused: bool
    paused_at: str | None
    revision: int | None
    updated_at: str | None
    valid: bool
    errors: list[AgentFileError]


class AgentDeleted(Strict):
    """``DELETE /api/agents/{name}``: the tenant's own agent is gone (``source``: ``file`` when a
    file agent of that name is its agent again)."""

    name: str
    deleted: Literal[True]
    revision: int
    source: AgentSource | None


class AgentRevision(Strict):
    """One stored revision of a tenant's agent."""

    revision: int
    time: str
    action: str
    deleted: bool
    key_id: str | None
    from_revision: int | None
    definition: dict[str, Any] | None


class AgentRevisions(Strict):
    """``GET /api/agents/{name}/revisions``: newest first; ``current``: the revision in force."""

    name: str
    source: AgentSource | None
    current: int | None
    revisions: list[AgentRevision]


class ImportedAgent(Strict):
    """One agent of an import: its new revision, and whether the tenant had no own agent of that name."""

    name: str
    revision: int
    created: bool


class AgentsImported(Strict):
    """``POST /api/agents/import``: every agent stored (all or none)."""

    agents: list[ImportedAgent]


class AgentPause(Strict):
    """``POST /api/agents/{name}/pause`` and ``/resume``: whether runs of it are refused now."""

    name: str
    paused: bool
    paused_at: str | None = None


class ChatAccepted(Strict):
    """``202`` to a chat message: the run stored in JetStream, and where its events stream."""

    status: Literal["message_received"]
    message_id: str
    run_id: str
    duplicate: bool = Field(description="true when this message_id (or Idempotency-Key) already named this run")
    events_url: str


class ToolCallSummary(Strict):
    """A tool call as the agent status lists it."""

    name: str
    arguments: str
    ok: bool | None


class RunSummary(Strict):
    """One run in ``GET /api/agents/{name}/status``."""

    run_id: str
    message_id: str
    status: RunStatus
    message: str | None
    answer: str | None
    created_at: str | None
    finished_at: str | None
    attempts: int
    steps: int
    tool_calls: list[ToolCallSummary]
    error: dict[str, Any] | None


class AgentStatus(Strict):
    """``GET /api/agents/{name}/status``: LocalAI's ``{Name, History}`` plus structured ``runs``."""

    Name: str
    History: list[str]
    runs: list[RunSummary]


# ----------------------------------------------------------------------------------------------
# runs


def _fields_of(cls: type[Any]) -> dict[str, Any]:
    """A dataclass's fields as ``create_model`` field definitions (type, default)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = (hints[f.name], f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = (hints[f.name], Field(default_factory=f.default_factory))
        else:
            out[f.name] = (hints[f.name], ...)
    return out


def _fields_except(model: type[BaseModel], *names: str) -> dict[str, Any]:
    """A model's fields, but ``names``, as ``create_model`` field definitions."""
    return {name: (f.annotation, f) for name, f in model.model_fields.items() if name not in names}


WebhookDelivery: type[BaseModel] = create_model(
    "WebhookDelivery", __config__=ConfigDict(extra="forbid"),
    __doc__="One webhook delivery of a run (schemas/webhooks.py ``DeliveryRecord.view``): its attempts, state and "
            "next attempt.",
    **_fields_except(DeliveryRecord, "claimed_until", "delivery_id"),
)
ToolCallView: type[BaseModel] = create_model(
    "ToolCallView", __config__=ConfigDict(extra="forbid"), __doc__="A tool call of a run and its result once known.",
    **_fields_of(ToolCallRecord),
)
_run_fields = _fields_of(RunRecord)
_run_fields["tool_calls"] = (list[ToolCallView], Field(default_factory=list))  # type: ignore[valid-type]  # made above
RunView: type[BaseModel] = create_model(
    "RunView", __config__=ConfigDict(extra="forbid"),
    __doc__="``GET /api/runs/{run_id}``: the run's state folded from its events (agentstream/runstate.py), its "
            "dead letter if it was given up on, and where its events stream.",
    **_run_fields, dead_letter=(DeadLetter | None, None), events_url=(str, ...),
    webhooks=(list[WebhookDelivery], ...),  # type: ignore[valid-type]  # made above
)


class RunListEntry(Strict):
    """A run as listings show it (agentstream/runlog.py ``summary``): times are ISO 8601 UTC."""

    run_id: str
    agent: str
    status: RunStatus
    message_id: str
    conversation_id: str | None
    parent_run_id: str | None
    message: str | None
    submitted_at: str
    ended_at: str | None
    duration_ms: float | None
    usage: dict[str, int] | None
    error: dict[str, Any] | None
    events_url: str
    last_event_id: int | None


class RunList(Strict):
    """``GET /api/runs``: a page of runs, newest first; ``next_cursor`` fetches the next (None: no more)."""

    runs: list[RunListEntry]
    next_cursor: str | None


class ApprovalDecided(Strict):
    """``202`` to an approval or a rejection: the decision is stored (``duplicate``: it was already
    so); ``waiting_for``: the run's calls still undecided; ``by``: who decided."""

    run_id: str
    tool_call_id: str
    decision: Decision
    by: DecisionSource | None
    duplicate: bool
    waiting_for: list[str]
    events_url: str


class CancelAccepted(Strict):
    """``202`` to a cancel: the request is stored; the run ends ``run.cancelled``."""

    status: Literal["cancelling"]
    run_id: str
    events_url: str


class UsageCounts(Strict):
    """Runs ended and tokens used."""

    runs: int
    completed: int
    failed: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageGroup(UsageCounts):
    """One group of ``GET /api/usage``: its ``agent`` or its UTC ``day`` (as ``group_by`` asked)."""

    agent: str | None = None
    day: str | None = None


class UsageReport(Strict):
    """``GET /api/usage``: the tenant's runs and tokens in ``[since, until)``, grouped."""

    tenant: str
    group_by: Literal["agent", "day"]
    since: str | None
    until: str | None
    groups: list[UsageGroup]
    total: UsageCounts


# ----------------------------------------------------------------------------------------------
# conversations


class ConversationTurn(Strict):
    """One turn: its run and that run's status."""

    run_id: str
    agent: str
    message_id: str
    submitted_at: str
    status: RunStatus
    events_url: str


class ConversationView(Strict):
    """``GET /api/conversations/{id}``: the turns in order."""

    conversation_id: str
    agents: list[str]
    created_at: str
    updated_at: str
    turns: list[ConversationTurn]


class ConversationSummary(Strict):
    """A conversation as ``GET /api/conversations`` lists it (``turns``: how many)."""

    conversation_id: str
    agents: list[str]
    turns: int
    created_at: str
    updated_at: str


class ConversationList(Strict):
    """``GET /api/conversations``: most recently continued first."""

    conversations: list[ConversationSummary]


# ----------------------------------------------------------------------------------------------
# OpenAI


class ModelObject(Strict):
    """An agent as an OpenAI model."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Strict):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[ModelObject]


class ChatCompletion(_Open):
    """A ``chat.completion`` (OpenAI API reference, "Chat Completions")."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None


class ChatCompletionChunk(_Open):
    """One streamed ``chat.completion.chunk``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[dict[str, Any]]


class TextCompletion(_Open):
    """A legacy ``text_completion`` (whole, or one streamed chunk)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]


class StreamError(Strict):
    """An error after an OpenAI stream started: one ``data:`` frame, then ``[DONE]``."""

    error: OpenAIErrorDetail


class ResponseObject(_Open):
    """A Responses API ``response`` (OpenAI API reference, "Responses"); ``id`` is ``resp_{run_id}``."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["queued", "in_progress", "completed", "failed", "incomplete", "cancelled"]
    model: str
    output: list[dict[str, Any]]


class ResponseStreamEvent(_Open):
    """One Responses API stream event: ``type`` (also the SSE ``event:``) and ``sequence_number``."""

    type: str
    sequence_number: int


# ----------------------------------------------------------------------------------------------
# LocalAI and llm-sse


class LocalAIFrame(_Open):
    """A LocalAI agent stream frame (``json_message``, ``json_message_status``, ``stream_event``,
    ``json_error``), naming its message and run."""

    message_id: str | None
    run_id: str | None


class ProcessFrame(_Open):
    """An llm-sse frame of ``POST /api/process``: ``status`` says what happens (``Sending to …``,
    ``… completed``, ``Combining via …``, ``Streaming`` with ``message``, ``Completed`` or
    ``error`` with ``final: true``)."""

    message_id: str
    status: str
    source: str | None = None
    message: str | None = None
    final: bool | None = None


# ----------------------------------------------------------------------------------------------
# schedules and webhooks


ScheduleView: type[BaseModel] = create_model(
    "ScheduleView", __config__=ConfigDict(extra="forbid"),
    __doc__="A schedule (schemas/schedules.py ``Schedule.view``): its definition and state; ``last_tick`` and "
            "``next_run_at`` (None while paused) as ISO 8601 UTC times.",
    **_fields_except(Schedule, "anchor", "firing", "last_tick"), last_tick=(str, ...), next_run_at=(str | None, ...),
)


class ScheduleList(Strict):
    """``GET /api/schedules``: the tenant's schedules, oldest first."""

    schedules: list[ScheduleView]  # type: ignore[valid-type]  # made above


class WebhookSecretView(Strict):
    """The tenant's webhook signing secret; after a rotation the previous one also signs until
    ``previous_valid_until``."""

    secret: str
    created_at: str
    previous_valid_until: str | None
