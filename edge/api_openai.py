"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

``model`` names one of the caller's agents; the messages become a run of that agent through the
bus, exactly as the native API does, and the response is a view of the run's events
(edge.dialects.openai). The run id is in the ``X-Run-Id`` response header, so the agent's own
work (its tool calls) can be watched on ``/api/runs/{run_id}/events``.

The protocol's rules: docs/streaming.md. Deliberate choices where they leave room:
- ``n`` > 1 is refused (400, ``param: "n"``): an agent run produces one answer (docs/streaming.md, "n > 1").
- The legacy ``functions`` parameter is refused (400): use ``tools``.
- ``tool_choice``: ``"none"`` hides the client's tools; ``"required"`` or a named function
  applies to the agent's first model call (where a client tool call ends the run).
- ``max_tokens`` has no default (OpenAI's legacy completions default of 16 would cut agent answers).
- A client that disconnects cancels its run (docs/streaming.md, "Disconnects"); so does an edge
  shutting down mid-stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, Response
from quart import request as http_request

from agentstream import openai_format as oai
from agentstream import sse
from edge.auth import Tenant
from edge.clienttools import check_client_tools
from edge.dialects.openai import ChatStream, Collected, TextCompletionStream, collect, text_completion
from edge.errors import ApiError, from_validation
from edge.feed import HEARTBEAT
from edge.http import (
    agent_for,
    cancel_later,
    json_object,
    json_response,
    open_stream,
    run_feed,
    sse_response,
    state,
    submit_run,
    tenant,
)
from edge.idempotency import claim, request_fingerprint
from edge.streamcaps import Lease
from edge.streaming import stream_run
from schemas import events as E
from schemas import subjects
from schemas.agents import AgentDefinition
from schemas.common import ChatMessage, FunctionTool
from schemas.errors import ErrorKind
from schemas.runs import CLIENT_DISCONNECTED, PENDING_RUN_ID, RunRequest, new_run_id

log = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")

PASS_THROUGH = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "response_format", "parallel_tool_calls", "user", "top_k", "min_p",
    "repetition_penalty", "reasoning_effort",
})
"""Request fields passed on to the agent's model; other unknown fields are accepted and ignored."""

