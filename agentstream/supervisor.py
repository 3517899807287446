"""``agentstream up``: everything on one machine, each component its own OS process.

1. nats-server with JetStream (embedded, unless NATS_URL points at a server), or with
   ``--nats-cluster N`` (``AGENTSTREAM_NATS_CLUSTER``) a JetStream cluster of N servers on loopback,
   its streams and buckets kept in ``STREAM_REPLICAS`` copies (default min(N, 3)), every component
   given every server's URL,
2. the built-in model (unless LLM_BASE_URL is set),
3. the edge, one agent runner, one tool runner and one webhook sender,

each with its output prefixed by its name. A component that exits on its own is restarted (with a
growing pause). Ctrl-C (or SIGTERM) stops the components gracefully, then the server.

The components are started as agentstream/launch.py starts them (its ``command`` and ``READY``
table) and say they are ready the same way: on a ready pipe (``AGENTSTREAM_READY_FD``), read here
with asyncio; their stdout is only shown. The edge counts as ready once it has also pushed
``edge connected:`` (it has reached NATS), so "agentstream is up" means its API answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from agentstream import launch, llmsse_env
from agentstream.bus import setup
from agentstream.natsauth import AuthStore
from agentstream.natsserver import EmbeddedNats, NatsCluster
from agentstream.settings import Settings
from schemas.permissions import Role

COLORS = {"edge": "36", "agent-runner": "35", "tool-runner": "33", "webhook-sender": "31", "builtin-model": "32",
          "nats": "34"}


def _prefix(name: str) -> str:
    label = f"{name:>14} |"
    if sys.stdout.isatty() and name in COLORS:
        return f"\x1b[{COLORS[name]}m{label}\x1b[0m "
    return label + " "


@dataclass
class Component:
    """A child process: its name, module, extra environment; the running process and its ready URL
    (``ready`` is set once it has pushed its ready line, and for the edge its ``edge connected:``
    line, on its ready pipe)."""

    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_line: str | None = None
    restarts: int = 0

    def ready_url(self) -> str:
        """The URL its ready line names (``{name} ready: URL``)."""
        if self.ready_line is None:
            raise RuntimeError(f"{self.name} has not said it is ready")
        return launch.ready_value(self.ready_line)


class Supervisor:
    """Starts, watches and stops the components. ``settings``: the environment's settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.nats: EmbeddedNats | NatsCluster | None = None
        self.auth: AuthStore | None = None
        self.components: list[Component] = []
        self.stopping = False
        self._pumps: set[asyncio.Task[None]] = set()  # the event loop holds tasks only weakly

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop``; returns the exit code."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # llm-sse's settings: named once here, with what to set instead (the components, started
        # without them, do not repeat it).
        llmsse = llmsse_env.EDGE_VARIABLES + llmsse_env.RUNNER_VARIABLES
        for message in llmsse_env.warnings(env, self.settings, llmsse):
            self._say("agentstream", f"warning: {message}")
        for name in llmsse:
            env.pop(name, None)
        if not self.settings.nats_url:
            config = None
            if self.settings.nats_auth:
                self.auth = AuthStore(self.settings.data_dir / "auth")
                self.auth.ensure_components()
                config = self.auth.write_server_config()
            how = (f"authentication on (identities in {self.auth.directory})" if self.auth is not None
                   else "NO authentication (AGENTSTREAM_NATS_AUTH=false): anyone who reaches the port may do anything")
            size = self.settings.nats_cluster
            if size > 1:
                cluster = NatsCluster(self.settings.data_dir / "nats-cluster", size, port=self.settings.nats_port,
                                      auth_config=config)
                self.nats = cluster
                url = await asyncio.to_thread(cluster.start, 60.0)
                if "STREAM_REPLICAS" not in os.environ:
                    self.settings = self.settings.changed(stream_replicas=min(size, 3))
                env["STREAM_REPLICAS"] = str(self.settings.stream_replicas)
                self._say("nats", f"embedded JetStream cluster of {size} nats-servers on {url} (stores under "
                                  f"{cluster.base_dir}; routes with their own password); streams and buckets "
                                  f"with {self.settings.stream_replicas} replica(s); {how}")
            else:
                single = EmbeddedNats(self.settings.data_dir / "nats", port=self.settings.nats_port, config=config)
                self.nats = single
                url = await asyncio.to_thread(single.start)
                self._say("nats", f"embedded nats-server with JetStream on {url} (store: {single.store_dir}); {how}")
            env["NATS_URL"] = url
        else:
            self._say("nats", f"using NATS_URL={self.settings.nats_url}")
        try:
            if self.auth is not None:
                admin = self.settings.changed(nats_url=env["NATS_URL"], nats_creds=self.auth.seed_path(Role.ADMIN))
                await setup(admin)
            if not self.settings.llm_base_url:
                model = Component("builtin-model", "agentstream.builtin_model")
                await self._start(model, env)
                await self._wait_ready(model)
                env["LLM_BASE_URL"] = model.ready_url()
                self._say(
                    "builtin-model", "LLM_BASE_URL is not set: agents use the built-in stand-in model (see README)"
                )
            for role, module in ((Role.TOOL_RUNNER, "tool_runner"), (Role.AGENT_RUNNER, "agent_runner"),
                                 (Role.WEBHOOK_SENDER, "webhook_sender"), (Role.EDGE, "edge")):
                own = {"NATS_CREDS": str(self.auth.seed_path(role))} if self.auth is not None else {}
                await self._start(Component(role.value, module, own), env)
            for comp in self.components:
                await self._wait_ready(comp)
            edge = next(c for c in self.components if c.name == "edge")
            url = edge.ready_url()
            print(
                f"\nagentstream is up: {url}\n"
                f"  curl -s -X POST {url}/api/agents/programmer-helper/chat -H 'Content-Type: application/json' "
                "-d '{\"message\": \"How many lines does pyproject.toml have?\"}'\n"
                f"  curl -N {url}/api/runs/RUN_ID/events\n"
                "  agentstream chat programmer-helper \"What does README.md say?\"\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            await stop.wait()
        finally:
            await self.shutdown()
        return 0

    async def _start(self, comp: Component, env: dict[str, str]) -> None:
        if comp not in self.components:
            self.components.append(comp)
        comp.ready.clear()
        read_end, write_end = launch.ready_pipe()
        try:
            comp.proc = await asyncio.create_subprocess_exec(
                *launch.command(comp.module),
                env=launch.child_env({**env, **comp.env}, write_end), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, pass_fds=(write_end,),
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child holds it now: end of file here once it exits
        for job in (self._watch_ready(comp, read_end), self._pump(comp, comp.proc, env)):
            task = asyncio.create_task(job)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _watch_ready(self, comp: Component, read_end: int) -> None:
        """Set ``comp.ready`` once the child has pushed its ``READY`` line (then, for the edge, its
        ``CONNECTED`` line) on its ready pipe. End of file first: the child died, and :meth:`_pump`
        restarts it with a new pipe."""
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0))
        try:
            wanted = [launch.READY[comp.module]]
            if comp.module in launch.CONNECTED:
                wanted.append(launch.CONNECTED[comp.module])
            for prefix in wanted:
                while True:
                    raw = await reader.readline()
                    if not raw:
                        return
                    line = launch.pushed_line(raw)
                    if line.startswith(prefix):
                        break
                if prefix == launch.READY[comp.module]:
                    comp.ready_line = line
            comp.ready.set()
        finally:
            transport.close()

    async def _pump(self, comp: Component, proc: asyncio.subprocess.Process, env: dict[str, str]) -> None:
        assert proc.stdout is not None
        prefix = _prefix(comp.name)
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()
        code = await proc.wait()
        if not self.stopping:
            comp.restarts += 1
            pause = min(2 ** comp.restarts, 30)
            self._say(comp.name, f"exited with {code}; restarting in {pause} s")
            await asyncio.sleep(pause)
            if not self.stopping:
                await self._start(comp, env)

    async def _wait_ready(self, comp: Component, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - named in the error
        try:
            await asyncio.wait_for(comp.ready.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{comp.name} did not become ready within {timeout:g} s") from None

    async def shutdown(self) -> None:
        """SIGTERM the components (edge first), wait for them, then stop nats-server."""
        if self.stopping:
            return
        self.stopping = True
        order = {"edge": 0, "agent-runner": 1, "tool-runner": 2, "webhook-sender": 3, "builtin-model": 4}
        grace = self.settings.shutdown_grace + 5
        for comp in sorted(self.components, key=lambda c: order.get(c.name, 9)):
            proc = comp.proc
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self._say(comp.name, f"did not stop within {grace:g} s; killing it")
                proc.kill()
                await proc.wait()
        if self.nats is not None:
            started = time.monotonic()
            await asyncio.to_thread(self.nats.stop)
            self._say("nats", f"stopped ({time.monotonic() - started:.1f} s)")

    def _say(self, name: str, text: str) -> None:
        sys.stdout.write(_prefix(name) + text + "\n")
        sys.stdout.flush()
