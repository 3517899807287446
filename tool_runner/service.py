"""The tool runner: each tool as a NATS micro-service endpoint on ``tools.*.{tool}`` in one queue
group, so any number of tool runners share the calls and each can be scaled alone. A tool runner
serves every tool, or those ``TOOL_RUNNER_TOOLS`` names (a pool of http_request runners apart
from the read_file ones); agent runners find out which tools are served by the service's
nats.micro discovery (agent_runner.tool_directory).

Calls are executed concurrently (up to TOOL_RUNNER_CONCURRENCY; a micro endpoint alone would
handle one request at a time: docs/nats.md, "Micro services and request/reply"). A call repeated
with the same idempotency key (``{run_id}:{tool_call_id}``) while it runs or shortly after is
answered with the first result, not executed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import nats.micro
import orjson
from nats.aio.client import Client as NATS
from nats.micro.request import Request
from nats.micro.service import Service
from pydantic import ValidationError

from agentstream import logs, tracing
from agentstream.agents import load_agents
from agentstream.bus import ensure_topology
from agentstream.logs import report_ready
from agentstream.policies import PolicyWatcher
from agentstream.settings import Settings
from schemas import headers as H
from schemas import subjects
from schemas.common import ErrorInfo
from schemas.errors import ErrorKind
from schemas.permissions import Role
from schemas.tenants import TenantPolicy
from schemas.tools import TOOL_RUNNER_TOOLS, ToolCallRequest, ToolCallResult
from tool_runner import metrics
from tool_runner.errors import ToolError
from tool_runner.filepool import FilePool
from tool_runner.mcp.tools import ENDPOINTS as MCP_ENDPOINTS
from tool_runner.mcp.tools import McpTools
from tool_runner.once import ResultStore, StoreUnavailable
from tool_runner.tools import ToolContext, registry

log = logging.getLogger(__name__)

SERVICE_NAME = subjects.TOOL_SERVICE
SERVICE_VERSION = "0.1.0"
RESULT_CACHE_SECONDS = 600.0
RESULT_CACHE_SIZE = 10_000


def served_tools(settings: Settings) -> list[str]:
    """The tools ``TOOL_RUNNER_TOOLS`` names (every tool when unset), in catalog order. Raises
    ValueError naming the variable and the known tools for an unknown name."""
    known = list(registry())
    wanted = [t.strip() for t in settings.tool_runner_tools.split(",") if t.strip()]
    if not wanted:
        return known
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ValueError(f"TOOL_RUNNER_TOOLS={settings.tool_runner_tools!r}: unknown tool(s) {', '.join(unknown)}; "
                         f"the tools are {', '.join(known)}")
    return [t for t in known if t in wanted]


class ToolRunner:
    """Serves the tools (:func:`served_tools`) on one NATS connection. ``start()``, then
    ``stop(grace)`` (seconds). Raises ValueError for a bad ``TOOL_RUNNER_TOOLS``."""

    def __init__(self, settings: Settings, nc: NATS):
        self.settings = settings
        self.nc = nc
        self.id = settings.runner_name
        root = settings.tool_root or Path.cwd()
        self.root = root.resolve()
        every = registry()
        self._tools = {name: every[name] for name in served_tools(settings)}
        self._slots = asyncio.Semaphore(settings.tool_runner_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._done: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._service: Service | None = None
        self._results: ResultStore | None = None
        self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._files = FilePool(settings.tool_file_workers, settings.tool_file_timeout)
        self.ctx = ToolContext(settings=settings, root=self.root, http=self._http, files=self._files)
        self._contexts: dict[str, ToolContext] = {}
        self.policies: PolicyWatcher | None = None
        catalog = load_agents(settings.agents_dir, key_env_pattern=settings.llm_key_env_pattern,
                              mcp_stdio_commands=settings.mcp_stdio_commands)
        self.mcp = McpTools(settings, catalog, policy_of=self._policy_of, root_of=lambda t: self.context_for(t).root)

    async def start(self) -> None:
        """Wait for the streams and buckets, then register the micro service and one endpoint per tool."""
        await ensure_topology(self.nc, self.settings)
        kv = await self.nc.jetstream().key_value(subjects.TOOL_RESULTS_BUCKET)
        self._results = ResultStore(kv, self.id, claim_ttl=max(3 * self.settings.tool_progress_interval, 3.0))
        self.policies = PolicyWatcher(self.nc.jetstream())
        await self.policies.start()
        service = self._service = await nats.micro.add_service(
            self.nc,
            name=SERVICE_NAME,
            version=SERVICE_VERSION,
            description=f"agentstream tools ({', '.join(self._tools)})",
            metadata={"runner": self.id, "root": self.root.name},
            queue_group=subjects.TOOL_QUEUE_GROUP,
        )
        self.mcp.start()
        for name in (*self._tools, *MCP_ENDPOINTS):
            await service.add_endpoint(
                name=name,
                subject=subjects.tool_all_tenants(name),
                handler=self._on_request,
                queue_group=subjects.TOOL_QUEUE_GROUP,
            )
        log.info("tool runner %s serving %s (root: %s)", self.id, ", ".join((*self._tools, *MCP_ENDPOINTS)), self.root)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking calls, let running ones finish for up to ``grace`` seconds, then close."""
        if self._service is not None:
            await self._service.stop()
        if self.policies is not None:
            await self.policies.stop()
        if self._tasks:
            log.info("waiting up to %.0f s for %d tool call(s)", grace, len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
        await self.mcp.close()
        await self._http.aclose()
        self._files.close()

    async def _on_request(self, request: Request) -> None:
        # Runs on the endpoint's (serial) subscription task: hand off at once, bounded by _slots.
        await self._slots.acquire()
        task = asyncio.create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, request: Request) -> None:
        try:
            tenant, tool_name = subjects.parse_tool(request.subject)
            call = ToolCallRequest.model_validate_json(request.data)
        except (ValueError, ValidationError) as err:
            await _respond_error(request, "400", f"bad tool request: {err}")
            return
        if tool_name not in self._tools and tool_name not in MCP_ENDPOINTS:
            await _respond_error(request, "404", f"unknown tool {tool_name!r}")
            return
        headers = request.headers or {}
        idempotency_key = headers.get(H.TOOL_CALL_ID) or f"{call.run_id}:{call.tool_call_id}"
        key = f"{tenant}:{idempotency_key}"
        progress = None
        if headers.get(H.TOOL_PROGRESS) == "1":
            progress = asyncio.create_task(self._progress(request, call.progress_interval))
        try:
            with logs.bound(run_id=call.run_id, tenant=tenant), tracing.span(
                f"execute_tool {tool_name}", kind=tracing.SpanKind.SERVER, parent=headers,
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool_name,
                            "gen_ai.tool.call.id": call.tool_call_id, "agentstream.run_id": call.run_id,
                            "agentstream.tenant": tenant, "agentstream.runner": self.id},
            ):
                log.debug("tool call %s: %s", call.tool_call_id, tool_name)
                payload = await self._result_for(key, tool_name, call, tenant=tenant, idempotency_key=idempotency_key)
        finally:
            if progress is not None:
                progress.cancel()
        try:
            await request.respond(payload, headers={H.RUNNER: self.id})
        except Exception as err:  # connection gone; the caller retries
            log.warning("could not send result of %s: %s", key, err)

    async def _progress(self, request: Request, interval: float) -> None:
        """Empty replies marked ``Agentstream-Progress`` every ``interval`` seconds while the call
        runs (a reply subject takes any number of messages; the result is the last)."""
        # The first one after one interval, not at once: a call done sooner needs none (most are),
        # and the caller gives up only after three silent intervals.
        hdrs = {H.TOOL_PROGRESS: "1", H.RUNNER: self.id}
        try:
            while True:
                await asyncio.sleep(interval)
                await request.respond(b"", headers=hdrs)
        except asyncio.CancelledError:
            pass
        except Exception as err:  # no reply subject, or the connection is gone: the result still goes
            log.debug("progress of %s stopped: %s", request.subject, err)

    async def _result_for(
        self, key: str, tool_name: str, call: ToolCallRequest, *, tenant: str, idempotency_key: str
    ) -> bytes:
        """The serialized result for this idempotency key: cached, joined while running here, or
        new; for a tool with side effects, also stored for (and looked up from) every other tool
        runner (tool_runner/once.py)."""
        now = time.monotonic()
        cached = self._done.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            payload = await self._once(tool_name, call, tenant, idempotency_key)
            future.set_result(payload)
            self._remember(key, payload)
            return payload
        except BaseException as err:
            if not future.done():
                future.set_exception(err)
                future.exception()  # mark retrieved
            raise
        finally:
            self._inflight.pop(key, None)

    async def _once(self, tool_name: str, call: ToolCallRequest, tenant: str, idempotency_key: str) -> bytes:
        async def execute() -> bytes:
            return orjson.dumps((await self._execute(tool_name, call, tenant)).model_dump(mode="json"))

        if tool_name == subjects.MCP_CALL_TOOL:  # side effects unless the server says readOnlyHint
            side_effects = not await self.mcp.read_only(tenant, call.arguments, call.timeout)
        else:
            side_effects = tool_name in TOOL_RUNNER_TOOLS and TOOL_RUNNER_TOOLS[tool_name].side_effects
        if not side_effects or self._results is None:
            return await execute()
        started = time.perf_counter()
        try:
            return await self._results.once(tenant, idempotency_key, execute, within=call.timeout)
        except StoreUnavailable as err:
            log.warning("tool call %s not executed: results store unreachable: %s", idempotency_key, err)
            error = ErrorInfo(type=ErrorKind.TOOL_UNAVAILABLE,
                              message="the tool's results store is unreachable; not executed")
        except TimeoutError:
            error = ErrorInfo(type=ErrorKind.TIMEOUT, message=f"{tool_name} did not finish within {call.timeout:g} s")
        return orjson.dumps(self._result(tool_name, call, started, error=error).model_dump(mode="json"))

    def _remember(self, key: str, payload: bytes) -> None:
        self._done[key] = (time.monotonic() + RESULT_CACHE_SECONDS, payload)
        self._done.move_to_end(key)
        while len(self._done) > RESULT_CACHE_SIZE:
            self._done.popitem(last=False)

    def context_for(self, tenant: str) -> ToolContext:
        """The tools' context for ``tenant``: its own ``tool_root`` from its policy (keys file), else
        TOOL_ROOT (or where the tool runner started)."""
        policy = self.policies.get(tenant) if self.policies is not None else None
        if policy is None or policy.tool_root is None:
            return self.ctx
        ctx = self._contexts.get(policy.tool_root)
        if ctx is None:
            ctx = self._contexts[policy.tool_root] = replace(self.ctx, root=Path(policy.tool_root).resolve())
        return ctx

    def _policy_of(self, tenant: str) -> TenantPolicy | None:
        return self.policies.get(tenant) if self.policies is not None else None

    async def _execute(self, tool_name: str, call: ToolCallRequest, tenant: str) -> ToolCallResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(call.timeout):
                if tool_name in MCP_ENDPOINTS:
                    output = await self.mcp.execute(tool_name, tenant, call.arguments, call.timeout)
                else:
                    args = TOOL_RUNNER_TOOLS[tool_name].args.model_validate(call.arguments)
                    output = await self._tools[tool_name](args, self.context_for(tenant))
            return self._result(tool_name, call, started, output=output)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in err.errors()
            )
            return self._result(tool_name, call, started,
                                error=ErrorInfo(type=ErrorKind.INVALID_ARGUMENTS, message=problems))
        except ToolError as err:
            return self._result(tool_name, call, started, error=ErrorInfo(type=err.kind, message=err.message))
        except TimeoutError:
            msg = f"{tool_name} did not finish within {call.timeout:g} s"
            return self._result(tool_name, call, started, error=ErrorInfo(type=ErrorKind.TIMEOUT, message=msg))
        except Exception as err:  # a tool bug must not kill the runner
            log.exception("tool %s failed", tool_name)
            return self._result(
                tool_name, call, started,
                error=ErrorInfo(type=ErrorKind.INTERNAL_ERROR, message=f"{type(err).__name__}: {err}"),
            )

    def _result(
        self, tool_name: str, call: ToolCallRequest, started: float, *, output: Any = None,
        error: ErrorInfo | None = None,
    ) -> ToolCallResult:
        """The result of executing ``tool_name`` here (counted in tool_runner.metrics)."""
        seconds = time.perf_counter() - started
        metrics.executed(tool_name, seconds, error.type if error is not None else None)
        if error is not None:
            tracing.mark_error(tracing.current(), error.type)
        return ToolCallResult(
            tool_call_id=call.tool_call_id,
            ok=error is None,
            output=output,
            error=error,
            ms=round(seconds * 1000, 3),
            runner=self.id,
        )


async def _respond_error(request: Request, code: str, description: str) -> None:
    try:
        await request.respond_error(code, description)
    except Exception as err:
        log.warning("could not send error reply: %s", err)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, serve tools until ``stop`` is set, then shut down gracefully. Prints ``tool-runner
    health: <url>`` (agentstream.probe, on METRICS_BIND) and ``tool-runner ready: <id>``."""
    from agentstream.bus import close, connect
    from agentstream.probe import serve_probe

    try:
        served_tools(settings)
    except ValueError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    nc = await connect(settings, f"tool-runner {settings.runner_name}", role=Role.TOOL_RUNNER)
    probe_stop = asyncio.Event()
    probe = asyncio.create_task(serve_probe("tool-runner", settings.metrics_bind, lambda: nc.is_connected, probe_stop))
    runner = ToolRunner(settings, nc)
    await runner.start()
    report_ready(f"tool-runner ready: {runner.id}")
    await stop.wait()
    log.info("stopping")
    await runner.stop(settings.shutdown_grace)
    await close(nc)
    probe_stop.set()
    await probe
