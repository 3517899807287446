"""Starting agentstream's processes on this machine: nats-server (or a JetStream cluster of them),
the built-in model, edges, agent runners, tool runners and webhook senders, each a separate OS
process, its log in a directory. The test suite and ``make bench`` both start their systems here; ``agentstream up``'s
supervisor (agentstream/supervisor.py) starts the same modules with the same ready lines.

Every listening port is chosen by the process that listens (port 0, or nats-server's ``-p -1``)
and read back from what it reports (``<name> ready: <url>``, nats-server's ports file), so no
port can be taken between being chosen and being bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentstream.logs import announced
from agentstream.natsauth import AuthStore, connect_options
from agentstream.natsserver import EmbeddedNats, NatsCluster
from agentstream.settings import REPO_ROOT
from schemas.permissions import Role, inbox_prefix

READY = {"edge": "edge ready: ", "agent_runner": "agent-runner ready: ", "tool_runner": "tool-runner ready: ",
         "webhook_sender": "webhook-sender ready: ", "agentstream.builtin_model": "builtin-model ready: "}
"""The line each component module prints once it serves (``python -m <module>``), before its URL or id."""


def command(module: str) -> list[str]:
    """The command that runs a component module with this Python."""
    return [sys.executable, "-m", module]


def ready_value(line: str) -> str:
    """What follows ``ready: `` on a ready line (a URL or a runner id)."""
    return line.split("ready: ", 1)[1].strip()


class Proc:
    """One component process (``python -m module``), its log file and its ``<name> ready:`` line."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path, ready_prefix: str):
        self.name = name
        self.module = module
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.ready_prefix = ready_prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_line: str | None = None

    def start(self, timeout: float = 30.0) -> Proc:
        log = open(self.log_path, "ab")
        offset = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                for line in fh.read().decode("utf-8", "replace").splitlines():
                    line = announced(line)  # plain, or a JSON log line (LOG_FORMAT=json)
                    if line.startswith(self.ready_prefix):
                        self.ready_line = line
                        return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} not ready within {timeout:g} s:\n{self.tail()}")

    @property
    def health_url(self) -> str:
        """The ``/healthz`` URL of the probe server (METRICS_BIND) an edge or runner printed last
        (``<name> health: <url>``; a restarted process appends to the same log)."""
        for line in reversed([announced(x) for x in self.log_path.read_text(errors="replace").splitlines()]):
            if " health: http" in line:
                return line.split(" health: ", 1)[1].strip()
        raise RuntimeError(f"{self.name} printed no health URL")

    @property
    def metrics_url(self) -> str:
        """The ``/metrics`` URL of an edge or runner (next to its probe's ``/healthz``)."""
        return self.health_url.removesuffix("/healthz") + "/metrics"

    @property
    def ready_value(self) -> str:
        """What follows ``ready: `` on the ready line (a URL or a runner id)."""
        assert self.ready_line is not None
        return self.ready_line.split("ready: ", 1)[1].strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class System:
    """A running agentstream: one nats-server (or a JetStream cluster of them) and any number of
    components."""

    base: Path
    env: dict[str, str]
    nats: EmbeddedNats | NatsCluster
    auth: AuthStore | None = None
    procs: list[Proc] = field(default_factory=list)
    edge_url: str = ""
    model_url: str = ""
    _counter: int = 0

    def _env(self, **extra: str) -> dict[str, str]:
        return {**self.env, **{k: str(v) for k, v in extra.items()}}

    def creds(self, role: Role | str) -> Path:
        """The seed file of a component identity (admin, edge, agent-runner, tool-runner)."""
        assert self.auth is not None, "this system runs without authentication"
        return self.auth.seed_path(role)

    def connect_options(self, role: Role | str = Role.ADMIN) -> dict[str, Any]:
        """``nats.connect`` keyword arguments for a bare client with a component's identity (every
        server of a cluster)."""
        servers = self.env["NATS_URL"].split(",")
        if self.auth is None:
            return {"servers": servers}
        return {"servers": servers, **connect_options(self.creds(role), inbox_prefix(role))}

    def _proc(self, name: str, module: str, ready: str, **env: str) -> Proc:
        self._counter += 1
        role = _ROLE_OF_MODULE.get(module)
        if self.auth is not None and role is not None and "NATS_CREDS" not in env:
            env = {**env, "NATS_CREDS": str(self.creds(role))}
        proc = Proc(f"{name}-{self._counter}", module, self._env(**env), self.base, ready)
        self.procs.append(proc)
        return proc.start()

    def start_model(self, **env: str) -> Proc:
        proc = self._proc("model", "agentstream.builtin_model", "builtin-model ready: ",
                          **{"BUILTIN_MODEL_BIND": "127.0.0.1:0", **env})
        self.model_url = proc.ready_value
        self.env["LLM_BASE_URL"] = self.model_url
        return proc

    def start_edge(self, **env: str) -> Proc:
        proc = self._proc("edge", "edge", "edge ready: ", **{"EDGE_BIND": "127.0.0.1:0", **env})
        url = proc.ready_value
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"edge not healthy:\n{proc.tail()}")
        if not self.edge_url:
            self.edge_url = url
        return proc

    def start_agent_runner(self, runner_id: str | None = None, **env: str) -> Proc:
        rid = runner_id or f"agent-runner-{len(self.procs) + 1}"
        return self._proc("agent-runner", "agent_runner", "agent-runner ready: ", RUNNER_ID=rid, **env)

    def start_tool_runner(self, runner_id: str | None = None, **env: str) -> Proc:
        rid = runner_id or f"tool-runner-{len(self.procs) + 1}"
        return self._proc("tool-runner", "tool_runner", "tool-runner ready: ", RUNNER_ID=rid, **env)

    def start_webhook_sender(self, runner_id: str | None = None, **env: str) -> Proc:
        rid = runner_id or f"webhook-sender-{len(self.procs) + 1}"
        return self._proc("webhook-sender", "webhook_sender", "webhook-sender ready: ", RUNNER_ID=rid, **env)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate(timeout=10)
        self.nats.stop()

    def logs(self) -> str:
        return "\n\n".join(f"== {p.name}\n{p.tail()}" for p in self.procs)


