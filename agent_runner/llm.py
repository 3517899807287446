"""One OpenAI-compatible chat client for every LLM server (OpenAI, Ollama, LocalAI, vLLM,
llama.cpp's server, the built-in model): httpx, streaming, tool calls, retries.

Only the common subset of the protocol is relied on: ``POST {base_url}/chat/completions`` with
``stream: true``; ``data:`` events of ``chat.completion.chunk`` objects ending with ``[DONE]``;
tool calls as ``delta.tool_calls`` fragments keyed by ``index``. Deviations seen in the wild are
tolerated: a missing ``index`` (matched by id, or appended), a whole tool call in one delta, a
JSON body answered to a streaming request (LocalAI #1187), ``usage`` only on the last chunk or
not at all, ``reasoning_content`` (ignored: never mixed into the answer).

Connect errors, 408, 429 and 5xx are retried (tenacity: exponential backoff with jitter,
honouring ``Retry-After``) as long as nothing has been streamed yet; a failure after the first
streamed token ends the call with :class:`LLMError`. An error's message goes to the run's
clients (``run.failed``), so it says what failed but not where: the server's URL, host and port
are logged, never put in the message.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx_sse
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from agent_runner import metrics
from agentstream import tracing
from agentstream.retry import first_then_retry
from schemas.common import Usage
from schemas.errors import AgentstreamError, ErrorKind

log = logging.getLogger(__name__)

OnText = Callable[[str], Awaitable[None]]
"""Called with each fragment of the model's text as it streams."""

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(AgentstreamError):
    """The LLM call failed for good. ``kind``: ``llm_unreachable``, ``llm_http_error``,
    ``llm_stream_error``, ``llm_bad_response``; ``status``: HTTP status if any."""

    reason = "model call failed"

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(kind, message)
        self.status = status
        self.retryable = retryable
        self.retry_after: float | None = None


@dataclass(frozen=True)
class LLMEndpoint:
    """Where and how to call a model: ``base_url`` (…/v1), ``model``, ``api_key``, ``timeout`` (s)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    @property
    def chat_url(self) -> str:
        """``{base_url}/chat/completions``."""
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class ToolCallAccum:
    """A tool call assembled from streamed fragments."""

    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class StepResult:
    """One LLM call's outcome: the text, tool calls (in index order), finish reason, usage."""

    text: str = ""
    tool_calls: list[ToolCallAccum] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1


POOL_SHARD_CONNECTIONS = 8
"""Requests in flight (and keep-alive connections) per httpx connection pool. httpcore 1.0.9 scans
its whole pool on every request, quadratically and with a socket poll per idle connection
(encode/httpcore#1035, unmerged): at 64 concurrent runs one pool of 64 connections cost a quarter
of the runner's CPU. Several small pools, each request on the least busy one, keep the scan short."""


