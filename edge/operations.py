"""Every route of the edge, as the OpenAPI document describes it (edge/openapi.py builds it).

One :class:`~edge.openapi.Operation` per method and route: parameters, the request body's model
(the one the route validates with), and every response it gives. A route added to the app without
an entry here fails the suite (tests/unit/test_openapi.py compares this table with ``app.url_map``).
Statuses the door gives every route of a kind (401, 421, 429, 503; and 400, 403, 413, 415 on a
POST) are added by edge/openapi.py.
"""

from __future__ import annotations

import typing
from typing import Any

from ag_ui.core import Event as AguiEvent
from ag_ui.core import RunAgentInput
from mcp.shared.version import SUPPORTED_PROTOCOL_VERSIONS
from mcp.types import JSONRPCMessage

from edge import apimodels as M
from edge.api_approvals import DecisionBody
from edge.api_llmsse import ProcessBody
from edge.api_native import CancelBody, ChatBody
from edge.api_openai import ChatCompletionBody, CompletionBody
from edge.api_responses import ResponsesBody
from edge.api_runs import STATUSES
from edge.http import MAX_EVENT_ID
from edge.openapi import X_RUN_ID, Answer, Header, Operation, Param, Schema, sse_event
from schemas.agents import AgentDefinition
from schemas.events import RunEvent
from schemas.schedules import ScheduleBody
from schemas.subjects import TOKEN_PATTERN

NATIVE_ERROR = Schema(M.ErrorBody)
OPENAI_ERROR = Schema(M.OpenAIErrorBody)
TOKEN: dict[str, Any] = {"type": "string", "pattern": TOKEN_PATTERN}
TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
EXAMPLE_AGENT = "programmer-helper"

AGENT = Param("name", "path", TOKEN, "One of the caller's agents.", example=EXAMPLE_AGENT)
RUN_ID = Param("run_id", "path", TOKEN, "A run of the caller's tenant.")
CONVERSATION_ID = Param("conversation_id", "path", {"type": "string", "minLength": 1, "maxLength": 200},
                        "A conversation of the caller's tenant.")
LAST_EVENT_ID = Param("Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]{1,19}$"},
                      "Resume after this event (its `id:`); EventSource sends it when it reconnects.")
LAST_EVENT_ID_QUERY = Param("last_event_id", "query", {"type": "string", "pattern": "^[0-9]{1,19}$"},
                            f"As `Last-Event-ID`, for clients that cannot set headers (at most {MAX_EVENT_ID}).")
IDEMPOTENCY_KEY = Param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 200},
                        "Names the run: the same request again gets the same run; a different request with "
                        "a used key is 409.")
CONVERSATION_HEADER = Param("X-Conversation-Id", "header", {"type": "string", "minLength": 1, "maxLength": 200},
                            "Continue this conversation (send only the new messages).")
LIMIT_200 = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
                  "How many.")
IF_NONE_MATCH = Param("If-None-Match", "header", {"type": "string"}, "An ETag seen before: 304 if unchanged.")
SSE_SECURITY = ("bearer", "apiKeyQuery")



def _event_types() -> list[str]:
    """Every run event type, from the models of :data:`schemas.events.RunEvent` (its ``type`` literals)."""
    union = typing.get_args(RunEvent)[0]
    return [str(model.model_fields["type"].default) for model in typing.get_args(union)]


NATIVE_EVENT = sse_event(Schema(RunEvent, name="RunEvent"),
                         event={"type": "string", "enum": _event_types()}, with_id=True)
LOCALAI_EVENT: dict[str, Any] = {"anyOf": [
    sse_event(Schema(M.LocalAIFrame), event={"enum": ["json_message", "json_message_status", "stream_event",
                                                       "json_error"]}),
    sse_event({"type": "string"}, event={"const": "status"}, json_data=False),
]}
OPENAI_DONE = sse_event({"const": "[DONE]"}, event={"const": "message"}, json_data=False)
CHAT_CHUNK: dict[str, Any] = {"anyOf": [
    sse_event({"anyOf": [Schema(M.ChatCompletionChunk), Schema(M.StreamError)]}, event={"const": "message"}),
    OPENAI_DONE,
]}
TEXT_CHUNK: dict[str, Any] = {"anyOf": [
    sse_event({"anyOf": [Schema(M.TextCompletion), Schema(M.StreamError)]}, event={"const": "message"}),
    OPENAI_DONE,
]}
RESPONSE_EVENT = sse_event(Schema(M.ResponseStreamEvent))
STATIC_FILE = {"text/javascript": {"type": "string"}, "text/css": {"type": "string"},
               "image/svg+xml": {"type": "string"}, "image/png": {"type": "string", "contentEncoding": "binary"}}