def make_agents_dir(target: Path, extra: Path | None = None) -> Path:
    """The shipped agents (``agents/``) plus the agent files in ``extra``, in one directory."""
    shutil.copytree(REPO_ROOT / "agents", target)
    for path in extra.glob("*.yaml") if extra is not None else ():
        shutil.copy(path, target / path.name)
    return target


_ROLE_OF_MODULE = {"edge": Role.EDGE, "agent_runner": Role.AGENT_RUNNER, "tool_runner": Role.TOOL_RUNNER,
                   "webhook_sender": Role.WEBHOOK_SENDER}


def new_system(
    base: Path, *, extra_agents: Path | None = None, auth: bool = True, setup: bool = True, cluster: int = 1,
    max_file_store: int | None = None, **env: str,
) -> System:
    """A nats-server on a port it picks itself, with JetStream under ``base``; components start on
    demand. ``base/agents`` holds the shipped agents plus those in ``extra_agents``.

    ``auth``: the server requires the identities of ``base/auth`` (as ``agentstream up`` does) and
    every component connects with its own; ``setup``: the admin identity declares the streams and
    buckets first (``agentstream nats-setup``); ``cluster``: more than 1 starts that many servers
    as one JetStream cluster (agentstream.natsserver.NatsCluster, as ``agentstream up
    --nats-cluster N`` does): ``NATS_URL`` names them all and streams keep min(N, 3) replicas;
    ``max_file_store``: JetStream's storage limit, bytes (a single server).
    """
    base.mkdir(parents=True, exist_ok=True)
    agents = base / "agents"
    if not agents.exists():
        make_agents_dir(agents, extra_agents)
    store = AuthStore(base / "auth") if auth else None
    config = None
    if store is not None:
        store.ensure_components()
        config = store.write_server_config()
    nats: EmbeddedNats | NatsCluster
    if cluster > 1:
        nats = NatsCluster(base / "nats-cluster", cluster, auth_config=config)
        env = {"STREAM_REPLICAS": str(min(cluster, 3)), **env}
    else:
        nats = EmbeddedNats(base / "nats-store", port=0, log_path=base / "nats.log", config=config,
                            max_file_store=max_file_store)
    url = nats.start()
    ours = ("NATS_", "LLM_", "EDGE_", "KEYS_", "TOOL_", "AGENT", "STREAM_", "WEBHOOK_", "SCHEDULE_", "OTEL_",
            "LOG_FORMAT", "METRICS_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    system_env = {
        **clean,
        "PYTHONUNBUFFERED": "1",
        "NATS_URL": url,
        "AGENTS_DIR": str(agents),
        "TOOL_ROOT": str(REPO_ROOT),
        "BUILTIN_MODEL_TOKEN_DELAY": "0.002",
        "LOG_LEVEL": "INFO",
        "SHUTDOWN_GRACE": "5",
        "AGENTSTREAM_DATA_DIR": str(base),
        **env,
    }
    if store is not None and setup:
        done = subprocess.run(
            [sys.executable, "-m", "agentstream", "nats-setup"],
            env={**system_env, "NATS_CREDS": str(store.seed_path(Role.ADMIN))},
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        )
        if done.returncode != 0:
            nats.stop()
            raise RuntimeError(f"nats-setup failed:\n{done.stdout}\n{done.stderr}")
    return System(base=base, env=system_env, nats=nats, auth=store)
