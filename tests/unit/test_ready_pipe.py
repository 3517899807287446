"""The ready pipe (agentstream/logs.py report_ready, agentstream/launch.py ReadyPipe and Proc, the
supervisor's reader): a child pushes its ready line to its parent, who learns of a death or a
silence without polling. The children are small real Python processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentstream import launch
from agentstream.launch import ChildExited, Proc, ReadyPipe
from agentstream.logs import READY_FD_ENV
from agentstream.settings import REPO_ROOT, Settings
from agentstream.supervisor import Component, Supervisor

CHILD = """
import os, sys
from agentstream.logs import READY_FD_ENV, report_ready
print("inherited:", os.environ.get(READY_FD_ENV), flush=True)
for text in sys.argv[1:-1]:
    report_ready(text, more=True)
report_ready(sys.argv[-1])
"""


def spawn(*lines: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], ReadyPipe]:
    """A child running CHILD (it reports ``lines``) with the write end of a new ready pipe."""
    read_end, write_end = launch.ready_pipe()
    child = subprocess.Popen([sys.executable, "-c", CHILD, *lines], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             env=launch.child_env(env or dict(os.environ), write_end), pass_fds=(write_end,))
    os.close(write_end)
    return child, ReadyPipe(read_end)


def module(tmp_path: Path, name: str, source: str) -> dict[str, str]:
    """Write a module ``name`` under ``tmp_path``; the environment that lets ``python -m`` find it."""
    (tmp_path / f"{name}.py").write_text(source)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}"}


def test_the_child_pushes_its_ready_line_prints_it_and_closes_the_pipe():
    child, pipe = spawn("edge ready: http://127.0.0.1:1234", "edge connected: http://127.0.0.1:1234")
    try:
        assert pipe.wait_for(launch.READY["edge"], 5) == "edge ready: http://127.0.0.1:1234"
        assert pipe.read_line(5) == "edge connected: http://127.0.0.1:1234"
        assert pipe.read_line(5) is None  # closed after the last line
        out, _ = child.communicate(timeout=5)
    finally:
        pipe.close()
    assert child.returncode == 0
    text = out.decode()
    # The variable is taken out of the child's environment: what it starts does not inherit it.
    assert "inherited: None" in text
    assert "edge ready: http://127.0.0.1:1234\n" in text and "edge connected: http://127.0.0.1:1234\n" in text


def test_without_the_variable_the_ready_line_goes_to_stdout_only():
    env = {k: v for k, v in os.environ.items() if k != READY_FD_ENV}
    done = subprocess.run([sys.executable, "-c", CHILD, "tool-runner ready: tools-a"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["inherited: None", "tool-runner ready: tools-a"]


def test_a_pushed_line_is_decoded_without_its_line_end():
    assert launch.pushed_line(b"agent-runner ready: r1\r\n") == "agent-runner ready: r1"
    assert launch.pushed_line(b"edge ready: \xff\n") == "edge ready: \ufffd"
    assert launch.ready_value("edge ready: http://127.0.0.1:9\n") == "http://127.0.0.1:9"


def test_a_child_that_exits_before_its_ready_line_is_reported_with_its_exit_code_and_log(tmp_path):
    env = module(tmp_path, "dies_early",
                 "print('cannot listen on EDGE_BIND=nowhere', flush=True)\nraise SystemExit(3)\n")
    proc = Proc("edge-1", "dies_early", env, tmp_path, launch.READY["edge"])
    with pytest.raises(ChildExited) as caught:
        proc.start(timeout=10)
    message = str(caught.value)
    assert "edge-1 exited with 3 before saying 'edge ready:'" in message
    assert "cannot listen on EDGE_BIND=nowhere" in message  # the log's tail


def test_a_child_silent_past_the_timeout_is_killed_and_reported(tmp_path):
    env = module(tmp_path, "silent", "import time\nprint('starting', flush=True)\ntime.sleep(60)\n")
    proc = Proc("agent-runner-1", "silent", env, tmp_path, launch.READY["agent_runner"])
    with pytest.raises(RuntimeError, match=r"agent-runner-1 did not say 'agent-runner ready:' within 0.3 s"):
        proc.start(timeout=0.3)
    assert not proc.alive()


def test_proc_start_returns_the_pushed_ready_line(tmp_path):
    env = module(tmp_path, "quick", "from agentstream.logs import report_ready\nreport_ready('tool-runner ready: t1')\n"
                                   "import time\ntime.sleep(60)\n")
    proc = Proc("tool-runner-1", "quick", env, tmp_path, launch.READY["tool_runner"])
    try:
        proc.start(timeout=10)
        assert proc.ready_value == "t1" and proc.alive()
    finally:
        proc.kill()
    assert "tool-runner ready: t1" in proc.tail()


async def test_the_supervisor_is_ready_once_the_edge_pushed_both_lines_and_not_if_it_died():
    supervisor = Supervisor(Settings())
    edge = Component("edge", "edge")
    child, pipe = spawn("edge ready: http://127.0.0.1:4321", "edge connected: http://127.0.0.1:4321")
    assert pipe.fd is not None
    await asyncio.wait_for(supervisor._watch_ready(edge, os.dup(pipe.fd)), 10)
    pipe.close()
    child.communicate(timeout=5)
    assert edge.ready.is_set() and edge.ready_url() == "http://127.0.0.1:4321"

    dead = Component("edge", "edge")
    child, pipe = spawn("edge ready: http://127.0.0.1:4321")  # exits without "edge connected"
    assert pipe.fd is not None
    await asyncio.wait_for(supervisor._watch_ready(dead, os.dup(pipe.fd)), 10)
    pipe.close()
    child.communicate(timeout=5)
    assert not dead.ready.is_set()
