"""Settings: every variable parsed and range-checked at start-up, secrets never printed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentstream.settings import Settings, configuration_error, documented


def test_defaults_work_on_a_fresh_machine():
    settings = Settings.from_env({})
    assert settings.runner_concurrency == 0 and settings.nats_port == 4222 and settings.llm_api_key is None


@pytest.mark.parametrize(("name", "value", "words"), [
    ("AGENT_RUNNER_CONCURRENCY", "-1", "greater than or equal to 0"),
    ("STREAM_REPLICAS", "7", "less than or equal to 5"),
    ("SSE_HEARTBEAT", "0", "greater than 0"),
    ("AGENTSTREAM_NATS_PORT", "http", "valid integer"),
    ("AGENTSTREAM_NATS_AUTH", "maybe", "valid boolean"),
    ("LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("LOG_FORMAT", "xml", "'text' or 'json'"),
    ("METRICS_MAX_TENANTS", "-1", "greater than or equal to 0"),
])
def test_a_bad_value_is_refused_naming_its_variable(name, value, words):
    with pytest.raises(ValidationError) as caught:
        Settings.from_env({name: value})
    message = configuration_error(caught.value)
    assert message.startswith(f"{name}={value!r}: ") and words in message


def test_the_environment_is_parsed_as_documented():
    settings = Settings.from_env({"AGENTSTREAM_NATS_AUTH": "off", "LOG_LEVEL": "debug", "TOOL_ROOT": "",
                                  "AGENT_RUNNER_CONCURRENCY": "12"}, runner_concurrency=7)
    assert settings.nats_auth is False and settings.log_level == "DEBUG" and settings.tool_root is None
    assert settings.runner_concurrency == 7  # an explicit value wins over the environment
    assert settings.changed(stream_replicas=3).stream_replicas == 3
    with pytest.raises(ValidationError):
        settings.changed(stream_replicas=0)


def test_secrets_never_print():
    settings = Settings.from_env({"LLM_API_KEY": "sk-very-secret"})
    assert settings.llm_api_key is not None and settings.llm_api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings.model_dump())


def test_every_setting_is_documented_with_its_variable():
    rows = documented()
    assert len(rows) == len(Settings.model_fields) and all(env.isupper() and help_ for env, _, help_ in rows)
