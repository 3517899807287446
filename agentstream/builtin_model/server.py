"""The built-in model as a real OpenAI-compatible HTTP server (Quart on Hypercorn).

Endpoints: ``POST /v1/chat/completions`` (streaming and not, tool calls, ``max_tokens``,
``stream_options.include_usage``), ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (the
process's own: CPU, memory), and for tests and curious users ``GET /debug/requests`` (the last
requests it received, and how many streams are open now). What it answers is decided by
:mod:`agentstream.builtin_model.policy`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from quart import Quart, Response, request

from agentstream import metrics, sse, tracing
from agentstream import openai_format as oai
from agentstream.builtin_model.policy import Options, Reply, count_prompt_tokens, decide, tokens_of
from agentstream.logs import announce
from agentstream.settings import Settings

log = logging.getLogger(__name__)

MODEL_NAME = "builtin"
RECORD_SIZE = 2000


def create_app(settings: Settings) -> Quart:
    """The model server app; ``settings.builtin_model_token_delay`` is the default token pace."""
    app = Quart("agentstream.builtin_model")
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["BODY_TIMEOUT"] = 60
    app.config["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024
    records: deque[dict[str, Any]] = deque(maxlen=RECORD_SIZE)
    counter = itertools.count(1)
    state = {"active": 0}
    seen_per_model: dict[str, int] = {}

    def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> Response:
        return Response(
            oai.dumps(oai.error_body(message, type_, param)), status=status, content_type="application/json"
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(metrics.render(), content_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "agentstream"}],
        }

    @app.get("/debug/requests")
    async def debug_requests() -> dict[str, Any]:
        return {"active": state["active"], "requests": list(records)}

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response | dict[str, Any]:
        # A server span continuing the caller's trace (``traceparent``), ended with the stream.
        span = tracing.start_span("POST /v1/chat/completions", kind=tracing.SpanKind.SERVER, parent=request.headers,
                                  attributes={"http.request.method": "POST", "http.route": "/v1/chat/completions"})
        try:
            answer = await answer_chat(span)
        except BaseException:
            tracing.end_span(span)
            raise
        if isinstance(answer, Response):
            if span is not None:
                span.set_attribute("http.response.status_code", answer.status_code)
            if answer.mimetype == "text/event-stream":
                return answer  # its stream ends the span
        tracing.end_span(span)
        return answer

    async def answer_chat(span: tracing.Span | None) -> Response | dict[str, Any]:
        raw = await request.get_data()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return error(400, "request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error(400, "'messages' must be a list", param="messages")
        model = str(body.get("model") or MODEL_NAME)
        if span is not None:
            span.set_attribute("gen_ai.request.model", model)
        try:
            opts = Options.from_model(model)
        except ValueError as err:
            return error(400, str(err), param="model")
        auth = request.headers.get("Authorization")
        record = {
            "n": next(counter),
            # Never the key itself: a digest, so tests can tell which key was sent.
            "auth_sha256": hashlib.sha256(auth.encode()).hexdigest()[:16] if auth else None,
            "t": time.time(),
            "model": model,
            "stream": bool(body.get("stream")),
            "messages": body["messages"],
            "tools": [t.get("function", {}).get("name") for t in body.get("tools") or []],
            "parameters": {k: v for k, v in body.items() if k not in ("messages", "tools", "model", "stream")},
            "disconnected": False,
            "finished": False,
        }
        records.append(record)
        try:
            if opts.hang:
                await asyncio.Event().wait()
            if opts.first_delay:
                await asyncio.sleep(opts.first_delay)
        except asyncio.CancelledError:  # the client went away before we said anything
            record["disconnected"] = True
            raise
        seen_per_model[model] = seen_per_model.get(model, 0) + 1
        fail = opts.fail or (500 if seen_per_model[model] <= opts.fail_first else None)
        if fail:
            record["finished"] = True
            return error(
                fail,
                f"built-in model told to fail with {fail}",
                "server_error" if fail >= 500 else "invalid_request_error",
            )
        tools = body.get("tools") or None
        reply = decide(body["messages"], tools, opts)
        delay = settings.builtin_model_token_delay if opts.delay is None else opts.delay
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        prompt_tokens = count_prompt_tokens(body["messages"], tools)
        completion_id = oai.new_id()
        created = oai.now()
        if not body.get("stream") or opts.no_stream:
            content, calls, finish, n = _complete(reply, max_tokens)
            if delay:
                try:
                    await asyncio.sleep(delay * n)
                except asyncio.CancelledError:
                    record["disconnected"] = True
                    raise
            record["finished"] = True
            return oai.chat_completion(
                completion_id, created, model, content=content, finish_reason=finish,
                usage_=oai.usage(prompt_tokens, n), tool_calls=calls,
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def stream() -> AsyncIterator[bytes]:
            state["active"] += 1
            pending = bytearray()
            try:
                async for frame in _stream(reply, completion_id, created, model, delay, max_tokens,
                                           prompt_tokens, include_usage, opts.fail_after):
                    if delay:
                        yield frame  # paced: every token is its own write
                        continue
                    pending += frame  # flat out: as many events per write as fit in 16 KiB
                    if len(pending) >= 16384:
                        yield bytes(pending)
                        pending.clear()
                if pending:
                    yield bytes(pending)
                record["finished"] = True
            except asyncio.CancelledError:
                record["disconnected"] = True
                raise
            finally:
                state["active"] -= 1
                tracing.end_span(span)

        response = Response(stream(), headers=sse.HEADERS)
        response.timeout = None
        return response

    return app


def _complete(reply: Reply, max_tokens: int | None) -> tuple[str | None, list[dict[str, Any]] | None, str, int]:
    """Non-streaming: (content, tool_calls, finish_reason, completion tokens)."""
    if reply.tool_calls:
        calls: list[dict[str, Any]] = [
            {"id": oai.new_tool_call_id(), "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in reply.tool_calls
        ]
        return None, calls, "tool_calls", sum(len(tokens_of(c["function"]["arguments"])) for c in calls)
    tokens = tokens_of(reply.text)
    finish = "stop"
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, finish = tokens[:max_tokens], "length"
    return "".join(tokens), None, finish, len(tokens)


class Pace:
    """A steady token pace: the ``k``-th call of :meth:`next` returns ``k * delay`` seconds after
    the pace was made, whatever the time spent between calls. A model streams at its own rate: a
    busy reader (or a busy machine delaying this server's timers) does not slow it down, it
    finds several tokens waiting when it reads again. ``delay`` 0: no waiting at all."""

    def __init__(self, delay: float, now: float | None = None):
        self.delay = delay
        self.due = time.monotonic() if now is None else now

    def wait(self, now: float) -> float:
        """Seconds from ``now`` (``time.monotonic()``) until the next token is due, 0 if it is
        overdue; counts the token."""
        self.due += self.delay
        return max(0.0, self.due - now)

    async def next(self) -> None:
        """Wait until the next token is due (at once if it is overdue)."""
        if not self.delay:
            return
        wait = self.wait(time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)


async def _stream(
    reply: Reply, completion_id: str, created: int, model: str, delay: float, max_tokens: int | None,
    prompt_tokens: int, include_usage: bool, fail_after: int | None,
) -> AsyncIterator[bytes]:
    def chunk(**kw: Any) -> bytes:
        return sse.frame(oai.dumps(oai.chat_chunk(completion_id, created, model, with_usage_field=include_usage, **kw)))

    pace = Pace(delay)
    yield chunk(delta={"role": "assistant", "content": ""})
    completion_tokens = 0
    if reply.tool_calls:
        finish = "tool_calls"
        for index, call in enumerate(reply.tool_calls):
            args = json.dumps(call.arguments)
            pieces = [args[i : i + 12] for i in range(0, len(args), 12)] or [""]
            first = oai.tool_call_delta_first(index, oai.new_tool_call_id(), call.name, "")
            yield chunk(delta={"tool_calls": [first]})
            for piece in pieces:
                await pace.next()
                yield chunk(delta={"tool_calls": [oai.tool_call_delta_more(index, piece)]})
            completion_tokens += len(tokens_of(args))
    else:
        finish = "stop"
        tokens = tokens_of(reply.text)
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        for i, tok in enumerate(tokens):
            if fail_after is not None and i >= fail_after:
                yield sse.frame(oai.dumps(oai.error_body("built-in model told to fail mid-stream", "server_error")))
                yield sse.DONE
                return
            await pace.next()
            yield chunk(delta={"content": tok})
            completion_tokens += 1
    yield chunk(finish_reason=finish)
    if include_usage:
        yield sse.frame(
            oai.dumps(oai.chat_usage_chunk(completion_id, created, model, oai.usage(prompt_tokens, completion_tokens)))
        )
    yield sse.DONE


async def serve(settings: Settings, stop: asyncio.Event, *, bind: str | None = None, fallback: bool = True) -> None:
    """Serve the built-in model on ``bind`` (default BUILTIN_MODEL_BIND) until ``stop``; prints
    ``builtin-model ready: <base url>`` once listening."""
    from agentstream.httpserve import listen, serve_app

    sock = listen(bind or settings.builtin_model_bind, fallback_to_free_port=fallback)

    def ready(url: str) -> None:
        announce(f"builtin-model ready: {url}/v1")

    await serve_app(create_app(settings), sock, stop, on_ready=ready, graceful_timeout=1.0)