HTML = {"text/html": {"type": "string"}}
ETAG = Header("ETag", "The file's strong ETag (RFC 9110 §8.8.3).", required=True)


def _native(method: Any, path: str, operation_id: str, summary: str, tag: str, answers: dict[int, Answer],
            errors: dict[int, str] | None = None, **kw: Any) -> Operation:
    return Operation(method, path, operation_id, summary, tag, answers, errors=NATIVE_ERROR,
                     error_statuses=errors or {}, **kw)


def _openai(method: Any, path: str, operation_id: str, summary: str, tag: str, answers: dict[int, Answer],
            errors: dict[int, str] | None = None, **kw: Any) -> Operation:
    return Operation(method, path, operation_id, summary, tag, answers, errors=OPENAI_ERROR,
                     error_statuses=errors or {}, **kw)


RUN_LINKS = {
    "run": ("get_run", {"run_id": "$response.body#/run_id"}),
    "events": ("run_sse", {"run_id": "$response.body#/run_id"}),
    "cancel": ("cancel_run", {"run_id": "$response.body#/run_id"}),
    "delete": ("delete_run", {"run_id": "$response.body#/run_id"}),
}
"""What a new run's id leads to."""
RUN_HEADER_LINKS = {"run": ("get_run", {"run_id": "$response.header.X-Run-Id"}),
                    "events": ("run_sse", {"run_id": "$response.header.X-Run-Id"})}

AGENT_BODY = Schema(AgentDefinition, "validation")
"""An agent as its file holds it (LocalAI's agent configuration is also taken)."""
AGENT_MEDIA = ("application/json", "application/yaml")
FORBIDDEN_AGENT = "The tenant's allow-list (keys file `agents:`) leaves this agent name out."
AGENT_CONFLICT = ("The tenant has an agent of that name (`agent_exists`), an ensemble would stop working "
                  "(`agent_in_use`), the tenant's `AGENTS_MAX_PER_TENANT` is reached, or another write came first.")
INVALID_AGENT = "The agent is not valid (`invalid_agent`, naming the field; `errors` lists every problem)."
LOCATION = Header("Location", "`/api/agents/{name}`", required=True)
SCHEDULE_ID = Param("schedule_id", "path", {"type": "string"}, "A schedule of the caller's tenant.")
NO_SCHEDULE = "No such schedule (or another tenant's)."

NOT_RUNNABLE = "The tenant's agent cannot run (`agent_invalid`: its stored definition is not valid here)."
NOT_NOW = "The agent is paused (`agent_paused`), or cannot run (`agent_invalid`)."

DECIDED = {202: Answer("The decision is stored (the same decision again: `duplicate: true`); once every waiting "
                       "call is decided the run goes on.", json=Schema(M.ApprovalDecided))}
DECISION_ERRORS = {
    400: "Not a valid run id.",
    404: "No such run (field `run_id`), or the run does not wait for that call (field `tool_call_id`).",
    409: "The call was decided the other way (`approval_already_decided`), or the run waits for no approval "
         "(`run_not_awaiting_approval`, with `run_status`).",
    422: "A field is invalid (the error names it).",
}

BAD_NAME = "An agent name that is not 1-64 of `A-Z a-z 0-9 _ -`, or a bad parameter."
NO_AGENT = "No such agent for this key."
NO_RUN = "No such run (or another tenant's, or deleted)."
RUN_FAILED = "The run failed for a reason of its own (`code` says which); `X-Run-Id` names it."
UPSTREAM = "The model server failed or timed out, or a tool was unavailable; `X-Run-Id` names the run."

