"""Calling tools on tool runners: NATS request/reply on ``tools.{tenant}.{tool}``, with retries.

Each attempt asks for progress messages (``Agentstream-Progress: 1``), so a tool runner that dies
mid-call is noticed after three missed progress intervals instead of at the end of the tool's
whole budget; the call is then retried on another tool runner of the queue group (tenacity:
exponential backoff with jitter). "No responders" (no tool runner serves the tool right now) is
retried the same way until the budget runs out when the tool was served a moment ago (its tool
runner is restarting), and ends the call at once with ``tool_unavailable`` when no tool runner
serves it (agent_runner.tool_directory). Every attempt carries the same idempotency key
``{run_id}:{step}:{tool_call_id}``, so a tool runner that already has the result returns it
instead of running the tool again.

A tool's own failure is not retried: it is the tool's answer, and goes back to the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from agent_runner.tool_directory import ToolDirectory
from agentstream import tracing
from agentstream.retry import first_then_retry
from schemas import headers as H
from schemas import subjects
from schemas.common import ErrorInfo
from schemas.errors import ErrorKind
from schemas.tools import ToolCallRequest, ToolCallResult

log = logging.getLogger(__name__)


class _Retry(Exception):
    """An attempt that may succeed on another try (no responders, silent or dead tool runner)."""


class _NoResponders(_Retry):
    """No tool runner took the call (nats "no responders")."""


class _Unserved(Exception):
    """No tool runner serves the tool: no point in retrying."""


@dataclass
class ToolOutcome:
    """How a tool call ended: ``ok`` + ``output``, or ``error``; ``ms`` wall time over all
    ``attempts``; ``runner``: the tool runner that answered."""

    ok: bool
    output: Any = None
    error: ErrorInfo | None = None
    ms: float = 0.0
    attempts: int = 1
    runner: str | None = None


class ToolClient:
    """Calls tools for one agent runner. ``progress_interval``: seconds asked between progress
    messages; ``restart_grace``: seconds a tool last seen served is taken to be restarting when no
    tool runner answers (``TOOL_RESTART_GRACE``, agent_runner.tool_directory)."""

    def __init__(self, nc: NATS, *, progress_interval: float = 1.0, restart_grace: float = 30.0):
        self.nc = nc
        self.progress_interval = progress_interval
        self.directory = ToolDirectory(nc, restart_grace=restart_grace)

    async def call(
        self,
        tenant: str,
        tool: str,
        *,
        run_id: str,
        tool_call_id: str,
        idempotency_key: str,
        arguments: dict[str, Any],
        budget: float,
    ) -> ToolOutcome:
        """Invoke ``tool`` with ``arguments``; never raises for tool or transport failures.

        ``budget``: seconds for the whole call, retries included.
        """
        started = time.perf_counter()
        subject = subjects.tool(tenant, tool)
        deadline = time.monotonic() + budget
        attempts = 0
        last_problem = "no attempt made"

        async def one() -> ToolCallResult:
            nonlocal attempts, last_problem
            attempts += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            request = ToolCallRequest(
                run_id=run_id,
                tool_call_id=tool_call_id,
                arguments=arguments,
                timeout=max(remaining - 0.05, 0.01),
                progress_interval=self.progress_interval,
            )
            try:
                result = await self._attempt(subject, idempotency_key, request, remaining)
            except _NoResponders as err:
                if await self.directory.unserved(tool):
                    raise _Unserved from err
                last_problem = str(err)
                log.info("tool %s call %s attempt %d: %s; retrying", tool, tool_call_id, attempts, err)
                raise
            except _Retry as err:
                last_problem = str(err)
                log.info("tool %s call %s attempt %d: %s; retrying", tool, tool_call_id, attempts, err)
                raise
            if result.runner is not None:
                self.directory.saw(tool)
            return result

        try:
            result = await first_then_retry(
                one,
                lambda err: isinstance(err, _Retry),
                lambda: AsyncRetrying(
                    stop=stop_after_delay(max(deadline - time.monotonic(), 0.0)),
                    wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.2),
                    retry=retry_if_exception_type(_Retry),
                    reraise=True,
                ),
            )
        except _Unserved:
            return ToolOutcome(
                ok=False,
                error=ErrorInfo(type=ErrorKind.TOOL_UNAVAILABLE,
                                message=f"no tool runner serves {tool} (TOOL_RUNNER_TOOLS)"),
                ms=round((time.perf_counter() - started) * 1000, 3),
                attempts=attempts,
            )
        except (_Retry, TimeoutError):
            ms = (time.perf_counter() - started) * 1000
            return ToolOutcome(
                ok=False,
                error=ErrorInfo(
                    type=ErrorKind.TOOL_UNAVAILABLE,
                    message=f"{tool} gave no result within {budget:g} s ({last_problem})"
                ),
                ms=round(ms, 3),
                attempts=attempts,
            )
        ms = (time.perf_counter() - started) * 1000
        return ToolOutcome(
            ok=result.ok,
            output=result.output,
            error=result.error,
            ms=round(ms, 3),
            attempts=attempts,
            runner=result.runner,
        )

    async def _attempt(self, subject: str, key: str, request: ToolCallRequest, remaining: float) -> ToolCallResult:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            headers = {H.TOOL_PROGRESS: "1", H.TOOL_CALL_ID: key}
            tracing.inject(headers)  # the tool runner's span joins the run's trace
            await self.nc.publish(subject, orjson.dumps(request.model_dump(mode="json")), reply=inbox, headers=headers)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + remaining
            silence = max(3 * self.progress_interval, 1.0)
            while True:
                wait = min(silence, deadline - loop.time())
                if wait <= 0:
                    raise TimeoutError
                try:
                    msg = await sub.next_msg(timeout=wait)
                except TimeoutError:
                    if loop.time() >= deadline:
                        raise TimeoutError from None
                    raise _Retry(f"no word from a tool runner for {silence:g} s") from None
                hdrs = msg.headers or {}
                if hdrs.get(H.STATUS) == "503":
                    raise _NoResponders("no tool runner took the call")
                if hdrs.get(H.TOOL_PROGRESS):
                    continue
                if hdrs.get(H.SERVICE_ERROR_CODE):
                    return ToolCallResult(
                        tool_call_id=request.tool_call_id,
                        ok=False,
                        error=ErrorInfo(
                            type=ErrorKind.TOOL_PROTOCOL_ERROR, message=hdrs.get(H.SERVICE_ERROR, "tool runner error")
                        ),
                        runner=hdrs.get(H.RUNNER),
                    )
                try:
                    return ToolCallResult.model_validate_json(msg.data)
                except ValidationError as err:
                    return ToolCallResult(
                        tool_call_id=request.tool_call_id,
                        ok=False,
                        error=ErrorInfo(type=ErrorKind.TOOL_PROTOCOL_ERROR, message=f"unreadable tool result: {err}"),
                    )
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # connection closing
                pass
