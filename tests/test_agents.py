"""Agent YAML files: good ones load, each bad one is reported with file, field and reason and
does not take the others down; ``agentstream agents check`` exits non-zero on errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentstream.agents import load_agents
from tests.harness import REPO

GOOD = """\
name: good
description: fine
system_prompt: hello
actions: [read_file]
skills: [helpful]
max_steps: 3
parameters: {temperature: 0.5}
llm: {base_url: "http://localhost:11434/v1", api_key_env: OLLAMA_KEY}
"""

BAD = {
    "syntax.yaml": ("name: [unclosed\n", None, "YAML syntax error at line"),
    "unknown-field.yaml": ("name: u\nmodle: gpt\n", "modle", "unknown field"),
    "wrong-type.yaml": ("name: w\nmax_steps: many\n", "max_steps", "integer"),
    "unknown-tool.yaml": (
        "name: t\nactions: [read_file, launch_rockets]\n",
        "actions",
        "unknown tool(s) 'launch_rockets'",
    ),
    "bad-name.yaml": ("name: a.b\n", "name", "pattern"),
    "missing-name.yaml": ("description: nameless\n", "name", "required"),
    "missing-skill.yaml": ("name: s\nskills: [nonexistent]\n", "skills", "skills/nonexistent.md"),
    "reserved-param.yaml": ("name: p\nparameters: {stream: false}\n", "parameters", "stream cannot be set"),
    "key-in-file.yaml": ("name: k\nllm: {api_key: sk-123}\n", "llm.api_key", "unknown field"),
    "not-a-mapping.yaml": ("- just\n- a list\n", None, "expected a mapping"),
    "duplicate.yaml": ("name: good\n", "name", "already defined"),
}


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    (tmp_path / "skills").mkdir()
    (tmp_path / "skills" / "helpful.md").write_text("# Be helpful\nAlways.\n")
    (tmp_path / "a-good.yaml").write_text(GOOD)
    for name, (text, _, _) in BAD.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_each_bad_file_is_reported_and_the_good_one_loads(agents_dir):
    catalog = load_agents(agents_dir)
    assert list(catalog.agents) == ["good"]
    good = catalog.agents["good"]
    assert good.actions == ["read_file"] and good.parameters == {"temperature": 0.5}
    assert good.llm.api_key_env == "OLLAMA_KEY"
    assert catalog.skills["helpful"].description == "Be helpful"
    by_file = {e.file: e for e in catalog.errors}
    for name, (_, field, reason) in BAD.items():
        assert name in by_file, f"{name} not reported"
        error = by_file[name]
        assert error.field == field, (name, error)
        assert reason.lower() in error.reason.lower(), (name, error)


def test_shipped_agents_are_valid():
    catalog = load_agents(REPO / "agents")
    assert catalog.errors == []
    assert {"programmer-helper", "web-reader"} <= set(catalog.agents)
    helper = catalog.agents["programmer-helper"]
    assert "read_file" in helper.actions and "http_request" in helper.actions
    assert [s.name for s in catalog.skills_of(helper)] == helper.skills


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentstream", "agents", "check", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_agents_check_command(agents_dir):
    bad = _check(str(agents_dir))
    assert bad.returncode == 1
    assert "unknown-field.yaml: modle: unknown field" in bad.stdout
    assert "1 agent(s) valid: good" in bad.stdout
    as_json = json.loads(_check(str(agents_dir), "--json").stdout)
    assert as_json["agents"] == ["good"] and len(as_json["errors"]) == len(BAD)
    ok = _check(str(REPO / "agents"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 error(s)" in ok.stdout
