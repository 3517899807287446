"""Every machine-readable error kind agentstream writes, and the one exception that carries one.

A kind appears as ``error.type`` in ``run.failed`` (the run's end), in a ``tool.result`` with
``ok: false`` (a tool's refusal or failure, handed to the model as the tool's answer), and in the
``member.finished`` of an ensemble member. Clients may match on these strings; they only ever
gain members. (The HTTP API's own error types, ``{"error": {"type": ...}}`` of a 4xx, are the
edge's, in ``edge/errors.py``.)

Modelled on httpx's ``_exceptions.py``: one base class, the kind an attribute rather than a
class per kind, so a new kind needs no new ``except`` clause.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What went wrong, as one lowercase token."""

    # -- the model server (agent_runner/llm.py)
    LLM_UNREACHABLE = "llm_unreachable"
    """It could not be reached or did not answer in time (after retries)."""
    LLM_HTTP_ERROR = "llm_http_error"
    """It answered with an HTTP error (after retries for 408/409/425/429/5xx)."""
    LLM_STREAM_ERROR = "llm_stream_error"
    """It reported an error in the middle of its stream."""
    LLM_BAD_RESPONSE = "llm_bad_response"
    """Its answer was neither a chat completion nor an event stream of chunks."""
    LLM_ERROR = "llm_error"
    """Any other failure of a model call."""
    # -- the run (agent_runner/)
    TIMEOUT = "timeout"
    """A run, tool call or member took longer than its budget."""
    MAX_STEPS = "max_steps"
    """The model still asked for tools after the agent's last allowed step."""
    MEMBERS_FAILED = "members_failed"
    """Fewer than an ensemble's ``min_success`` members answered."""
    GAVE_UP = "gave_up"
    """Every attempt of the run stopped without finishing (its runners died); a dead letter is kept."""
    UNKNOWN_AGENT = "unknown_agent"
    """The runner has no such agent."""
    FORBIDDEN_AGENT = "forbidden_agent"
    """The tenant may not use this agent."""
    CONFIGURATION_ERROR = "configuration_error"
    """The agent's definition cannot be run as it stands (e.g. its API key variable is not set)."""
    INVALID_REQUEST = "invalid_request"
    """The run request could not be read."""
    STORAGE_UNAVAILABLE = "storage_unavailable"
    """The run's events could not be stored (the event store had no space)."""
    INTERNAL_ERROR = "internal_error"
    """A bug; the log has the traceback."""
    # -- tool calls (agent_runner/tool_client.py, agent_runner/loop.py)
    TOOL_UNAVAILABLE = "tool_unavailable"
    """No tool runner serves the tool, or none answered within the call's budget."""
    TOOL_PROTOCOL_ERROR = "tool_protocol_error"
    """A tool runner's reply could not be understood."""
    UNKNOWN_TOOL = "unknown_tool"
    """The model called a tool the agent does not have."""
    UNKNOWN_SKILL = "unknown_skill"
    """``load_skill`` named a skill the agent does not have."""
    INVALID_ARGUMENTS = "invalid_arguments"
    """A tool call's arguments are not valid JSON or do not match the tool's schema."""
    MISSING_RESULT = "missing_result"
    """A resumed run found a tool call whose result was never recorded."""
    APPROVAL_REJECTED = "approval_rejected"
    """A tool call that waited for a person's approval was rejected (or not approved in time)."""
    # -- files (agentstream/beneath.py, tool_runner/tools/files.py)
    INVALID_PATH = "invalid_path"
    NOT_FOUND = "not_found"
    OUTSIDE_ROOT = "outside_root"
    SYMLINK_LOOP = "symlink_loop"
    NOT_A_FILE = "not_a_file"
    NOT_A_DIRECTORY = "not_a_directory"
    PERMISSION_DENIED = "permission_denied"
    OS_ERROR = "os_error"
    BINARY_FILE = "binary_file"
    INVALID_RANGE = "invalid_range"
    # -- the network (tool_runner/netguard.py, tool_runner/tools/http.py)
    INVALID_URL = "invalid_url"
    DNS_ERROR = "dns_error"
    ADDRESS_REFUSED = "address_refused"
    """Every address the host resolves to is not public (docs/security.md)."""
    CONNECTION_ERROR = "connection_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    # -- MCP servers (tool_runner/mcp/)
    UNKNOWN_SERVER = "unknown_server"
    COMMAND_NOT_ALLOWED = "command_not_allowed"
    MCP_UNAVAILABLE = "mcp_unavailable"
    MCP_CONNECTION_LOST = "mcp_connection_lost"
    MCP_ERROR = "mcp_error"
    MCP_TOOL_ERROR = "mcp_tool_error"

    @classmethod
    def is_upstream(cls, kind: str | None) -> bool:
        """Whether a run that failed with ``kind`` failed because of something it depends on (the
        model server, the tool runners, a budget they used up) rather than its own request or a bug:
        the OpenAI-compatible API answers those 502 (docs/streaming.md, "Non-streaming")."""
        return kind in _UPSTREAM


_UPSTREAM = frozenset({ErrorKind.LLM_UNREACHABLE, ErrorKind.LLM_HTTP_ERROR, ErrorKind.LLM_STREAM_ERROR,
                       ErrorKind.LLM_BAD_RESPONSE, ErrorKind.LLM_ERROR, ErrorKind.TOOL_UNAVAILABLE, ErrorKind.TIMEOUT})


class AgentstreamError(Exception):
    """A failure with a kind: ``kind`` (:class:`ErrorKind`), ``message`` (for people, and for the
    model when a tool fails), ``reason`` (the short ``run.failed`` reason when it ends a run)."""

    reason = "failed"

    def __init__(self, kind: ErrorKind, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        if reason is not None:
            self.reason = reason