OPERATIONS: list[Operation] = [
    # -- health and documentation
    Operation("get", "/healthz", "health", "Health: connected to NATS, and the keys file in force", "health", {
        200: Answer("Connected and able to work.", json=Schema(M.Health)),
        503: Answer("Not connected to NATS yet, or unable to work (`problems`).", json=Schema(M.Health)),
    }, public=True),
    Operation("get", "/openapi.json", "openapi", "This document", "documentation", {
        200: Answer("The OpenAPI 3.1 document of this edge.", json={"type": "object"}),
    }, public=True),
    Operation("get", "/docs", "docs", "This document, to read and try in a browser (Swagger UI)", "documentation", {
        200: Answer("The page.", other=HTML),
    }, public=True),
    Operation("get", "/docs/{name}", "docs_file", "A file of the documentation page", "documentation", {
        200: Answer("The file.", other={"text/javascript": {"type": "string"}, "text/css": {"type": "string"}},
                    headers=(ETAG,)),
        304: Answer("Not modified since the ETag in `If-None-Match`.", headers=(ETAG,)),
    }, errors=NATIVE_ERROR, error_statuses={404: "No such file.", 421: "The `Host` is not one this edge serves."},
        params=(Param("name", "path", {"type": "string"}, "The file's name.", example="swagger-ui.css"),
                IF_NONE_MATCH), public=True),

    # -- the web page
    Operation("get", "/", "page", "The web page: chat with an agent and watch its runs", "web page", {
        200: Answer("The page.", other=HTML, headers=(ETAG,)),
        304: Answer("Not modified since the ETag in `If-None-Match`.", headers=(ETAG,)),
    }, params=(IF_NONE_MATCH,), public=True),
    Operation("get", "/ui", "ui_redirect", "The web page's old address", "web page", {
        308: Answer("To `/`.", headers=(Header("Location", "`/`", required=True),)),
    }, public=True),
    Operation("get", "/ui/", "ui_redirect_slash", "The web page's old address", "web page", {
        308: Answer("To `/`.", headers=(Header("Location", "`/`", required=True),)),
    }, public=True),
    Operation("get", "/static/{name}", "static_file", "A file of the web page", "web page", {
        200: Answer("The file.", other=STATIC_FILE, headers=(ETAG,)),
        304: Answer("Not modified since the ETag in `If-None-Match`.", headers=(ETAG,)),
    }, errors=NATIVE_ERROR, error_statuses={404: "No such file.", 421: "The `Host` is not one this edge serves."},
        params=(Param("name", "path", {"type": "string"}, "The file's name.", example="app.js"), IF_NONE_MATCH),
        public=True),

    # -- agents
    _native("get", "/api/agents", "list_agents", "The caller's agents", "agents", {
        200: Answer("The agents this key may use, and any agent-file errors.", json=Schema(M.AgentList)),
    }),
    _native("get", "/api/agents/{name}", "get_agent", "One agent", "agents", {
        200: Answer("The agent's definition (no secrets).", json=Schema(M.AgentView)),
    }, {400: BAD_NAME, 404: NO_AGENT}, params=(AGENT,)),
    _native("post", "/api/agents/{name}/chat", "chat", "Post a message: start a run", "agents", {
        202: Answer("The run is stored in JetStream; its events stream from `events_url`.",
                    json=Schema(M.ChatAccepted), links=RUN_LINKS),
    }, {404: NO_AGENT, 409: "The `message_id` (or `Idempotency-Key`) names another request "
                            "(`idempotency_key_reused`), the conversation still answers (`conversation_busy`, "
                            "the agent's `on_busy: reject`), or " + NOT_NOW,
        422: "A field is invalid (the error names it).",
        429: "A limit: the rate, or the tenant's `max_queued_runs` (`queue_full`)."},
        params=(AGENT, IDEMPOTENCY_KEY), request=Schema(ChatBody, "validation")),
    _native("get", "/api/agents/{name}/status", "agent_status", "What the agent did, run by run", "agents", {
        200: Answer("LocalAI's `{Name, History}` and the runs.", json=Schema(M.AgentStatus)),
    }, {400: BAD_NAME, 404: NO_AGENT, 409: NOT_RUNNABLE}, params=(AGENT, LIMIT_200)),
    _native("get", "/api/agents/{name}/sse", "agent_sse", "LocalAI's stream of every run of the agent", "agents", {
        200: Answer("LocalAI's events (`json_message`, `json_message_status`, `stream_event`, `status`, "
                    "`json_error`) from now, or after `Last-Event-ID`; `: ping` comments in silences. It does not "
                    "end by itself.", sse=LOCALAI_EVENT),
    }, {400: BAD_NAME + " Or a bad `Last-Event-ID`.", 404: NO_AGENT, 409: NOT_RUNNABLE,
        429: "A limit: the rate, or this key's `max_streams`."},
        params=(AGENT, LAST_EVENT_ID, LAST_EVENT_ID_QUERY), security=SSE_SECURITY),

    _native("post", "/api/agents", "create_agent", "Create an agent of the tenant's own", "agents", {
        201: Answer("The agent, stored; every edge and runner applies it at once.", json=Schema(M.AgentView),
                    headers=(LOCATION,)),
    }, {400: "The body does not parse (JSON or YAML).", 403: FORBIDDEN_AGENT, 409: AGENT_CONFLICT,
        415: "Not JSON (`application/json`) or YAML (`application/yaml`).", 422: INVALID_AGENT},
        request=AGENT_BODY, request_media=AGENT_MEDIA),
    _native("put", "/api/agents/{name}", "put_agent", "Create or replace an agent; or roll it back", "agents", {
        200: Answer("The agent, replaced.", json=Schema(M.AgentView), headers=(LOCATION,)),
        201: Answer("The agent, created (of a file agent: the tenant's own copy, which wins for it).",
                    json=Schema(M.AgentView), headers=(LOCATION,)),
    }, {400: "The body does not parse, or a bad `revision`, or an invalid agent name.", 403: FORBIDDEN_AGENT,
        404: "`?revision=` names no revision of the agent.", 409: AGENT_CONFLICT,
        415: "Not JSON (`application/json`) or YAML (`application/yaml`).", 422: INVALID_AGENT},
        params=(AGENT, Param("revision", "query", {"type": "string", "pattern": "^[0-9]{1,18}$"},
                             "Roll back to this revision of the tenant's agent (send no body).")),
        request=AGENT_BODY, request_required=False, request_media=AGENT_MEDIA),
    _native("delete", "/api/agents/{name}", "delete_agent", "Delete the tenant's own agent", "agents", {
        200: Answer("Deleted (its revisions stay, for a rollback).", json=Schema(M.AgentDeleted)),
    }, {400: BAD_NAME, 404: NO_AGENT, 409: "A file agent (`read_only`), or an ensemble of the tenant uses it "
                                            "(`agent_in_use`)."}, params=(AGENT,)),
    _native("get", "/api/agents/{name}/export", "export_agent", "An agent as a YAML file", "agents", {
        200: Answer("The definition, ready for `POST /api/agents/import` or `AGENTS_DIR` (no secret).",
                    other={"application/yaml": AGENT_BODY},
                    headers=(Header("Content-Disposition", "`attachment; filename=\"{name}.yaml\"`",
                                    required=True),)),
    }, {400: BAD_NAME, 404: NO_AGENT}, params=(AGENT,)),
    _native("get", "/api/agents/{name}/revisions", "agent_revisions", "An agent's stored revisions", "agents", {
        200: Answer("Newest first.", json=Schema(M.AgentRevisions)),
    }, {400: BAD_NAME, 404: NO_AGENT}, params=(AGENT,)),
    _native("post", "/api/agents/import", "import_agents", "Import one agent or a list, all or nothing", "agents", {
        200: Answer("Every agent stored.", json=Schema(M.AgentsImported)),
    }, {400: "The body does not parse (JSON or YAML).", 403: FORBIDDEN_AGENT, 409: AGENT_CONFLICT,
        415: "Not JSON (`application/json`) or YAML (`application/yaml`).",
        422: INVALID_AGENT + " In a list the field is `{index}.{field}`."},
        request={"anyOf": [AGENT_BODY, {"type": "array", "items": AGENT_BODY}]}, request_media=AGENT_MEDIA),
    _native("post", "/api/agents/{name}/pause", "pause_agent", "Pause an agent: its runs are refused", "agents", {
        200: Answer("Paused: submits answer 409 `agent_paused`; queued runs wait.", json=Schema(M.AgentPause)),
    }, {400: BAD_NAME, 404: NO_AGENT}, params=(AGENT,), request={"type": "object"}, request_required=False),
    _native("post", "/api/agents/{name}/resume", "resume_agent", "Resume a paused agent", "agents", {
        200: Answer("Runs are accepted again; queued ones start.", json=Schema(M.AgentPause)),
    }, {400: BAD_NAME, 404: NO_AGENT}, params=(AGENT,), request={"type": "object"}, request_required=False),

    # -- schedules
    _native("post", "/api/schedules", "create_schedule", "Run an agent by time (cron or every)", "schedules", {
        201: Answer("The schedule, with `schedule_id` and `next_run_at`.", json=Schema(M.ScheduleView)),
    }, {422: "Invalid (the error names the field): a bad cron expression, an unknown time zone, `every` under "
             "one second, both or neither of `cron` and `every`, an agent the caller may not use, a refused "
             "webhook address."}, request=Schema(ScheduleBody, "validation")),
    _native("get", "/api/schedules", "list_schedules", "The tenant's schedules", "schedules", {
        200: Answer("Oldest first.", json=Schema(M.ScheduleList)),
    }, params=(Param("agent", "query", {"type": "string"}, "Only this agent's."),)),
    _native("get", "/api/schedules/{schedule_id}", "get_schedule", "A schedule", "schedules", {
        200: Answer("Its definition and state.", json=Schema(M.ScheduleView)),
    }, {404: NO_SCHEDULE}, params=(SCHEDULE_ID,)),
    _native("delete", "/api/schedules/{schedule_id}", "delete_schedule", "Delete a schedule", "schedules", {
        204: Answer("Deleted: no tick fires after."),
    }, {404: NO_SCHEDULE, 409: "An agent file's `periodic_runs` defines it: pause it instead."},
        params=(SCHEDULE_ID,)),
    _native("post", "/api/schedules/{schedule_id}/pause", "pause_schedule", "Pause a schedule", "schedules", {
        200: Answer("Paused: no tick fires until it is resumed.", json=Schema(M.ScheduleView)),
    }, {404: NO_SCHEDULE}, params=(SCHEDULE_ID,), request={"type": "object"}, request_required=False),
    _native("post", "/api/schedules/{schedule_id}/resume", "resume_schedule", "Resume a schedule", "schedules", {
        200: Answer("Ticks fire again from the next one due (those missed while paused are not caught up).",
                    json=Schema(M.ScheduleView)),
    }, {404: NO_SCHEDULE}, params=(SCHEDULE_ID,), request={"type": "object"}, request_required=False),

    # -- webhooks
    _native("get", "/api/webhooks/secret", "get_webhook_secret", "The tenant's webhook signing secret", "webhooks", {
        200: Answer("The secret (made now if the tenant had none).", json=Schema(M.WebhookSecretView)),
    }),
    _native("post", "/api/webhooks/secret/rotate", "rotate_webhook_secret", "A new webhook signing secret",
            "webhooks", {
        200: Answer("The new secret; the previous one also signs until `previous_valid_until`.",
                    json=Schema(M.WebhookSecretView)),
    }, request={"type": "object"}, request_required=False),

    # -- runs
    _native("get", "/api/runs", "list_runs", "The caller's runs, newest first", "runs", {
        200: Answer("A page of runs; `next_cursor` gets the next.", json=Schema(M.RunList)),
    }, {400: "A parameter is malformed (the error names it).", 404: "`agent` names no agent of this key."},
        params=(Param("agent", "query", TOKEN, "Only this agent's runs."),
                Param("status", "query", {"enum": list(STATUSES)}, "Only runs with this status."),
                Param("conversation_id", "query", {"type": "string", "maxLength": 200}, "Only this conversation's."),
                Param("since", "query", TIME, "Submitted (or, with an ended status, ended) at or after."),
                Param("until", "query", TIME, "... before."), LIMIT_200,
                Param("cursor", "query", {"type": "string", "pattern": "^[0-9]+$"}, "`next_cursor` of a page."))),
    _native("get", "/api/runs/{run_id}", "get_run", "A run's state", "runs", {
        200: Answer("The run, folded from its events.", json=Schema(M.RunView)),
    }, {400: "Not a valid run id.", 404: NO_RUN}, params=(RUN_ID,)),
    _native("delete", "/api/runs/{run_id}", "delete_run", "Delete a finished run's events", "runs", {
        204: Answer("The run's events are gone (a tombstone remains); it is 404 from now on."),
    }, {400: "Not a valid run id.", 404: NO_RUN, 409: "The run has not ended: cancel it first."}, params=(RUN_ID,)),
    _native("get", "/api/runs/{run_id}/events", "run_sse", "A run's events, live and replayed", "runs", {
        200: Answer("The run's events from the start, or after `Last-Event-ID`; `: ping` comments in silences; "
                    "it ends after the terminal event.", sse=NATIVE_EVENT),
        204: Answer("`Last-Event-ID` is the run's terminal event: nothing more will come (EventSource stops)."),
    }, {400: "Not a valid run id, or a bad `Last-Event-ID`.", 404: NO_RUN,
        429: "A limit: the rate, or this key's `max_streams`."},
        params=(RUN_ID, LAST_EVENT_ID, LAST_EVENT_ID_QUERY), security=SSE_SECURITY),
    _native("post", "/api/runs/{run_id}/cancel", "cancel_run", "Cancel a run", "runs", {
        202: Answer("The cancel is stored; the run ends `run.cancelled`.", json=Schema(M.CancelAccepted)),
    }, {404: NO_RUN, 409: "The run has already ended (`run_status` says how).",
        422: "A field is invalid (the error names it)."},
        params=(RUN_ID,), request=Schema(CancelBody, "validation"), request_required=False),
    _native("post", "/api/runs/{run_id}/approve", "approve_tool_call", "Approve a tool call the run waits for",
            "runs", DECIDED, DECISION_ERRORS, params=(RUN_ID,), request=Schema(DecisionBody, "validation")),
    _native("post", "/api/runs/{run_id}/reject", "reject_tool_call", "Reject a tool call the run waits for",
            "runs", DECIDED, DECISION_ERRORS, params=(RUN_ID,), request=Schema(DecisionBody, "validation")),
    _native("get", "/api/usage", "usage", "Runs and tokens of the caller's tenant", "runs", {
        200: Answer("Counts of runs ended in the window, grouped.", json=Schema(M.UsageReport)),
    }, {400: "A parameter is malformed (the error names it)."},
        params=(Param("since", "query", TIME, "Ended at or after."), Param("until", "query", TIME, "... before."),
                Param("group_by", "query", {"enum": ["agent", "day"], "default": "agent"},
                      "Group by agent or UTC day."))),

    # -- conversations
    _native("get", "/api/conversations", "list_conversations", "The caller's conversations", "conversations", {
        200: Answer("Most recently continued first.", json=Schema(M.ConversationList)),
    }, {400: "`agent` is not a valid agent name, or `limit` is out of range."},
        params=(Param("agent", "query", TOKEN, "Only those this agent answered in."),
                Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                      "How many."))),
    _native("get", "/api/conversations/{conversation_id}", "get_conversation", "A conversation's turns",
            "conversations", {
        200: Answer("The turns in order, each with its run and status.", json=Schema(M.ConversationView)),
    }, {400: "Not a valid conversation id.", 404: "No such conversation."}, params=(CONVERSATION_ID,)),
    _native("delete", "/api/conversations/{conversation_id}", "delete_conversation", "Forget a conversation",
            "conversations", {
        204: Answer("Forgotten: the next message with this id starts a new conversation."),
    }, {400: "Not a valid conversation id.", 404: "No such conversation."}, params=(CONVERSATION_ID,)),

    # -- llm-sse
    _native("post", "/api/process", "process", "llm-sse's endpoint: ask an ensemble, follow its members", "llm-sse", {
        200: Answer("llm-sse frames: each member's start and end, the combiner's text, `Completed` (or `error`) "
                    "with `final: true`; `: ping` comments in silences.",
                    sse=sse_event(Schema(M.ProcessFrame), event={"const": "message"}),
                    headers=(X_RUN_ID,)),
    }, {400: "A field is invalid (the error names it).", 404: "`agent` names no agent of this key.",
        409: NOT_NOW, 422: "The `webhook` is invalid or its address is refused.",
        429: "A limit: the rate, this key's `max_streams`, or the tenant's `max_queued_runs`."},
        request=Schema(ProcessBody, "validation")),

    # -- AG-UI
    _native("post", "/ag-ui/{name}", "agui_run", "AG-UI: run an agent for an AG-UI client", "AG-UI", {
        200: Answer("AG-UI events (`RUN_STARTED`, `TEXT_MESSAGE_*`, `TOOL_CALL_*`, `RUN_FINISHED` or "
                    "`RUN_ERROR`); `: ping` comments in silences.",
                    sse=sse_event(Schema(AguiEvent, name="AguiEvent"), event={"const": "message"}),
                    headers=(X_RUN_ID,)),
    }, {400: BAD_NAME, 404: NO_AGENT, 409: "The `runId` names another request, or " + NOT_NOW,
        422: "A field of the `RunAgentInput` is invalid (the error names it).",
        429: "A limit: the rate, this key's `max_streams`, or the tenant's `max_queued_runs`."},
        params=(AGENT,), request=Schema(RunAgentInput, "validation", "RunAgentInput")),

    # -- MCP
    Operation("post", "/mcp", "mcp", "MCP (streamable HTTP): the caller's agents as tools", "MCP", {
        200: Answer("The JSON-RPC answer (and progress notifications while a tool call runs).",
                    sse=sse_event(Schema(M.JsonRpcMessage), event={"const": "message"})),
        202: Answer("A notification or response was accepted (no answer)."),
        400: Answer("Not a JSON-RPC message, or an unsupported `Mcp-Protocol-Version` (JSON-RPC error), or a "
                    "refusal of the edge.", json={"anyOf": [Schema(M.JsonRpcErrorBody), NATIVE_ERROR]}),
        406: Answer("`Accept` must list `application/json` and `text/event-stream`.",
                    json=Schema(M.JsonRpcErrorBody)),
        500: Answer("The MCP server could not handle the request (JSON-RPC error).",
                    json={"anyOf": [Schema(M.JsonRpcErrorBody), NATIVE_ERROR]}),
    }, errors=NATIVE_ERROR, request=Schema(JSONRPCMessage, "validation", "JSONRPCMessage"),
        params=(Param("Accept", "header", {"const": "application/json, text/event-stream"},
                      "MCP's streamable HTTP transport asks clients to accept both.", required=True),
                Param("Mcp-Protocol-Version", "header", {"enum": list(SUPPORTED_PROTOCOL_VERSIONS)},
                      "The MCP revision the client speaks."))),
    Operation("get", "/mcp", "mcp_get", "No server-initiated stream", "MCP", {
        405: Answer("This server offers no server-initiated stream; POST JSON-RPC messages.", json=NATIVE_ERROR,
                    headers=(Header("Allow", "`POST, DELETE`", required=True),)),
    }, errors=NATIVE_ERROR),
    Operation("delete", "/mcp", "mcp_delete", "No session to end (the server is stateless)", "MCP", {
        405: Answer("The server keeps no sessions.", json=Schema(M.JsonRpcErrorBody)),
    }, errors=NATIVE_ERROR),

    # -- OpenAI
    _openai("post", "/v1/chat/completions", "chat_completions", "OpenAI chat completions: run an agent", "OpenAI", {
        200: Answer("A `chat.completion`, or with `stream: true` its chunks then `[DONE]`.",
                    json=Schema(M.ChatCompletion), sse=CHAT_CHUNK, headers=(X_RUN_ID,), links=RUN_HEADER_LINKS),
    }, {400: "Invalid (OpenAI's rule: `param` names the field), or not supported (`n` > 1, `functions`).",
        404: "`model` names no agent of this key (`model_not_found`).",
        409: "The `Idempotency-Key` names another request, the run was cancelled, or " + NOT_NOW,
        429: "A limit: the rate, this key's `max_streams`, or the tenant's `max_queued_runs`.",
        500: RUN_FAILED, 502: UPSTREAM},
        params=(IDEMPOTENCY_KEY, CONVERSATION_HEADER), request=Schema(ChatCompletionBody, "validation")),
    _openai("post", "/v1/completions", "completions", "OpenAI legacy text completions", "OpenAI", {
        200: Answer("A `text_completion`, or with `stream: true` its chunks then `[DONE]`.",
                    json=Schema(M.TextCompletion), sse=TEXT_CHUNK, headers=(X_RUN_ID,)),
    }, {400: "Invalid, or not supported (`n`, `best_of`, `echo`, `suffix`, `logprobs`).",
        404: "`model` names no agent of this key.",
        409: "The `Idempotency-Key` names another request, the run was cancelled, or " + NOT_NOW,
        429: "A limit.", 500: RUN_FAILED, 502: UPSTREAM},
        params=(IDEMPOTENCY_KEY, CONVERSATION_HEADER), request=Schema(CompletionBody, "validation")),
    _openai("get", "/v1/models", "list_models", "The caller's agents as models", "OpenAI", {
        200: Answer("The agents this key may use.", json=Schema(M.ModelList)),
    }),
    _openai("get", "/v1/models/{model_id}", "get_model", "One agent as a model", "OpenAI", {
        200: Answer("The model.", json=Schema(M.ModelObject)),
    }, {400: "Not a valid agent name.", 404: "No such model for this key.", 409: NOT_RUNNABLE},
        params=(Param("model_id", "path", {"type": "string"}, "An agent's name.", example=EXAMPLE_AGENT),)),
    _openai("post", "/v1/responses", "create_response", "OpenAI Responses: run an agent", "OpenAI Responses", {
        200: Answer("The `response` (`queued` with `background: true`), or with `stream: true` its typed events.",
                    json=Schema(M.ResponseObject), sse=RESPONSE_EVENT, headers=(X_RUN_ID,), links={
                        "response": ("get_response", {"resp_id": "$response.body#/id"}),
                        "cancel": ("cancel_response", {"resp_id": "$response.body#/id"}),
                        **RUN_HEADER_LINKS}),
    }, {400: "Invalid, or a parameter agentstream does not support (`param` names it).",
        404: "`model` names no agent, or `previous_response_id` no response, of this key.", 409: NOT_NOW,
        413: "The body, or the input a run keeps, is too large.",
        429: "A limit.", 500: RUN_FAILED, 502: UPSTREAM},
        request=Schema(ResponsesBody, "validation")),
    _openai("get", "/v1/responses/{resp_id}", "get_response", "A response, or its events", "OpenAI Responses", {
        200: Answer("The response object; with `stream=true` its events after `starting_after`.",
                    json=Schema(M.ResponseObject), sse=RESPONSE_EVENT, headers=(X_RUN_ID,)),
    }, {400: "`starting_after` is not a sequence number.", 404: "No such response.",
        429: "A limit: the rate, or this key's `max_streams`."},
        params=(Param("resp_id", "path", {"type": "string"}, "`resp_{run_id}`."),
                Param("stream", "query", {"enum": ["true", "false"]}, "`true`: the events, as SSE."),
                Param("starting_after", "query", {"type": "integer", "minimum": 0, "maximum": 2**31},
                      "Stream only the events after this sequence number."))),
    _openai("post", "/v1/responses/{resp_id}/cancel", "cancel_response", "Cancel a response", "OpenAI Responses", {
        200: Answer("The response once cancelled, or as it stands a few seconds later.",
                    json=Schema(M.ResponseObject), headers=(X_RUN_ID,)),
    }, {404: "No such response.", 409: "The response has already ended otherwise."},
        params=(Param("resp_id", "path", {"type": "string"}, "`resp_{run_id}`."),),
        request={"type": "object"}, request_required=False),
]
"""The edge's routes, in the order the document lists them."""

TAGS = [
    {"name": "agents", "description": "The native API: agents, messages (README, HTTP API)."},
    {"name": "runs", "description": "Runs: state, events (SSE), cancel, delete, listing, usage."},
    {"name": "conversations", "description": "Conversations: the turns of a `conversation_id`."},
    {"name": "schedules", "description": "Runs by time: cron or every (README, Schedules)."},
    {"name": "webhooks", "description": "The secret webhook deliveries are signed with (README, Webhooks)."},
    {"name": "OpenAI", "description": "OpenAI-compatible: `model` names an agent (README, OpenAI-compatible API)."},
    {"name": "OpenAI Responses", "description": "OpenAI's Responses API; a response is a view of one run."},
    {"name": "llm-sse", "description": "llm-sse's `/api/process` (README, Ensembles)."},
    {"name": "AG-UI", "description": "The AG-UI protocol (docs.ag-ui.com)."},
    {"name": "MCP", "description": "The Model Context Protocol, streamable HTTP transport: agents as tools."},
    {"name": "health", "description": "Health of this edge."},
    {"name": "web page", "description": "The web page and its files (no key needed)."},
    {"name": "documentation", "description": "This document (no key needed)."},
]
