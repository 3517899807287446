"""The agent definition: one YAML file in ``agents/``.

The fields of LocalAI's own example (``name``, ``description``, ``model``, ``system_prompt``,
``actions``, ``skills``) plus what users of such systems reach for next (``max_steps``,
``parameters``, an ``llm`` block, a run ``timeout``). Unknown fields are an error, so a typo is
reported rather than silently ignored (LocalAI's agent config ignores unknown keys).
"""

from __future__ import annotations

from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    PrivateAttr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)

from schemas.approval_rules import ApprovalPolicy, needs_approval, validate_policy
from schemas.common import Strict, Token
from schemas.mcp import McpServer
from schemas.schedules import MAX_MESSAGE_CHARS, parse_every
from schemas.tools import TOOL_RUNNER_TOOLS
from schemas.webhooks import WebhookTarget, shown_url

EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]

RESERVED_PARAMETERS = frozenset({"model", "messages", "stream", "tools", "tool_choice", "functions", "n"})
"""LLM request fields an agent's ``parameters`` may not set: the runner owns them."""


class LLMSettings(Strict):
    """Where this agent's model is served (any OpenAI-compatible server).

    - ``base_url``: e.g. ``http://localhost:11434/v1`` (Ollama) or ``https://api.openai.com/v1``.
    - ``api_key_env``: the *name* of an environment variable holding the key. The key itself is
      never written in the file. Only variables matching the operator's ``LLM_KEY_ENV_PATTERN``
      (default ``AGENTSTREAM_KEY_*``) may be named, so an agent file cannot have ``HOME`` or
      another process secret sent to a server of its choosing (:func:`key_env_allowed`).
    - ``timeout``: seconds to wait for the server between streamed bytes (default from settings).
    """

    base_url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")] | None = None
    api_key_env: EnvVarName | None = None
    timeout: float | None = Field(default=None, gt=0, le=3600)


def key_env_allowed(name: str, pattern: str) -> bool:
    """True when environment variable ``name`` matches one of the comma-separated shell globs of
    ``pattern`` (``fnmatch``, case-sensitive as variable names are: ``AGENTSTREAM_KEY_*``)."""
    return any(fnmatchcase(name, glob.strip()) for glob in pattern.split(",") if glob.strip())


def key_env_refusal(name: str, pattern: str) -> str:
    """Why ``llm.api_key_env: name`` is refused under ``pattern`` (for an error naming that field)."""
    return (f"{name!r} does not match LLM_KEY_ENV_PATTERN ({pattern or 'empty: no variable may be named'}); "
            "put the key in a variable whose name matches it")


class ToolAction(Strict):
    """One entry of ``actions``: a tool, and when its calls wait for a person's approval
    (schemas/approval_rules.py). A bare name in the file is ``{name: NAME}`` (never asks)."""

    name: Token
    approval: Annotated[ApprovalPolicy, WrapValidator(validate_policy)] = "never"


_TOKEN: TypeAdapter[str] = TypeAdapter(Token)


def _action(value: Any, handler: Any) -> ToolAction:
    if isinstance(value, ToolAction):
        return value
    if isinstance(value, str):
        return ToolAction(name=_TOKEN.validate_python(value))
    return ToolAction.model_validate(value)


def _action_out(action: ToolAction) -> str | dict[str, Any]:
    """An action as the file would write it: a bare name when it never asks."""
    return action.name if action.approval == "never" else action.model_dump(mode="json", exclude_none=True)


if TYPE_CHECKING:
    ActionEntry = ToolAction
else:
    ActionEntry = Annotated[Token | ToolAction, WrapValidator(_action), PlainSerializer(_action_out)]
    """An ``actions`` entry: a tool's name, or ``{name, approval}``."""


