"""Every setting of every component, read from environment variables, with defaults that work on a
fresh machine. The README's configuration table is generated from the same fields (``make docs``;
a test checks it).

Settings are a ``pydantic-settings`` model: a value that cannot be parsed or is out of its range
stops the component at start-up with the variable named (``AGENT_RUNNER_CONCURRENCY=-1``: "Input
should be greater than or equal to 0"). Durations are seconds, sizes are bytes; a number without
its own range may not be negative. Secrets are ``SecretStr``: they print as ``**********``.
"""

from __future__ import annotations

import contextvars
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The project checkout (or the directory the packages were installed from)."""

_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("environ", default=None)


def _setting(env: str, default: Any, help: str, **limits: Any) -> Any:
    """One setting: its environment variable, default, help text (README) and range (``ge``, ``gt``,
    ``le``). A number given no range may not be negative."""
    if isinstance(default, int | float) and not isinstance(default, bool) and not limits:
        limits = {"ge": 0}
    return Field(default=default, validation_alias=env, description=help, **limits)


class _Environment(PydanticBaseSettingsSource):
    """Each field from its variable (``validation_alias``) in the environment :meth:`Settings.from_env`
    was given (``os.environ`` by default); unset and empty variables leave the default."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        environ = _ENVIRON.get()
        env = os.environ if environ is None else environ
        return env.get(str(field.validation_alias)) or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            raw, _, _ = self.get_field_value(field, name)
            if raw is not None:
                values[str(field.validation_alias)] = raw
        return values


