"""The two commands a new user runs: ``agentstream up`` (everything, as separate processes, on an
embedded nats-server) and ``agentstream chat`` against it; Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from agentstream.natsserver import free_port
from tests.harness import REPO


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_then_chat_then_ctrl_c(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy_port = taken.getsockname()[1]  # the wanted NATS port is taken: up must pick another
    edge_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "LLM_BASE_URL", "KEYS_FILE", "AGENTS_DIR")}
    env.update({
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_NATS_PORT": str(busy_port),
        "EDGE_BIND": f"127.0.0.1:{edge_port}",
        "BUILTIN_MODEL_BIND": f"127.0.0.1:{free_port()}",
        "BUILTIN_MODEL_TOKEN_DELAY": "0.001",
        "PYTHONUNBUFFERED": "1",
    })
    up = subprocess.Popen([sys.executable, "-m", "agentstream", "up"], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("agentstream is up: "):
                break
        text = "".join(output)
        assert "agentstream is up: " in text, text
        nats_port = int(re.search(r"nats-server with JetStream on nats://127\.0\.0\.1:(\d+)", text).group(1))
        assert nats_port != busy_port
        for name in ("nats", "builtin-model", "tool-runner", "agent-runner", "edge"):
            assert re.search(rf"^\s*{name} \| ", text, re.M), f"no {name} log lines:\n{text}"
        assert httpx.get(f"http://127.0.0.1:{edge_port}/healthz").status_code == 200

        chat = subprocess.run(
            [sys.executable, "-m", "agentstream", "chat", "programmer-helper",
             "How many lines does pyproject.toml have?", "--url", f"http://127.0.0.1:{edge_port}"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert chat.returncode == 0, chat.stdout + chat.stderr
        lines = (REPO / "pyproject.toml").read_text().splitlines()
        assert '→ read_file {"path": "pyproject.toml"}' in chat.stdout
        assert "← read_file ok" in chat.stdout
        assert f"has {len(lines)} lines" in chat.stdout
        assert "run.completed" in chat.stdout

        unknown = subprocess.run(
            [sys.executable, "-m", "agentstream", "chat", "no-such-agent", "hi",
             "--url", f"http://127.0.0.1:{edge_port}"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert unknown.returncode == 2 and "HTTP 404" in unknown.stderr
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rest, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            rest, _ = up.communicate()
        taken.close()
    assert up.returncode == 0, rest
    assert not _port_open(edge_port)
    assert not _port_open(nats_port)
    assert "nats | stopped" in rest
