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
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "LLM_BASE_URL", "KEYS_FILE", "AGENTS_DIR")}
    env.update({
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_NATS_PORT": str(busy_port),
        "EDGE_BIND": "127.0.0.1:0",  # each server picks its port and says it
        "BUILTIN_MODEL_BIND": "127.0.0.1:0",
        "BUILTIN_MODEL_TOKEN_DELAY": "0.001",
        "PYTHONUNBUFFERED": "1",
        "LLM_KEY": "sk-left-from-llm-sse",  # llm-sse's own settings, still exported by a user moving over
        "HTTP_ADDR": ":9090",
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
        edge_port = int(re.search(r"agentstream is up: http://127\.0\.0\.1:(\d+)", text).group(1))
        nats_port = int(re.search(r"nats-server with JetStream on nats://127\.0\.0\.1:(\d+)", text).group(1))
        assert nats_port != busy_port
        for name in ("nats", "builtin-model", "tool-runner", "agent-runner", "webhook-sender", "edge"):
            assert re.search(rf"^\s*{name} \| ", text, re.M), f"no {name} log lines:\n{text}"
        assert httpx.get(f"http://127.0.0.1:{edge_port}/healthz").status_code == 200
        assert "LLM_KEY (llm-sse) is ignored: agentstream sends LLM_API_KEY" in text
        assert "HTTP_ADDR=:9090 (llm-sse) is ignored" in text and "EDGE_BIND=0.0.0.0:9090" in text
        assert text.count("HTTP_ADDR=") == 1 and "sk-left-from-llm-sse" not in text  # once, and no key

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


def test_up_with_a_nats_cluster(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "LLM_BASE_URL", "KEYS_FILE", "AGENTS_DIR", "STREAM_REPLICAS")}
    env.update({
        "AGENTSTREAM_DATA_DIR": str(data),
        "AGENTSTREAM_NATS_PORT": str(free_port()),
        "EDGE_BIND": "127.0.0.1:0",  # each server picks its port and says it
        "BUILTIN_MODEL_BIND": "127.0.0.1:0",
        "BUILTIN_MODEL_TOKEN_DELAY": "0.001",
        "PYTHONUNBUFFERED": "1",
    })
    up = subprocess.Popen([sys.executable, "-m", "agentstream", "up", "--nats-cluster", "3"], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    urls: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("agentstream is up: "):
                break
        text = "".join(output)
        assert "agentstream is up: " in text, text
        found = re.search(r"JetStream cluster of 3 nats-servers on (\S+) .*with 3 replica\(s\); authentication on",
                          text)
        assert found is not None, text
        urls = found.group(1).split(",")
        assert len(urls) == 3
        edge_port = int(re.search(r"agentstream is up: http://127\.0\.0\.1:(\d+)", text).group(1))

        chat = subprocess.run(
            [sys.executable, "-m", "agentstream", "chat", "programmer-helper",
             "How many lines does pyproject.toml have?", "--url", f"http://127.0.0.1:{edge_port}"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert chat.returncode == 0 and "run.completed" in chat.stdout, chat.stdout + chat.stderr

        async def replicas() -> dict[str, tuple[int, int]]:
            import nats

            from agentstream.natsauth import connect_options
            from schemas.permissions import Role, inbox_prefix

            nc = await nats.connect(servers=urls, **connect_options(data / "auth" / "admin.nk",
                                                                    inbox_prefix(Role.ADMIN)))
            try:
                out = {}
                for stream in ("AGENT_RUNS", "RUN_EVENTS", "KV_RUN_INDEX"):
                    info = await nc.jetstream().stream_info(stream)
                    out[stream] = (info.config.num_replicas, len(info.cluster.replicas or []) + 1)
                return out
            finally:
                await nc.close()

        import asyncio

        assert set(asyncio.run(replicas()).values()) == {(3, 3)}  # every stream on all three servers
        # Anonymous clients are refused by every node: the cluster has the single server's authentication.
        for url in urls:
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                info = s.recv(4096)
            assert b'"auth_required":true' in info, info[:300]
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rest, _ = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            rest, _ = up.communicate()
    assert up.returncode == 0, rest
    assert not _port_open(edge_port)
    for url in urls:
        assert not _port_open(int(url.rsplit(":", 1)[1]))


def test_a_component_with_a_bad_setting_exits_2_naming_it():
    done = subprocess.run([sys.executable, "-m", "agent_runner"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "AGENT_RUNNER_MAX_ATTEMPTS": "0", "LLM_API_KEY": "sk-x"},
                          timeout=60)
    assert done.returncode == 2
    assert ("configuration error: AGENT_RUNNER_MAX_ATTEMPTS='0': Input should be greater than or equal to 1"
            in done.stderr)
    assert "sk-x" not in done.stderr