class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Lenient):
    """``stream_options``: accepted on both endpoints (docs/streaming.md, "Usage")."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatCompletionBody(_Lenient):
    """The fields of ``POST /v1/chat/completions`` agentstream reads."""

    model: str = Field(min_length=1, description="One of the caller's agents.", examples=["programmer-helper"])
    messages: list[ChatMessage] = Field(min_length=1, examples=[[{"role": "user", "content": "Who are you?"}]])
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionBody(_Lenient):
    """The fields of ``POST /v1/completions`` agentstream reads."""

    model: str = Field(min_length=1, description="One of the caller's agents.", examples=["programmer-helper"])
    prompt: str | list[str] = Field(default="", examples=["Who are you?"])
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)


def error_response(err: ApiError) -> Response:
    """An ApiError in OpenAI's shape, ``{"error": {message, type, param, code}}``: validation errors
    are 400; deterministic failures say ``x-should-retry: false`` (docs/streaming.md, "Errors before
    the first byte")."""
    status = 400 if err.status == 422 else err.status
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    code = err.extra.get("code") or err.type
    headers = (
        {"x-should-retry": "false"}
        if (status < 500 and status not in (408, 409, 429)) or err.extra.get("final")
        else {}
    )
    if err.extra.get("run_id"):
        headers["X-Run-Id"] = err.extra["run_id"]
    headers.update(err.headers())
    return json_response(oai.error_body(err.message, kind, err.field, code), status, headers)


def model_agent(t: Tenant, name: str) -> AgentDefinition:
    """The agent a request's ``model`` names, if the caller may use it; ApiError 404 with
    ``code: "model_not_found"`` (OpenAI's) naming ``model`` otherwise."""
    try:
        return agent_for(t, name, field="model")
    except ApiError as err:
        if err.status == 404:
            raise ApiError(404, "model_not_found", f"the model {name!r} does not exist (models are your agents: "
                           "GET /v1/models)", "model", code="model_not_found") from None
        raise


async def _body(model: type[BaseModel]) -> Any:
    doc = await json_object()
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        raise from_validation(err, status=400) from None


def _parameters(body: BaseModel) -> dict[str, Any]:
    extra = body.model_extra or {}
    params = {k: v for k, v in extra.items() if k in PASS_THROUGH and v is not None}
    for key in ("max_tokens", "max_completion_tokens"):
        if getattr(body, key, None) is not None:
            params[key] = getattr(body, key)
    return params


def _client_tools(body: ChatCompletionBody, agent: AgentDefinition) -> list[FunctionTool]:
    if body.tool_choice == "none" or not body.tools:
        return []
    for i, tool in enumerate(body.tools):
        if tool.type != "function":
            raise ApiError(400, "invalid_request", f"tools[{i}]: only function tools are supported", f"tools.{i}.type")
    check_client_tools(body.tools, agent, lambda i: f"tools.{i}.function.name")
    return list(body.tools)


def _tool_choice(body: ChatCompletionBody, client_tools: list[FunctionTool]) -> Any:
    choice = body.tool_choice
    if choice in (None, "auto", "none"):
        return None
    if choice == "required":
        if not client_tools:
            raise ApiError(400, "invalid_request", "tool_choice 'required' needs tools", "tool_choice")
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in {t.function.get("name") for t in client_tools}:
            raise ApiError(400, "invalid_request", f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        return choice
    raise ApiError(
        400, "invalid_request", "tool_choice must be 'none', 'auto', 'required' or a function", "tool_choice"
    )


def _split(messages: list[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    """(the last user message's text, the messages before it); (None, all) if the conversation
    does not end with a plain-text user message (e.g. it ends with tool results)."""
    last = messages[-1]
    if last.role == "user":
        content = last.content
        if isinstance(content, list) and content and all(p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text", "")) for p in content)
        if isinstance(content, str) and content.strip():
            return content, messages[:-1]
    return None, messages


async def _identified(t: Tenant, agent: AgentDefinition, draft: RunRequest) -> RunRequest:
    """``draft`` with its run id: a new one, or, with an ``Idempotency-Key`` header, the run that key
    names (the same request again; a different request with a used key is 409); and with an
    ``X-Conversation-Id`` header, the conversation it continues (send only the new messages then:
    the earlier turns are added by the server)."""
    conversation_id = http_request.headers.get("X-Conversation-Id")
    if conversation_id is not None:
        if not 0 < len(conversation_id) <= 200:
            raise ApiError(400, "invalid_request", "X-Conversation-Id must be 1 to 200 characters", "X-Conversation-Id")
        draft = draft.model_copy(update={"conversation_id": conversation_id})
    key = http_request.headers.get("Idempotency-Key")
    if not key:
        run_id = new_run_id()
        return draft.model_copy(update={"run_id": run_id, "message_id": run_id})
    if len(key) > 200:
        raise ApiError(400, "invalid_request", "Idempotency-Key must be at most 200 characters", "Idempotency-Key")
    run_id, _ = await claim(state(), t.name, agent.name, key, request_fingerprint(agent.name, draft),
                            field="Idempotency-Key")
    return draft.model_copy(update={"run_id": run_id, "message_id": key})


async def _start_run(t: Tenant, agent: AgentDefinition, request: RunRequest, *, stream: bool) -> Lease | None:
    """Submit the run; for a streamed answer first take a place among the key's open streams
    (429 over ``max_streams``), returned as the lease the stream holds."""
    lease = await open_stream(t) if stream else None
    try:
        await submit_run(t, agent.name, request)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    return lease


async def _collect_run(tenant_name: str, agent: str, run_id: str) -> Collected:
    """Wait for a run's end and fold its events; cancel the run if the caller goes away."""
    st = state()
    events: list[E.RunEvent] = []
    ended = False
    try:
        async for item in run_feed(tenant_name, run_id, subjects.run_events(tenant_name, agent, run_id), sse=False):
            if item is HEARTBEAT:
                continue
            if item.event is not None:
                events.append(item.event)
            if E.is_terminal(item.type):
                ended = True
                break
    finally:
        if not ended:
            cancel_later(st, tenant_name, run_id, CLIENT_DISCONNECTED)
    return collect(events)


def _failed(run: Collected, failure: dict[str, Any], run_id: str) -> ApiError:
    """``failure``: the run's OpenAI error object (``run.error``)."""
    error = failure["error"]
    if run.error_type == "run_cancelled":
        return ApiError(409, "run_cancelled", error["message"], None, code="run_cancelled", run_id=run_id)
    upstream = ErrorKind.is_upstream(run.error_type)
    return ApiError(502 if upstream else 500, run.error_type or "run_failed", error["message"], None,
                    code=run.error_type or "run_failed", run_id=run_id, final=not upstream)


def _stream(
    tenant_name: str, agent: str, run_id: str, renderer: ChatStream | TextCompletionStream, first: bytes | None,
    lease: Lease | None,
) -> AsyncIterator[bytes]:
    """The SSE body: the renderer's frames for the run's events, keep-alive comments in silences;
    the run is cancelled if the stream ends before the run does (client gone, edge stopping).
    Call inside the request (the feed and state are taken from it); iterate later."""
    st = state()
    feed = run_feed(tenant_name, run_id, subjects.run_events(tenant_name, agent, run_id), lease=lease)
    return stream_run(st, tenant_name, run_id, feed, _Frames(renderer, first))


class _Frames:
    """An OpenAI stream as a RunRenderer (edge/streaming.py): ``first`` (the role chunk, already
    built), then the renderer's chunks; ``[DONE]`` after an error if this edge stops first (an
    OpenAI stream cannot be resumed)."""

    def __init__(self, renderer: ChatStream | TextCompletionStream, first: bytes | None):
        self.renderer = renderer
        self.first = first or b""

    @property
    def done(self) -> bool:
        return self.renderer.done

    def start(self) -> bytes:
        return self.first

    def render(self, event: E.RunEvent) -> bytes:
        return b"".join(self.renderer.render(event))

    def interrupted(self) -> bytes:
        return sse.frame(oai.dumps(oai.error_body(
            "the server is restarting; retry the request", "server_error", None, "server_restarting"))) + sse.DONE


@bp.post("/chat/completions")
async def chat_completions() -> Response:
    """``POST /v1/chat/completions``, streaming or not (the rules: docs/streaming.md); the run id
    is in the ``X-Run-Id`` header."""
    t = tenant()
    body: ChatCompletionBody = await _body(ChatCompletionBody)
    agent = model_agent(t, body.model)
    if body.n is not None and body.n > 1:
        raise ApiError(400, "unsupported", "n > 1 is not supported: an agent run gives one answer", "n")
    if body.functions:
        raise ApiError(
            400, "unsupported", "the legacy 'functions' parameter is not supported; use 'tools'", "functions"
        )
    client_tools = _client_tools(body, agent)
    parameters = _parameters(body)
    choice = _tool_choice(body, client_tools)
    if choice is not None:
        parameters["tool_choice"] = choice
    message, history = _split(body.messages)
    request = await _identified(t, agent, RunRequest(
        run_id=PENDING_RUN_ID, message_id=PENDING_RUN_ID, message=message, history=history, tools=client_tools,
        parameters=parameters))
    run_id = request.run_id
    lease = await _start_run(t, agent, request, stream=bool(body.stream))
    completion_id, created = f"chatcmpl-{run_id}", oai.now()
    headers = {"X-Run-Id": run_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        renderer = ChatStream(completion_id, created, body.model, include_usage=include_usage)
        body_stream = _stream(t.name, agent.name, run_id, renderer, renderer.start(), lease)
        return sse_response(body_stream, headers, lease=lease)
    run = await _collect_run(t.name, agent.name, run_id)
    if run.error:
        raise _failed(run, run.error, run_id)
    content = run.text if run.text or not run.tool_calls else None
    return json_response(oai.chat_completion(
        completion_id, created, body.model, content=content, finish_reason=run.finish_reason, usage_=run.usage,
        tool_calls=run.tool_calls or None,
    ), headers=headers)


@bp.post("/completions")
async def completions() -> Response:
    """``POST /v1/completions`` (legacy text completions), streaming or not."""
    t = tenant()
    body: CompletionBody = await _body(CompletionBody)
    agent = model_agent(t, body.model)
    for name, bad, why in (
        ("n", (body.n or 1) > 1, "n > 1 is not supported"),
        ("best_of", (body.best_of or 1) > 1, "best_of > 1 is not supported"),
        ("echo", bool(body.echo), "echo is not supported"),
        ("suffix", body.suffix is not None, "suffix is not supported"),
        ("logprobs", body.logprobs is not None, "logprobs are not supported"),
    ):
        if bad:
            raise ApiError(400, "unsupported", why, name)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "unsupported", "give one prompt (a string, or a list of one string)", "prompt")
        prompt = prompt[0]
    if not prompt.strip():
        raise ApiError(400, "invalid_request", "prompt must not be empty", "prompt")
    request = await _identified(t, agent, RunRequest(
        run_id=PENDING_RUN_ID, message_id=PENDING_RUN_ID, message=prompt, parameters=_parameters(body)))
    run_id = request.run_id
    lease = await _start_run(t, agent, request, stream=bool(body.stream))
    completion_id, created = f"cmpl-{run_id}", oai.now()
    headers = {"X-Run-Id": run_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        renderer = TextCompletionStream(completion_id, created, body.model, include_usage=include_usage)
        return sse_response(_stream(t.name, agent.name, run_id, renderer, None, lease), headers, lease=lease)
    run = await _collect_run(t.name, agent.name, run_id)
    if run.error:
        raise _failed(run, run.error, run_id)
    return json_response(text_completion(completion_id, created, body.model, run), headers=headers)


def _model_object(t: Tenant, agent: AgentDefinition) -> dict[str, Any]:
    return {"id": agent.name, "object": "model", "created": state().agents.catalog(t.name).created(agent.name),
            "owned_by": "agentstream"}


@bp.get("/models")
async def list_models() -> Response:
    """``GET /v1/models``: the tenant's agents as models."""
    t = tenant()
    catalog = state().agents.catalog(t.name)
    return json_response({"object": "list", "data": [
        _model_object(t, a) for name, a in sorted(catalog.agents.items()) if t.may_use(name)
    ]})


@bp.get("/models/<path:model_id>")
async def get_model(model_id: str) -> Response:
    """``GET /v1/models/{model}``: one agent as a model; 404 naming ``model`` if unknown."""
    t = tenant()
    return json_response(_model_object(t, model_agent(t, model_id)))

