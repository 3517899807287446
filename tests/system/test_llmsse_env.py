"""llm-sse's own settings (LLM_KEY, USE_LLM_MOCK, HTTP_ADDR) are named at start-up with the
agentstream settings that do their job, never silently ignored, and a key is never logged."""

from __future__ import annotations

from agentstream.llmsse_env import EDGE_VARIABLES, RUNNER_VARIABLES, warnings
from agentstream.settings import Settings
from tests.harness import new_system

ALL = EDGE_VARIABLES + RUNNER_VARIABLES


def test_each_llmsse_setting_is_named_with_its_agentstream_equivalent():
    settings = Settings.from_env({})
    found = warnings({"LLM_KEY": "sk-llmsse-secret", "USE_LLM_MOCK": "true", "HTTP_ADDR": ":9090"}, settings, ALL)
    text = "\n".join(found)
    assert len(found) == 3
    assert "LLM_KEY (llm-sse) is ignored" in text and "LLM_API_KEY is not set" in text
    assert "sk-llmsse-secret" not in text
    assert "USE_LLM_MOCK (llm-sse) is ignored" in text and "LLM_BASE_URL is not set, so agents use the built-in" in text
    assert "HTTP_ADDR=:9090 (llm-sse) is ignored" in text and "set EDGE_BIND=0.0.0.0:9090" in text
    # What they do now follows agentstream's own settings.
    real = Settings.from_env({"LLM_BASE_URL": "http://models:8000/v1", "LLM_API_KEY": "sk-real"})
    text = "\n".join(warnings({"LLM_KEY": "x", "USE_LLM_MOCK": "1"}, real, ALL))
    assert "LLM_API_KEY is set and is used" in text and "unset it for the built-in stand-in model" in text
    assert "sk-real" not in text and "models:8000" not in text
    assert warnings({"USE_LLM_MOCK": "", "OTHER": "1"}, settings, ALL) == []  # unset or empty: nothing to say


def test_components_name_the_llmsse_settings_they_would_have_used(tmp_path):
    sysm = new_system(tmp_path / "sys", LLM_KEY="sk-llmsse-secret", USE_LLM_MOCK="false", HTTP_ADDR=":9090")
    try:
        sysm.start_model()
        runner = sysm.start_agent_runner()
        edge = sysm.start_edge()
        runner_log, edge_log = runner.log_path.read_text(), edge.log_path.read_text()
    finally:
        sysm.stop()
    assert "WARNING" in runner_log and "LLM_KEY (llm-sse) is ignored" in runner_log
    assert "USE_LLM_MOCK (llm-sse) is ignored" in runner_log
    assert "HTTP_ADDR=:9090 (llm-sse) is ignored: the edge listens on EDGE_BIND" in edge_log
    assert "HTTP_ADDR" not in runner_log and "LLM_KEY" not in edge_log  # each names what it would have used
    assert "sk-llmsse-secret" not in runner_log + edge_log
