"""Agent YAML files: good ones load, each bad one is reported with file, field and reason and
does not take the others down; ``agentstream agents check`` exits non-zero on errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentstream.agents import MAX_FILE_BYTES, load_agents
from tests.harness import REPO

GOOD = """\
name: good
description: fine
system_prompt: hello
actions: [read_file]
skills: [helpful]
max_steps: 3
parameters: {temperature: 0.5}
llm: {base_url: "http://localhost:11434/v1", api_key_env: AGENTSTREAM_KEY_OLLAMA}
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
    "key-env-home.yaml": ("name: h\nllm: {base_url: 'http://x.example/v1', api_key_env: HOME}\n", "llm.api_key_env",
                          "'HOME' does not match LLM_KEY_ENV_PATTERN (AGENTSTREAM_KEY_*)"),
    "alias.yaml": ("name: al\nparameters: {stop: &s [a, b]}\nsystem_prompt: *s\n", "system_prompt",
                   "YAML alias *s at line 3, column 16: YAML aliases are not allowed"),
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
    assert good.tool_names == ["read_file"] and good.parameters == {"temperature": 0.5}
    assert good.llm.api_key_env == "AGENTSTREAM_KEY_OLLAMA"
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
    assert "read_file" in helper.tool_names and "http_request" in helper.tool_names
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


ALIAS_BOMB = """\
name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
parameters: {x: [*f,*f,*f,*f,*f,*f,*f,*f,*f]}
"""


def _by_file(catalog) -> dict:
    return {e.file: e for e in catalog.errors}


def test_hostile_agent_files_are_errors_of_their_own_and_the_others_load(tmp_path):
    agents = tmp_path / "agents"
    agents.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stolen.yaml").write_text("name: stolen\n")
    (agents / "plain.yaml").write_text("name: plain\n")
    (agents / "bomb.yaml").write_text(ALIAS_BOMB)
    os.symlink("/dev/zero", agents / "zeros.yaml")
    os.mkfifo(agents / "pipe.yaml")
    os.symlink(outside / "stolen.yaml", agents / "out.yaml")
    os.symlink("../outside/stolen.yaml", agents / "out-relative.yaml")
    (agents / "huge.yaml").write_text("name: huge\ndescription: " + "x" * MAX_FILE_BYTES + "\n")
    (agents / "real").mkdir()
    (agents / "real" / "linked.yaml").write_text("name: linked\n")
    os.symlink("real/linked.yaml", agents / "linked.yaml")  # stays inside: followed

    catalog = load_agents(agents)  # returns: no hang on the FIFO, no MemoryError on /dev/zero

    assert sorted(catalog.agents) == ["linked", "plain"]
    errors = _by_file(catalog)
    assert set(errors) == {"bomb.yaml", "zeros.yaml", "pipe.yaml", "out.yaml", "out-relative.yaml", "huge.yaml"}
    assert errors["bomb.yaml"].field == "b.0" and "aliases are not allowed" in errors["bomb.yaml"].reason
    assert "leads outside the agents directory" in errors["zeros.yaml"].reason
    assert "FIFO" in errors["pipe.yaml"].reason
    assert "leads outside the agents directory" in errors["out.yaml"].reason
    assert "leads outside the agents directory" in errors["out-relative.yaml"].reason
    assert f"larger than {MAX_FILE_BYTES} bytes" in errors["huge.yaml"].reason
    assert all(e.field is None for name, e in errors.items() if name != "bomb.yaml")


def test_a_skill_linked_out_of_the_agents_directory_is_not_loaded(tmp_path):
    agents = tmp_path / "agents"
    (agents / "skills").mkdir(parents=True)
    host_file = tmp_path / "hostname"
    host_file.write_text("build-host-7\n")
    (agents / "skills" / "fine.md").write_text("# Fine\n")
    os.symlink(host_file, agents / "skills" / "host.md")
    os.mkfifo(agents / "skills" / "pipe.md")
    (agents / "uses.yaml").write_text("name: uses\nskills: [host]\n")

    catalog = load_agents(agents)

    assert sorted(catalog.skills) == ["fine"]
    errors = _by_file(catalog)
    assert "leads outside the agents directory" in errors["skills/host.md"].reason
    assert "FIFO" in errors["skills/pipe.md"].reason
    assert errors["uses.yaml"].field == "skills" and "skills/host.md" in errors["uses.yaml"].reason


def test_the_key_variable_pattern_is_the_operators(tmp_path):
    (tmp_path / "own.yaml").write_text(
        "name: own\nllm: {base_url: 'http://x.example/v1', api_key_env: OPENAI_API_KEY}\n")
    assert "own" not in load_agents(tmp_path).agents
    assert "own" in load_agents(tmp_path, key_env_pattern="AGENTSTREAM_KEY_*, OPENAI_API_KEY").agents


def test_an_integer_json_cannot_hold_is_an_error_of_its_file(tmp_path):
    # YAML integers have no bound; an agent is served and stored as JSON, whose readers hold
    # integers exactly up to 2**53 - 1 (RFC 7493, section 2.2).
    (tmp_path / "huge.yaml").write_text("name: huge\nmax_steps: 5\nparameters: {seed: 18446744073709551616}\n")
    (tmp_path / "fine.yaml").write_text("name: fine\nparameters: {seed: 9007199254740991}\n")
    catalog = load_agents(tmp_path)
    assert sorted(catalog.agents) == ["fine"]
    assert [(e.file, e.field) for e in catalog.errors] == [("huge.yaml", "parameters.seed")]