class AgentDefinition(Strict):
    """One agent.

    - ``name``: subject-safe name, unique in the directory.
    - ``model``: model name sent to the LLM server; default: the ``LLM_MODEL`` setting.
    - ``actions``: tools this agent may call (``read_file``, ``list_dir``, ``http_request``), each
      a name or ``{name, approval}``: when its calls wait for a person's approval
      (schemas/approval_rules.py).
    - ``approval_timeout``: seconds a call may wait for approval; then it counts as rejected.
    - ``skills``: skill names; each is ``agents/skills/NAME.md``, offered through ``load_skill``.
    - ``max_steps``: most LLM calls in one run (the last one is offered no tools).
    - ``parameters``: passed through to the LLM request (``temperature``, ``max_tokens``, ...).
    - ``timeout``: the run's time budget in seconds; past it the run fails.
    - ``tool_timeout``: budget in seconds for one tool call, retries included.
    - ``mcp_servers``: Model Context Protocol servers whose tools the agent may call beside its
      ``actions`` (schemas/mcp.py: names, the stdio command rule, the allow-list).
    - ``webhooks``: URLs every run of this agent POSTs its events to (schemas/webhooks.py; each
      ``{url, events}``, events default to the terminal ones).
    - ``periodic_runs`` (LocalAI's field, e.g. ``10m``; seconds or a duration) with
      ``permanent_goal`` (LocalAI's field: the message each periodic run gets): a schedule, run for
      each tenant that may use the agent (edge/scheduler.py).

    An **ensemble** names ``members`` (agents asked the same question concurrently, each
    as its own child run) and a ``combiner`` (the agent that answers from their answers):
    - ``min_success``: members that must succeed for the combiner to run (default 1);
    - ``member_timeout``: seconds a member may take; a slower one is cancelled and left out;
    - ``combine_prompt``: how the combiner is asked, with ``{question}`` and ``{answers}`` (each
      answer labelled with its member's name).
    An ensemble has no model, prompt or tools of its own: those of its members and combiner apply.

    Conversations (a message with a ``conversation_id`` continues it: the model sees the earlier
    turns, agent_runner/conversation.py):
    - ``on_busy``: what a message gets while the conversation's previous run is still going:
      ``enqueue`` (it waits, then runs), ``reject`` (409), ``interrupt`` (the running run is
      cancelled, then this one runs) — LangGraph's multitask strategies;
    - ``history_max_messages`` / ``history_max_tokens``: the budget of earlier turns the model is
      given (whole turns, newest kept; tokens estimated as four characters each).
    """

    name: Token
    description: str = ""
    model: str | None = Field(default=None, min_length=1, max_length=200)
    llm: LLMSettings | None = None
    system_prompt: str = ""
    actions: list[ActionEntry] = Field(default_factory=list)
    skills: list[Token] = Field(default_factory=list)
    max_steps: int = Field(default=10, ge=1, le=100)
    parameters: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(default=600.0, gt=0, le=86400)
    tool_timeout: float = Field(default=60.0, gt=0, le=3600)
    members: list[Token] = Field(default_factory=list)
    combiner: Token | None = None
    min_success: int = Field(default=1, ge=1)
    member_timeout: float = Field(default=300.0, gt=0, le=86400)
    combine_prompt: str = "Question:\n{question}\n\nAnswers:\n\n{answers}"
    on_busy: Literal["enqueue", "reject", "interrupt"] = "enqueue"
    history_max_messages: int = Field(default=40, ge=0, le=10_000)
    history_max_tokens: int = Field(default=8000, ge=0, le=10_000_000)
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=32)
    webhooks: list[WebhookTarget] = Field(default_factory=list, max_length=16)
    periodic_runs: int | None = Field(default=None, description="seconds between periodic runs (or a duration: 10m)")
    permanent_goal: str | None = Field(default=None, min_length=1, max_length=MAX_MESSAGE_CHARS,
                                       validate_default=True)
    approval_timeout: float = Field(default=86400.0, gt=0, le=7 * 86400)
    _asking: dict[str, ApprovalPolicy] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Index the actions that may ask for approval (looked up for every tool call)."""
        self._asking = {a.name: a.approval for a in self.actions if a.approval != "never"}

    @property
    def tool_names(self) -> list[str]:
        """The names of the tools in ``actions``, in order."""
        return [a.name for a in self.actions]

    def approval_of(self, tool: str) -> ApprovalPolicy:
        """The ``approval`` of the action named ``tool`` (``never`` when it is not one)."""
        return self._asking.get(tool, "never")

    def call_needs_approval(self, tool: str, arguments: dict[str, Any], *, mcp_server: str | None = None) -> bool:
        """Whether a call of ``tool`` (an action; or, with ``mcp_server``, a tool of that MCP
        server) with ``arguments`` waits for approval. A built-in tool's arguments get its
        defaults first (``http_request`` without ``method`` is a GET); arguments the tool would
        refuse are matched as given."""
        if mcp_server is not None:
            server = next((s for s in self.mcp_servers if s.name == mcp_server), None)
            return server is not None and needs_approval(server.approval, arguments)
        policy = self.approval_of(tool)
        if policy == "never":
            return False
        spec = TOOL_RUNNER_TOOLS.get(tool)
        if spec is not None:
            try:
                arguments = spec.args.model_validate(arguments).model_dump(mode="json")
            except ValidationError:
                pass
        return needs_approval(policy, arguments)

    @property
    def is_ensemble(self) -> bool:
        """True when this agent fans out to members and combines their answers."""
        return bool(self.members)

    @model_validator(mode="after")
    def _ensemble_shape(self) -> AgentDefinition:
        if not self.members:
            if self.combiner is not None:
                raise ValueError("combiner is set but members is empty")
            return self
        if self.combiner is None:
            raise ValueError("an ensemble (members: ...) needs a combiner")
        if len(set(self.members)) != len(self.members):
            raise ValueError("members lists an agent twice")
        if self.min_success > len(self.members):
            raise ValueError(f"min_success ({self.min_success}) is more than the {len(self.members)} members")
        if self.actions or self.skills or self.system_prompt or self.model or self.llm or self.mcp_servers:
            raise ValueError("an ensemble has no model, system_prompt, actions, skills or mcp_servers of its own: set "
                             "them on its members and combiner")
        for placeholder in ("{question}", "{answers}"):
            if placeholder not in self.combine_prompt:
                raise ValueError(f"combine_prompt must contain {placeholder}")
        return self

    @field_validator("periodic_runs", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_every(value, "periodic_runs")

    @field_validator("permanent_goal")
    @classmethod
    def _periodic_goal(cls, goal: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("periodic_runs") is not None and not (goal or "").strip():
            raise ValueError("periodic_runs needs a permanent_goal: the message each periodic run is given")
        return goal

    @field_validator("actions")
    @classmethod
    def _known_tools(cls, actions: list[ToolAction]) -> list[ToolAction]:
        names = [a.name for a in actions]
        unknown = [a for a in names if a not in TOOL_RUNNER_TOOLS]
        if unknown:
            known = ", ".join(sorted(TOOL_RUNNER_TOOLS))
            raise ValueError(f"unknown tool(s) {', '.join(map(repr, unknown))}; known tools: {known}")
        if len(set(names)) != len(names):
            raise ValueError("a tool is listed twice")
        return actions

    @field_validator("mcp_servers")
    @classmethod
    def _unique_servers(cls, servers: list[McpServer]) -> list[McpServer]:
        names = [s.name for s in servers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"MCP server name(s) {', '.join(map(repr, twice))} used twice")
        return servers

    @field_validator("parameters")
    @classmethod
    def _no_reserved(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(parameters) & RESERVED_PARAMETERS)
        if reserved:
            raise ValueError(f"{', '.join(reserved)} cannot be set in parameters: the runner sets them")
        return parameters

    def public_view(self) -> dict[str, Any]:
        """What the HTTP API shows of this agent: everything but secrets (only the key's env var name;
        of its webhooks only the origins and events: a webhook URL often carries a token)."""
        view = self.model_dump(mode="json", exclude={"webhooks"})
        view["webhooks"] = [{"url": shown_url(w.url, hidden=True), "events": w.events} for w in self.webhooks]
        return view

    def document(self) -> dict[str, Any]:
        """The agent as a document to store or export: ``name`` and every field that differs from
        its default (so a later release's defaults apply to what was not set). Validating it gives
        this agent back."""
        return {"name": self.name, **self.model_dump(mode="json", exclude_defaults=True)}


AgentAction = Literal["create", "update", "rollback", "import"]
"""How an agent's revision was written over the API."""


class StoredAgent(Strict):
    """One entry of the AGENTS bucket (key ``{tenant}.{agent}``): a tenant's agent as created or
    changed over the API. Validated again by every reader (an edge or runner with other settings
    may refuse it; it is then reported, not run).

    - ``definition``: the agent document (the fields of :class:`AgentDefinition` that differ from
      their defaults, and ``name``); it holds no secret (only ``llm.api_key_env``, a variable name);
    - ``action``: how it was written (``create``, ``update``, ``rollback``, ``import``);
    - ``key_id``: who wrote it, the first 16 hex digits of the API key's SHA-256 (None without a
      keys file);
    - ``from_revision``: for a rollback, the revision it restored.
    """

    definition: dict[str, Any]
    action: AgentAction
    key_id: str | None = None
    from_revision: int | None = None


class AgentPause(Strict):
    """One entry of the AGENT_PAUSES bucket (key ``{tenant}.{agent}``): the agent is paused (no
    entry: it is not). ``paused_at``: when (UTC); ``key_id``: by whom (as in :class:`StoredAgent`)."""

    paused_at: datetime
    key_id: str | None = None