class Settings(BaseSettings):
    """All configuration. Build with :meth:`from_env`; every field maps to one environment variable.

    Immutable; derive a changed copy with :meth:`changed`."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values first, then the environment; no ``.env`` or secrets directory is read."""
        return init_settings, _Environment(settings_cls)

    # -- NATS
    nats_url: str | None = _setting(
        "NATS_URL", None,
        "NATS server URL(s), comma-separated. Unset: `agentstream up` starts an embedded server; "
        "a component started alone uses nats://127.0.0.1:4222.",
    )
    data_dir: Path = _setting(
        "AGENTSTREAM_DATA_DIR", Path(".agentstream"),
        "Where `agentstream up` keeps the embedded server's JetStream store and logs.",
    )
    nats_creds: Path | None = _setting(
        "NATS_CREDS", None,
        "Credentials this component connects with: an nkey seed file (`agentstream up` writes one per component under "
        "`AGENTSTREAM_DATA_DIR/auth`) or a JWT `.creds` file. Unset: connect without credentials.",
    )
    nats_auth: bool = _setting(
        "AGENTSTREAM_NATS_AUTH", True,
        "`agentstream up` starts the embedded nats-server with authentication: every component and tenant its own "
        "identity and permissions (README, Security model). Off: anyone who reaches the port may do anything.",
    )
    nats_port: int = _setting(
        "AGENTSTREAM_NATS_PORT", 4222,
        "Port for the embedded nats-server; a free port is used if it is taken.", ge=1, le=65535,
    )
    nats_cluster: int = _setting(
        "AGENTSTREAM_NATS_CLUSTER", 1,
        "Servers `agentstream up` starts for its embedded NATS (`--nats-cluster N`): 1, or 3 or 5 for a JetStream "
        "cluster on loopback (client ports from `AGENTSTREAM_NATS_PORT` on; docs/scaling.md).", ge=1, le=7,
    )
    stream_replicas: int = _setting(
        "STREAM_REPLICAS", 1,
        "Copies of every stream and bucket a JetStream cluster keeps (1 to 5; at most the cluster's size). "
        "`agentstream up --nats-cluster N` uses min(N, 3) unless this is set.", ge=1, le=5,
    )
    # -- agents
    agents_dir: Path = _setting(
        "AGENTS_DIR", REPO_ROOT / "agents",
        "Directory of agent YAML files (skills in its `skills/`): the agents every tenant sees, besides those it "
        "creates over the API.",
    )
    agents_llm_origins: str = _setting(
        "AGENTS_LLM_ORIGINS", "",
        "Comma-separated model server origins (https://api.openai.com, http://10.0.0.7:11434) that agents created "
        "over the API may name in `llm.base_url` (besides LLM_BASE_URL's); any other is refused, field "
        "`llm.base_url`, so a tenant cannot have the agent runners send requests, or keys, where it likes. Unset: "
        "such agents use LLM_BASE_URL's server only.",
    )
    agents_max_per_tenant: int = _setting(
        "AGENTS_MAX_PER_TENANT", 500,
        "Most agents one tenant may create over the API (its copies of file agents included); a create over it "
        "is a 409.",
    )
    # -- edge
    edge_bind: str = _setting("EDGE_BIND", "127.0.0.1:8080", "host:port the edge listens on.")
    keys_file: Path | None = _setting(
        "KEYS_FILE", None,
        "YAML file mapping API keys to tenants. Unset: one tenant, `default`, no key needed.",
    )
    keys_file_poll: float = _setting(
        "KEYS_FILE_POLL", 1.0,
        "Seconds between checks of the keys file for changes (a new valid file takes effect at once; a bad one is "
        "logged and the last good one stays).", gt=0,
    )
    auth_failures_per_minute: int = _setting(
        "EDGE_AUTH_FAILURES_PER_MINUTE", 30,
        "Requests with a wrong API key one client address may make per minute (burst the same) before it gets 429 "
        "for a while, whatever key it sends.", ge=1,
    )
    sse_heartbeat: float = _setting("SSE_HEARTBEAT", 15.0, "Seconds between SSE comment heartbeats.", gt=0)
    edge_max_body: int = _setting(
        "EDGE_MAX_BODY", 1024 * 1024, "Largest request body the edge accepts (bytes); larger is a 413.", ge=1,
    )
    process_default_agent: str = _setting(
        "PROCESS_DEFAULT_AGENT",
        "trio",
        "The agent POST /api/process runs when the request names none (llm-sse's endpoint).",
    )
    edge_cors_origins: str = _setting(
        "EDGE_CORS_ORIGINS", "",
        "Comma-separated origins (https://app.example) whose browser pages may call the API, or `*`. Unset: "
        "same-origin only (a POST from another origin is a 403).",
    )
    edge_allowed_hosts: str = _setting(
        "EDGE_ALLOWED_HOSTS", "",
        "Comma-separated host names (any port), host:port, .domain (and its subdomains) or `*` that requests may "
        "name in `Host`; others get 421. Unset: localhost, 127.0.0.1, [::1] and the EDGE_BIND address (bound to "
        "0.0.0.0 or ::, this machine's host name instead).",
    )
    edge_watch_buffer: int = _setting(
        "EDGE_WATCH_BUFFER", 256,
        "Events buffered per SSE client before the edge stops buffering and re-reads from the stream.", ge=1,
    )
    # -- LLM
    llm_base_url: str | None = _setting(
        "LLM_BASE_URL", None,
        "OpenAI-compatible base URL (…/v1). Unset: the built-in deterministic model.",
    )
    llm_api_key: SecretStr | None = _setting(
        "LLM_API_KEY", None,
        "API key sent as `Authorization: Bearer` to LLM_BASE_URL (only to that origin: an agent with its own "
        "`llm.base_url` gets a key only through `llm.api_key_env`).",
    )
    llm_key_env_pattern: str = _setting(
        "LLM_KEY_ENV_PATTERN", "AGENTSTREAM_KEY_*",
        "Shell globs (comma-separated) an agent's `llm.api_key_env` must match; other variables are refused when "
        "agent files are loaded. (LLM_API_KEY itself goes only to LLM_BASE_URL.)",
    )
    llm_model: str = _setting("LLM_MODEL", "builtin", "Model name for agents whose YAML names none.")
    llm_timeout: float = _setting(
        "LLM_TIMEOUT", 120.0, "Seconds to wait for the LLM server (connect, and between streamed bytes).", gt=0,
    )
    llm_max_attempts: int = _setting(
        "LLM_MAX_ATTEMPTS", 5,
        "Attempts per LLM call on connect errors, 429 and 5xx (exponential backoff with jitter).",
        ge=1,
    )
    llm_stream_usage: bool = _setting(
        "LLM_STREAM_USAGE", True, "Ask the LLM server for usage in streamed responses (`stream_options.include_usage`)."
    )
    builtin_model_bind: str = _setting(
        "BUILTIN_MODEL_BIND", "127.0.0.1:8081",
        "host:port of the built-in model started by `agentstream up` (a free port if taken).",
    )
    builtin_model_token_delay: float = _setting(
        "BUILTIN_MODEL_TOKEN_DELAY", 0.02, "Seconds between tokens streamed by the built-in model."
    )
    # -- agent runner
    runner_id: str = _setting("RUNNER_ID", "", "Name of this runner process in events and logs (default host-pid).")
    runner_concurrency: int = _setting(
        "AGENT_RUNNER_CONCURRENCY", 0,
        "Most runs one agent runner works on at once; 0: as many as its memory and CPU allow "
        "(AGENT_RUNNER_MEMORY_BUDGET, AGENT_RUNNER_MAX_LOOP_LAG), up to 10,000.",
    )
    runner_memory_budget: int = _setting(
        "AGENT_RUNNER_MEMORY_BUDGET", 0,
        "Resident memory (bytes) above which an agent runner takes no more runs; 0: half the memory available "
        "when it starts.",
    )
    runner_max_loop_lag: float = _setting(
        "AGENT_RUNNER_MAX_LOOP_LAG", 0.1,
        "Seconds an agent runner's event loop may run late (its CPU is saturated) before it takes no more runs.", gt=0,
    )
    runner_ack_wait: float = _setting(
        "AGENT_RUNNER_ACK_WAIT", 30.0,
        "Seconds without a progress signal before a run is handed to another runner.", gt=0,
    )
    runner_max_attempts: int = _setting(
        "AGENT_RUNNER_MAX_ATTEMPTS",
        3,
        "Attempts of a run that may die (runner crashed or killed) before it ends run.failed and its request "
        "is kept as a dead letter.", ge=1,
    )
    delta_flush_interval: float = _setting(
        "DELTA_FLUSH_INTERVAL", 0.02, "Most seconds text deltas wait to be coalesced into one event."
    )
    delta_events_per_second: int = _setting(
        "DELTA_EVENTS_PER_SECOND", 2000,
        "Text-delta events one agent runner writes per second at most, spread over its runs: with more runs than "
        "this allows at DELTA_FLUSH_INTERVAL, each run's text is coalesced longer (its first text goes out at once).",
        ge=1,
    )
    delta_flush_bytes: int = _setting(
        "DELTA_FLUSH_BYTES", 4096, "Coalesced text that triggers an immediate event (bytes).", ge=1,
    )
    event_max_bytes: int = _setting(
        "EVENT_MAX_BYTES", 900 * 1024, "Largest event stored; bigger tool outputs are truncated in the event (bytes).",
        ge=1024,
    )
    storage_patience: float = _setting(
        "STORAGE_PATIENCE", 30.0,
        "Seconds a run's events may be refused by a full JetStream store before the run is stopped; it then ends "
        "run.failed (storage_unavailable) as soon as that can be stored.",
    )
    metrics_bind: str = _setting(
        "METRICS_BIND", "127.0.0.1:0",
        "host:port where an edge, agent runner, tool runner or webhook sender answers GET /healthz and GET /metrics "
        "without a key (port 0: a free port, printed at start-up as `<component> health: <url>`). Keep it off the "
        "network tenants reach (docs/security.md).",
    )
    tool_progress_interval: float = _setting(
        "TOOL_PROGRESS_INTERVAL", 1.0,
        "Seconds between a tool runner's progress signals; 3 missed ones mean it died and the call is retried.", gt=0,
    )
    tool_restart_grace: float = _setting(
        "TOOL_RESTART_GRACE", 30.0,
        "Seconds after a tool was last seen served during which a call finding no tool runner for it is retried "
        "until the agent's tool_timeout (its tool runner is restarting); a tool no tool runner has served for "
        "longer, or ever, fails at once with tool_unavailable.",
    )
    # -- streams
    run_dedupe_window: float = _setting(
        "RUN_DEDUPE_WINDOW", 300.0, "Seconds during which a repeated run submission is recognised by JetStream.", gt=0,
    )
    run_events_max_age: float = _setting("RUN_EVENTS_MAX_AGE", 7 * 86400.0, "Seconds run events are kept.", gt=0)
    dead_letter_max_age: float = _setting(
        "DEAD_LETTER_MAX_AGE", 30 * 86400.0, "Seconds dead letters (requests of runs given up on) are kept.", gt=0,
    )
    # -- tool runner
    tool_root: Path | None = _setting(
        "TOOL_ROOT", None, "Directory read_file and list_dir are confined to. Default: where the tool runner started."
    )
    tool_read_max_bytes: int = _setting(
        "TOOL_READ_MAX_BYTES", 256 * 1024,
        "Most bytes of a file read_file returns; reading stops there (a longer file is cut and its lines are not "
        "counted: `total_lines` is null).", ge=1,
    )
    tool_list_max_entries: int = _setting("TOOL_LIST_MAX_ENTRIES", 1000, "Most entries list_dir returns.", ge=1)
    tool_http_max_bytes: int = _setting(
        "TOOL_HTTP_MAX_BYTES", 256 * 1024, "Largest response body http_request returns (bytes).", ge=1,
    )
    tool_http_timeout: float = _setting("TOOL_HTTP_TIMEOUT", 20.0, "Longest an http_request may take (seconds).", gt=0)
    tool_http_allow_private: bool = _setting(
        "TOOL_HTTP_ALLOW_PRIVATE", False,
        "Let http_request reach loopback, private and link-local addresses (off: refused, also after redirects).",
    )
    tool_http_allow_hosts: str = _setting(
        "TOOL_HTTP_ALLOW_HOSTS",
        "",
        "Comma-separated host or host:port http_request may reach even if they are not public "
        "(e.g. an internal docs server).",
    )
    tool_runner_concurrency: int = _setting(
        "TOOL_RUNNER_CONCURRENCY", 32, "Tool calls one tool runner executes at once.", ge=1,
    )
    tool_file_workers: int = _setting(
        "TOOL_FILE_WORKERS", 8,
        "Threads one tool runner gives read_file and list_dir (a pool of their own; a call stuck in the file system "
        "holds one of them, nothing else).", ge=1,
    )
    tool_file_timeout: float = _setting(
        "TOOL_FILE_TIMEOUT", 10.0,
        "Longest a read_file or list_dir may take, waiting for a free thread included (seconds); past it the call "
        "answers `timeout`.", gt=0,
    )
    tool_runner_tools: str = _setting(
        "TOOL_RUNNER_TOOLS", "",
        "Comma-separated tools this tool runner serves (read_file, list_dir, http_request). Unset: all. Each kind "
        "of tool can then be scaled on its own (docs/scaling.md).",
    )
    # -- MCP (Model Context Protocol)
    mcp_stdio_commands: str = _setting(
        "MCP_STDIO_COMMANDS", "",
        "Comma-separated commands an agent file's stdio MCP server may start (`command`, compared exactly as "
        "written: `python`, `npx`, `/opt/mcp/files-server`); the tool runner starts them as its own user. Unset: "
        "no stdio MCP servers (an agent declaring one is an error of its file). Set it for every component.",
    )
    mcp_allow_hosts: str = _setting(
        "MCP_ALLOW_HOSTS", "",
        "Comma-separated host or host:port of MCP servers (`url`) tool runners may reach even if they are not "
        "public addresses (loopback, private, link-local: refused otherwise, as for http_request).",
    )
    mcp_connect_timeout: float = _setting(
        "MCP_CONNECT_TIMEOUT", 20.0,
        "Longest a tool runner waits to start or reach an MCP server and initialize its session (seconds).", gt=0,
    )
    mcp_idle_timeout: float = _setting(
        "MCP_IDLE_TIMEOUT", 300.0,
        "Seconds an MCP session may stay unused before its tool runner closes it (a stdio server's process ends).",
        gt=0,
    )
    mcp_tools_cache: float = _setting(
        "MCP_TOOLS_CACHE", 60.0,
        "Seconds an agent runner reuses an MCP server's tool list before asking a tool runner again.", ge=0,
    )
    mcp_list_timeout: float = _setting(
        "MCP_LIST_TIMEOUT", 15.0,
        "Longest a run waits at its start for an MCP server's tool list (seconds); past it the run goes on "
        "without that server's tools.", gt=0,
    )
    # -- webhooks
    webhook_allow_hosts: str = _setting(
        "WEBHOOK_ALLOW_HOSTS", "",
        "Comma-separated host or host:port webhooks may be POSTed to even if they are not public addresses "
        "(loopback, private, link-local: refused otherwise, as for http_request). Set it for edges (checked at "
        "submit) and webhook senders (checked at each delivery).",
    )
    webhook_timeout: float = _setting(
        "WEBHOOK_TIMEOUT", 10.0, "Longest one webhook POST may take (seconds); past it the attempt failed.", gt=0
    )
    webhook_retry_for: float = _setting(
        "WEBHOOK_RETRY_FOR", 86400.0,
        "Seconds a webhook delivery is retried (exponential backoff) before it is given up (state failed).", gt=0,
    )
    webhook_retry_first_delay: float = _setting(
        "WEBHOOK_RETRY_FIRST_DELAY", 5.0,
        "Seconds before a failed webhook delivery is retried the first time; each later wait doubles.", gt=0,
    )
    webhook_retry_max_delay: float = _setting(
        "WEBHOOK_RETRY_MAX_DELAY", 3600.0, "Longest wait between two attempts of a webhook delivery (seconds).", gt=0
    )
    webhook_concurrency: int = _setting(
        "WEBHOOK_CONCURRENCY", 32, "Webhook deliveries one webhook sender makes at once.", ge=1, le=10_000
    )
    webhook_secret_overlap: float = _setting(
        "WEBHOOK_SECRET_OVERLAP", 86400.0,
        "Seconds after a rotation during which deliveries are signed with the previous secret too (a second "
        "signature), so receivers can switch.",
    )
    # -- schedules
    schedule_poll: float = _setting(
        "SCHEDULE_POLL", 0.25, "Seconds between an edge's looks at which schedule ticks are due.", gt=0, le=60
    )
    schedule_misfire_grace: float = _setting(
        "SCHEDULE_MISFIRE_GRACE", 60.0,
        "Seconds a schedule tick may be late and still fire as on time (at most its schedule's interval); a tick "
        "later than that was missed and follows the schedule's catch_up.",
    )
    schedule_max_catch_up: int = _setting(
        "SCHEDULE_MAX_CATCH_UP", 100, "Most missed ticks a schedule with catch_up: all fires (the newest; older ones "
        "are skipped).",
    )
    schedule_claim_timeout: float = _setting(
        "SCHEDULE_CLAIM_TIMEOUT", 15.0,
        "Seconds after which a tick claimed by an edge that has not confirmed its run (it died) is submitted by "
        "another edge (the same run id: never twice).", gt=0,
    )
    # -- all
    shutdown_grace: float = _setting(
        "SHUTDOWN_GRACE", 30.0, "Seconds a stopping component lets in-flight work finish before handing it back."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _setting(
        "LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR (any case)."
    )
    log_format: Literal["text", "json"] = _setting(
        "LOG_FORMAT", "text",
        "`text`, or `json` (any case): one JSON object per line (time, level, logger, message, and run_id, tenant, "
        "agent, trace_id where known), start-up lines (`… ready: …`) included.",
    )
    metrics_max_tenants: int = _setting(
        "METRICS_MAX_TENANTS", 0,
        "Run, submit and queue metrics name each tenant in a `tenant` label while this process knows at most this "
        "many tenants (the edge: its keys file; runners: the TENANTS bucket); otherwise, and by default (0), every "
        "tenant is counted as `_all` (README, Observability).",
    )
    otel_exporter_otlp_endpoint: str | None = _setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", None,
        "OTLP/HTTP (protobuf) base URL traces are exported to, e.g. http://127.0.0.1:4318 (spans go to "
        "…/v1/traces); the OpenTelemetry SDK's other OTEL_* variables apply too. Unset: no tracing.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``environ`` (default ``os.environ``); ``overrides`` (field names) win.

        Raises ``pydantic.ValidationError`` (a ``ValueError``) naming the variable when a value cannot
        be parsed or is out of range.
        """
        token = _ENVIRON.set(environ)
        try:
            return cls(**overrides)
        finally:
            _ENVIRON.reset(token)

    def changed(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (field names) applied and checked like the rest.

        Raises ``pydantic.ValidationError`` (a ``ValueError``) when a change is out of range."""
        return type(self).from_env({}, **{**self.model_dump(), **changes})

    @property
    def nats_servers(self) -> list[str]:
        """``NATS_URL`` split on commas, or the local default."""
        if not self.nats_url:
            return ["nats://127.0.0.1:4222"]
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def runner_name(self) -> str:
        """``RUNNER_ID`` or ``{hostname}-{pid}``."""
        return self.runner_id or f"{socket.gethostname()}-{os.getpid()}"


def configuration_error(err: ValidationError) -> str:
    """One line per bad variable, ``NAME='value': what is wrong`` (secrets' values left out)."""
    lines = []
    for e in err.errors():
        name = ".".join(str(part) for part in e["loc"])
        shown = "" if "KEY" in name or "SECRET" in name else f"={e.get('input')!r}"
        lines.append(f"{name}{shown}: {e['msg']}")
    return "; ".join(lines)


def load() -> Settings:
    """Settings from ``os.environ``, or exit with status 2 after printing ``configuration error: ...``
    naming each bad variable (the entry point of every component)."""
    try:
        return Settings.from_env()
    except ValidationError as err:
        print(f"configuration error: {configuration_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def documented() -> list[tuple[str, str, str]]:
    """``(env var, default, help)`` for every setting, for the README and ``agentstream config``."""
    rows = []
    for field in Settings.model_fields.values():
        default = field.default
        if isinstance(default, Path) and default.is_absolute() and default.is_relative_to(REPO_ROOT):
            default = f"<checkout>/{default.relative_to(REPO_ROOT).as_posix()}"
        rows.append((str(field.validation_alias), "" if default is None else str(default), field.description or ""))
    return rows