class LLMClient:
    """Shared by every run of an agent runner (a few small connection pools, see
    :data:`POOL_SHARD_CONNECTIONS`).

    ``max_attempts``: attempts per call for retryable failures.
    """

    def __init__(self, *, max_attempts: int = 5, stream_usage: bool = True, connect_timeout: float = 10.0):
        self.max_attempts = max_attempts
        self.stream_usage = stream_usage
        self._connect_timeout = connect_timeout
        self._shards: list[list[Any]] = []  # [httpx.AsyncClient, requests in flight]
        self._tls: ssl.SSLContext | None = None  # one for every pool (loading CAs costs ~10 ms)

    def _shard(self) -> list[Any]:
        """The least busy connection pool, or a new one if every pool is full."""
        best = min(self._shards, key=lambda shard: shard[1], default=None)
        if best is None or best[1] >= POOL_SHARD_CONNECTIONS:
            if self._tls is None:
                self._tls = httpx.create_ssl_context(trust_env=True)
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=POOL_SHARD_CONNECTIONS),
                trust_env=True, verify=self._tls,
            )
            tracing.instrument_httpx(client)  # each request: a span, its context in ``traceparent``
            best = [client, 0]
            self._shards.append(best)
        return best

    async def aclose(self) -> None:
        """Close every connection pool."""
        for client, _ in self._shards:
            await client.aclose()

    async def chat(
        self,
        endpoint: LLMEndpoint,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        parameters: dict[str, Any] | None = None,
        on_text: OnText | None = None,
    ) -> StepResult:
        """Call the model once, streaming; ``on_text`` gets each text fragment as it arrives.

        Raises LLMError when the call fails for good (after retries).
        """
        body: dict[str, Any] = {**(parameters or {}), "model": endpoint.model, "messages": messages, "stream": True}
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = tools
        headers = {"Accept": "text/event-stream"}
        if endpoint.api_key:
            headers["Authorization"] = f"Bearer {endpoint.api_key}"
        streamed = {"any": False}

        def retryable(err: BaseException) -> bool:
            return isinstance(err, LLMError) and err.retryable and not streamed["any"]

        attempts = 0

        async def attempt() -> StepResult:
            nonlocal attempts
            attempts += 1
            result = await self._once(endpoint, body, headers, on_text, streamed)
            result.attempts = attempts
            return result

        return await first_then_retry(
            attempt,
            retryable,
            lambda: AsyncRetrying(
                stop=stop_after_attempt(self.max_attempts - 1),
                wait=_RetryAfterOrBackoff(wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=1.0)),
                retry=retry_if_exception(retryable),
                reraise=True,
            ),
            first_wait=lambda err: (
                min(err.retry_after, 30.0)
                if isinstance(err, LLMError) and err.retry_after is not None
                else 0.25 + random.random() * 0.5
            ),
        )

    async def _once(
        self, endpoint: LLMEndpoint, body: dict[str, Any], headers: dict[str, str], on_text: OnText | None,
        streamed: dict[str, bool],
    ) -> StepResult:
        """One HTTP request: a ``chat {model}`` client span of the run's trace (the HTTP request
        under it is a span of the httpx instrumentation, whose context goes to the model server in
        ``traceparent``), timed and counted (agent_runner.metrics)."""
        started = time.perf_counter()
        model = metrics.model_label(endpoint.model)
        with tracing.span(f"chat {model}", kind=tracing.SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": endpoint.model,
        }) as span:
            try:
                result = await self._request(endpoint, body, headers, on_text, streamed)
            except LLMError as err:
                metrics.LLM_ERRORS.labels(model, err.kind).inc()
                metrics.LLM_REQUEST_DURATION.labels(model, "error").observe(time.perf_counter() - started)
                if span is not None:
                    if err.status is not None:
                        span.set_attribute("http.response.status_code", err.status)
                    tracing.mark_error(span, err.kind, err.message)
                raise
            metrics.LLM_REQUEST_DURATION.labels(model, "ok").observe(time.perf_counter() - started)
            if span is not None:
                span.set_attributes({"gen_ai.usage.input_tokens": result.usage.prompt_tokens,
                                     "gen_ai.usage.output_tokens": result.usage.completion_tokens})
                if result.finish_reason:
                    span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
            return result

    async def _request(
        self, endpoint: LLMEndpoint, body: dict[str, Any], headers: dict[str, str], on_text: OnText | None,
        streamed: dict[str, bool],
    ) -> StepResult:
        timeout = httpx.Timeout(connect=self._connect_timeout, read=endpoint.timeout, write=30.0, pool=30.0)
        shard = self._shard()
        shard[1] += 1
        try:
            async with shard[0].stream("POST", endpoint.chat_url, json=body, headers=headers, timeout=timeout) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread())[:2000].decode("utf-8", "replace")
                    log.warning("model server %s answered HTTP %d", endpoint.chat_url, resp.status_code)
                    err = LLMError(
                        ErrorKind.LLM_HTTP_ERROR,
                        f"the model server answered HTTP {resp.status_code}: {_error_message(text)}",
                        status=resp.status_code,
                        retryable=resp.status_code in RETRY_STATUSES,
                    )
                    err.retry_after = _retry_after(resp.headers.get("retry-after"))
                    raise err
                ctype = resp.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    # Some servers answer a streaming request with one JSON body.
                    return await self._from_json(await resp.aread(), on_text, streamed)
                return await self._from_stream(resp, on_text, streamed)
        except httpx.TimeoutException as err:
            log.warning("model server %s: timed out (%s)", endpoint.chat_url, type(err).__name__)
            raise LLMError(ErrorKind.LLM_UNREACHABLE, f"the model server did not answer in time ({type(err).__name__})",
                           retryable=True) from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
            # The details (host, port, resolver text) go to the log, not to the run's clients.
            log.warning("model server %s: %s: %s", endpoint.chat_url, type(err).__name__, err)
            raise LLMError(ErrorKind.LLM_UNREACHABLE, f"the model server could not be reached ({type(err).__name__})",
                           retryable=True) from None
        finally:
            shard[1] -= 1

    async def _from_stream(self, resp: httpx.Response, on_text: OnText | None, streamed: dict[str, bool]) -> StepResult:
        result = StepResult()
        calls: dict[int, ToolCallAccum] = {}
        text_parts: list[str] = []
        event_source = httpx_sse.EventSource(resp)
        done = False
        async for sse in event_source.aiter_sse():
            data = sse.data
            if not data or done:
                continue  # after [DONE]: read to the end, so the connection goes back to the pool
            if data.strip() == "[DONE]":
                done = True
                continue
            try:
                chunk = orjson.loads(data)  # a hot path: one per streamed token
            except json.JSONDecodeError:
                raise LLMError(ErrorKind.LLM_BAD_RESPONSE, f"unparseable stream event: {data[:200]!r}") from None
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error"):
                err = chunk["error"]
                message = err.get("message") if isinstance(err, dict) else str(err)
                raise LLMError(ErrorKind.LLM_STREAM_ERROR, f"the model server reported an error mid-stream: {message}")
            if chunk.get("usage"):
                result.usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if isinstance(content, str) and content:
                    text_parts.append(content)
                    streamed["any"] = True
                    if on_text is not None:
                        await on_text(content)
                for tc in delta.get("tool_calls") or []:
                    streamed["any"] = True
                    _merge_tool_call(calls, tc)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
        result.text = "".join(text_parts)
        result.tool_calls = [calls[i] for i in sorted(calls)]
        if result.tool_calls and result.finish_reason in (None, "stop"):
            result.finish_reason = "tool_calls"
        return result

    async def _from_json(self, raw: bytes, on_text: OnText | None, streamed: dict[str, bool]) -> StepResult:
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(
                ErrorKind.LLM_BAD_RESPONSE, f"neither an event stream nor a chat completion: {raw[:200]!r}"
            ) from None
        result = StepResult(text=message.get("content") or "", finish_reason=choice.get("finish_reason"))
        if body.get("usage"):
            result.usage = _usage(body["usage"])
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            args = fn.get("arguments", "")
            result.tool_calls.append(
                ToolCallAccum(call.get("id"), fn.get("name", ""), args if isinstance(args, str) else json.dumps(args))
            )
        if result.text:
            streamed["any"] = True
            if on_text is not None:
                await on_text(result.text)
        return result


