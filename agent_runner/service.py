"""Starting and stopping one agent runner process."""

from __future__ import annotations

import asyncio
import logging
import os

from agent_runner.runner import AgentRunner
from agentstream import llmsse_env
from agentstream.agents import load_agents
from agentstream.agentstore import AgentRegistry
from agentstream.bus import close, connect, ensure_topology
from agentstream.logs import report_ready
from agentstream.origins import ModelServers
from agentstream.probe import Sampler, serve_probe
from agentstream.settings import Settings
from schemas.permissions import Role

log = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then stop gracefully (SHUTDOWN_GRACE).

    Without LLM_BASE_URL the built-in model is served in this process, on a free loopback port.
    Prints ``agent-runner health: <url>`` (agentstream.probe, on METRICS_BIND: ``/healthz`` and
    ``/metrics``) and
    ``agent-runner ready: <id>`` once pulling.
    """
    for message in llmsse_env.warnings(os.environ, settings, llmsse_env.RUNNER_VARIABLES):
        log.warning("%s", message)
    catalog = load_agents(settings.agents_dir, key_env_pattern=settings.llm_key_env_pattern,
                          mcp_stdio_commands=settings.mcp_stdio_commands)
    for error in catalog.errors:
        log.error("agent file problem: %s", error)
    log.info("agents: %s", ", ".join(sorted(catalog.agents)) or "none")

    model_stop = asyncio.Event()
    model_task = None
    base_url = settings.llm_base_url
    if not base_url:
        from agentstream.builtin_model.server import create_app
        from agentstream.httpserve import listen, serve_app, url_of

        sock = listen("127.0.0.1:0")
        base_url = url_of(sock) + "/v1"
        model_task = asyncio.create_task(serve_app(create_app(settings), sock, model_stop, graceful_timeout=1.0))
        log.info("LLM_BASE_URL is not set: using the built-in stand-in model at %s", base_url)

    nc = await connect(settings, f"agent-runner {settings.runner_name}", role=Role.AGENT_RUNNER)
    probe_stop = asyncio.Event()
    samplers: list[Sampler] = []
    started: list[AgentRunner] = []  # the runner, once made: its load is part of /healthz
    probe = asyncio.create_task(serve_probe("agent-runner", settings.metrics_bind, lambda: nc.is_connected, probe_stop,
                                            samplers, details=lambda: started[0].load() if started else {}))
    # Every tenant's agents: the directory's and those created over the API (AGENTS bucket), followed
    # before any run is taken.
    registry = AgentRegistry(catalog, key_env_pattern=settings.llm_key_env_pattern,
                             servers=ModelServers.of(settings.agents_llm_origins, settings.llm_base_url))
    await ensure_topology(nc, settings)
    await registry.start(nc.jetstream())
    runner = AgentRunner(settings, nc, registry, llm_base_url=base_url)
    started.append(runner)
    samplers.append(runner.sample_metrics)
    await runner.start()
    report_ready(f"agent-runner ready: {runner.id}")
    await stop.wait()
    log.info("stopping: %d run(s) in flight", runner.active_runs)
    await runner.stop(settings.shutdown_grace)
    await registry.stop()
    await close(nc)
    probe_stop.set()
    await probe
    if model_task is not None:
        model_stop.set()
        await model_task
