"""Starting real agentstream processes for tests (agentstream/launch.py, the launcher the
benchmark shares): nats-server, the built-in model, edges, agent runners and tool runners, each a
separate OS process, logs kept in a directory. The test agents of ``tests/agents`` are added to
the shipped ones.

Nothing here is a fake: the processes are the ones ``agentstream up`` starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentstream import launch
from agentstream.launch import Proc, System
from agentstream.settings import REPO_ROOT

REPO = REPO_ROOT
TEST_AGENTS = Path(__file__).resolve().parent / "agents"

__all__ = ["REPO", "TEST_AGENTS", "Proc", "System", "make_agents_dir", "new_system"]


def make_agents_dir(target: Path, extra: Path = TEST_AGENTS) -> Path:
    """The shipped agents plus the agents in ``extra`` (default: tests/agents), in one directory."""
    return launch.make_agents_dir(target, extra)


def new_system(base: Path, *, extra_agents: Path = TEST_AGENTS, **options: Any) -> System:
    """:func:`agentstream.launch.new_system` with the test agents (see there for ``options``)."""
    return launch.new_system(base, extra_agents=extra_agents, **options)