class _RetryAfterOrBackoff:
    """tenacity wait: the server's ``Retry-After`` (capped at 30 s) if it gave one, else backoff."""

    def __init__(self, backoff: wait_base):
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, LLMError) and exc.retry_after is not None:
            return min(exc.retry_after, 30.0)
        return self.backoff(retry_state)


def _merge_tool_call(calls: dict[int, ToolCallAccum], tc: dict[str, Any]) -> None:
    index = tc.get("index")
    if not isinstance(index, int):
        # No index (some servers): continue the call with this id, else start a new one.
        index = next((i for i, c in calls.items() if tc.get("id") and c.id == tc.get("id")), None)
        if index is None:
            index = len(calls) if tc.get("id") or not calls else max(calls)
    call = calls.setdefault(index, ToolCallAccum())
    if tc.get("id") and not call.id:
        call.id = tc["id"]
    fn = tc.get("function") or {}
    name = fn.get("name")
    if name and name != call.name:
        call.name = name if not call.name else call.name + name
    args = fn.get("arguments")
    if isinstance(args, dict):  # a few servers send an object
        args = json.dumps(args)
    if args:
        call.arguments += args


def _usage(raw: dict[str, Any]) -> Usage:
    p = int(raw.get("prompt_tokens") or 0)
    c = int(raw.get("completion_tokens") or 0)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=int(raw.get("total_tokens") or p + c))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_message(text: str) -> str:
    try:
        body = json.loads(text)
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    except (ValueError, AttributeError):
        return text.strip()[:500] or "(empty body)"
