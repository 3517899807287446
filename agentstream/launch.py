"""Starting agentstream's processes on this machine: nats-server (or a JetStream cluster of them),
the built-in model, edges, agent runners, tool runners and webhook senders, each a separate OS
process, its log in a directory. The test suite and ``make bench`` both start their systems here; ``agentstream up``'s
supervisor (agentstream/supervisor.py) starts the same modules with the same ready lines.

Every listening port is chosen by the process that listens (port 0, or nats-server's ``-p -1``)
and read back from what it reports (``<name> ready: <url>``, nats-server's ports file), so no
port can be taken between being chosen and being bound.

Readiness is pushed by the child, not polled: the launcher opens a pipe, passes its write end to
the child (``pass_fds``) and names it in ``AGENTSTREAM_READY_FD``; the child writes its ready line
there once it serves (agentstream.logs.report_ready) and closes it. The launcher blocks on the read
end with a deadline (:class:`ReadyPipe`; the supervisor reads it with asyncio). End of file before
the ready line means the child died: the error gives its exit code and the tail of its log. The
edge writes a second line, ``edge connected: <url>``, once it has reached NATS (``/healthz`` 200);
:meth:`System.start_edge` waits for that too. nats-server, not ours, has no such pipe: it writes a
ports file once its listeners are up (agentstream.natsserver).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream.logs import READY_FD_ENV, announced
from agentstream.natsauth import AuthStore, connect_options
from agentstream.natsserver import EmbeddedNats, NatsCluster
from agentstream.settings import REPO_ROOT
from schemas.permissions import Role, inbox_prefix

READY = {"edge": "edge ready: ", "agent_runner": "agent-runner ready: ", "tool_runner": "tool-runner ready: ",
         "webhook_sender": "webhook-sender ready: ", "agentstream.builtin_model": "builtin-model ready: "}
"""The line each component module prints once it serves (``python -m <module>``), before its URL or id."""

CONNECTED = {"edge": "edge connected: "}
"""The line a component pushes after its ready line once it can do its work, for the components
that serve before that (the edge answers 503 until it has reached NATS)."""


def command(module: str) -> list[str]:
    """The command that runs a component module with this Python."""
    return [sys.executable, "-m", module]


def ready_value(line: str) -> str:
    """What follows ``ready: `` on a ready line (a URL or a runner id)."""
    return line.split("ready: ", 1)[1].strip()


def pushed_line(raw: bytes) -> str:
    """A line read from a ready pipe (UTF-8, its line feed removed), as the child wrote it."""
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def ready_pipe() -> tuple[int, int]:
    """A new ready pipe: ``(read end, write end)`` descriptors. Pass the write end to the child
    with :func:`child_env` and ``pass_fds=(write_end,)``, then close it here, so that the read end
    sees end of file when the child exits."""
    return os.pipe()


def child_env(env: dict[str, str], write_end: int) -> dict[str, str]:
    """``env`` plus ``AGENTSTREAM_READY_FD`` naming ``write_end`` (agentstream.logs.report_ready)."""
    return {**env, READY_FD_ENV: str(write_end)}


class ChildExited(RuntimeError):
    """The child closed its ready pipe (it exited) before the line waited for."""


class ReadyPipe:
    """The read end of a child's ready pipe, read line by line with a deadline (``poll(2)``: the
    caller blocks until the child writes, exits or the time is up; no sleeping, no log reading)."""

    def __init__(self, fd: int):
        self.fd: int | None = fd
        self._buffer = b""

    def read_line(self, timeout: float) -> str | None:
        """The next line the child pushed, or None at end of file (the child exited, or closed the
        pipe after its last line). Raises TimeoutError after ``timeout`` seconds without one."""
        if self.fd is None:
            return None
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout:g} s")
            if not poller.poll(left * 1000):
                continue
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.close()
                return None
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\n")
        return pushed_line(raw)

    def wait_for(self, prefix: str, timeout: float) -> str | None:
        """The first pushed line starting with ``prefix`` (others are skipped), or None if the pipe
        ends first. Raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.0))
            if line is None or line.startswith(prefix):
                return line

    def close(self) -> None:
        """Close the read end (a later write by the child fails quietly)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
        self.pipe: ReadyPipe | None = None

    def start(self, timeout: float = 30.0) -> Proc:
        """Start the process and block until it pushes its ready line (``ready_prefix``) on its
        ready pipe. Raises :class:`ChildExited` (exit code and log tail) if it exits first, or
        RuntimeError after ``timeout`` seconds (the process is killed)."""
        if self.pipe is not None:
            self.pipe.close()
        read_end, write_end = ready_pipe()
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    command(self.module), env=child_env(self.env, write_end), stdout=log, stderr=subprocess.STDOUT,
                    cwd=REPO_ROOT, start_new_session=True, pass_fds=(write_end,),
                )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.pipe = ReadyPipe(read_end)
        self.ready_line = self.wait_for(self.ready_prefix, timeout)
        if self.module not in CONNECTED:
            self._release()  # nothing more will come
        return self

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The next line starting with ``prefix`` that the process pushes on its ready pipe (its
        ready line, then the edge's ``edge connected:``). Raises :class:`ChildExited` with the exit
        code and the log's tail if the pipe ends first, RuntimeError (after killing the process)
        if ``timeout`` seconds pass."""
        assert self.proc is not None and self.pipe is not None, "not started"
        try:
            line = self.pipe.wait_for(prefix, timeout)
        except TimeoutError:
            self.kill()
            said = prefix.strip()
            raise RuntimeError(f"{self.name} did not say {said!r} within {timeout:g} s:\n{self.tail()}") from None
        if line is None:
            try:
                code: int | None = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            what = f"exited with {code}" if code is not None else "closed its ready pipe"
            raise ChildExited(f"{self.name} {what} before saying {prefix.strip()!r}:\n{self.tail()}")
        return line

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
        return ready_value(self.ready_line)

    def alive(self) -> bool:
        """The process is running."""
        return self.proc is not None and self.proc.poll() is None

    def _release(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit. Returns the exit code."""
        if self.proc is None:
            return None
        self._release()
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
        self._release()
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
        """Start an edge (EDGE_BIND on a free port) and wait until it has reached NATS (its pushed
        ``edge connected:`` line: ``/healthz`` says 200). Raises as :meth:`Proc.wait_for`."""
        proc = self._proc("edge", "edge", READY["edge"], **{"EDGE_BIND": "127.0.0.1:0", **env})
        url = proc.ready_value
        proc.wait_for(CONNECTED["edge"], 20)
        proc._release()  # its last line
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
        """Stop every process, the last started first, then nats-server."""
        for proc in reversed(self.procs):
            proc.terminate(timeout=10)
        self.nats.stop()

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop everything (:meth:`stop`), also when starting a process failed."""
        self.stop()

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
