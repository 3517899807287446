"""Pure parts of agents as managed resources: a tenant's effective catalog, the checks of a change
before it is stored, the registry applying bucket entries, and LocalAI's agent configuration."""

from __future__ import annotations

import json

import pytest

from agentstream.agents import load_agents
from agentstream.agentstore import AgentRegistry, OwnAgent, build_catalog, check_own
from agentstream.agentwrites import Change, check_changes, parse_stamp
from agentstream.kvwatch import BucketEntry
from agentstream.localai_config import LocalAIFieldError, from_localai
from agentstream.origins import ModelServers
from schemas.agents import AgentDefinition
from tests.harness import REPO

FILES = load_agents(REPO / "agents")
PATTERN = "AGENTSTREAM_KEY_*"


def agent(name: str, **fields) -> AgentDefinition:
    return AgentDefinition.model_validate({"name": name, **fields})


def own(tenant: str, *agents: AgentDefinition) -> dict[str, OwnAgent]:
    return {a.name: OwnAgent(tenant, a.name, i + 1, 0.0, None, a) for i, a in enumerate(agents)}


def everyone(_: str) -> bool:
    return True


# -- the effective catalog


def test_a_tenant_sees_the_files_and_its_own_agents_its_copy_winning():
    catalog = build_catalog(FILES, "acme", own("acme", agent("mine"), agent("creative", description="acme's")))
    assert {"mine", "creative", "trio", "programmer-helper"} <= set(catalog.agents)
    assert catalog.get("creative").description == "acme's"
    assert catalog.source("creative") == "api" and catalog.source("trio") == "file" and catalog.source("x") is None
    assert catalog.revision("mine") == 1 and catalog.revision("trio") is None
    other = build_catalog(FILES, "other", {})
    assert "mine" not in other.agents and other.get("creative").description != "acme's"


def test_an_own_agent_that_breaks_an_ensemble_is_reported_not_run():
    catalog = build_catalog(FILES, "acme", own("acme", agent("creative", members=["fact-checker"],
                                                             combiner="combiner")))
    assert "trio" not in catalog.agents
    assert catalog.invalid["trio"][0].field == "members" and "is an ensemble" in catalog.invalid["trio"][0].reason
    assert any(e.file == "trio.yaml" for e in catalog.errors)


def test_an_own_agent_with_a_missing_skill_is_reported():
    catalog = build_catalog(FILES, "acme", own("acme", agent("skilled", skills=["nope"])))
    assert "skilled" not in catalog.agents
    assert catalog.invalid["skilled"][0].file == "api:skilled" and catalog.exists("skilled")


# -- checking a change


def test_a_valid_change_passes():
    catalog = build_catalog(FILES, "acme", {})
    assert check_changes(catalog, [Change("mine", agent("mine"))], everyone) == []
    assert check_changes(catalog, [Change("a", agent("a")), Change("panel", agent("panel", members=["a"],
                                                                                  combiner="combiner"))],
                         everyone) == []


def test_an_ensemble_needs_plain_agents_the_tenant_may_use():
    catalog = build_catalog(FILES, "acme", {})
    [refusal] = check_changes(catalog, [Change("panel", agent("panel", members=["nobody"], combiner="combiner"))],
                              everyone)
    assert (refusal.status, refusal.error.field, refusal.error.reason) == (422, "members", "no agent 'nobody'")
    [refusal] = check_changes(catalog, [Change("panel", agent("panel", members=["creative"], combiner="combiner"))],
                              lambda name: name != "creative")
    assert (refusal.status, refusal.error.field) == (422, "members")


def test_a_change_that_breaks_another_agent_is_409():
    catalog = build_catalog(FILES, "acme", {})
    [refusal] = check_changes(catalog, [Change("creative", agent("creative", members=["fact-checker"],
                                                                 combiner="combiner"))], everyone)
    assert refusal.status == 409 and refusal.type == "agent_in_use" and "'trio'" in refusal.error.reason
    mine = build_catalog(FILES, "acme", own("acme", agent("m"), agent("panel", members=["m"], combiner="combiner")))
    [refusal] = check_changes(mine, [Change("m", None)], everyone)
    assert refusal.status == 409 and "'panel'" in refusal.error.reason
    assert check_changes(mine, [Change("panel", None), Change("m", None)], everyone) == []  # together they may go


# -- the registry applying entries


def entry(key: str, revision: int, value: dict | None) -> BucketEntry:
    return BucketEntry(key, None if value is None else json.dumps(value).encode(), revision, 1_700_000_000.0)


def test_the_registry_applies_entries_in_revision_order_per_tenant():
    registry = AgentRegistry(FILES, key_env_pattern=PATTERN)
    registry.apply_agent(entry("acme.mine", 5, {"definition": {"name": "mine"}, "action": "create"}))
    registry.apply_agent(entry("acme.mine", 3, None))  # older: ignored
    assert registry.get("acme", "mine") is not None and registry.get("other", "mine") is None
    assert registry.last_revision("acme", "mine") == 5
    registry.apply_agent(entry("acme.mine", 7, None))
    assert registry.get("acme", "mine") is None and registry.last_revision("acme", "mine") == 7
    registry.apply_agent(entry("acme.bad", 8, {"definition": {"name": "bad", "llm": {"api_key_env": "HOME"}},
                                               "action": "create"}))
    assert registry.catalog("acme").invalid["bad"][0].field == "llm.api_key_env"
    registry.apply_agent(entry("acme.named", 9, {"definition": {"name": "other"}, "action": "create"}))
    assert registry.catalog("acme").invalid["named"][0].field == "name"
    registry.apply_agent(entry("not-a-key", 10, {"definition": {"name": "x"}, "action": "create"}))  # ignored
    registry.apply_pause(entry("acme.mine", 11, {"paused_at": "2024-01-01T00:00:00Z"}))
    assert registry.paused("acme", "mine") is not None and registry.paused("other", "mine") is None
    registry.apply_pause(entry("acme.mine", 12, None))
    assert registry.paused("acme", "mine") is None


def test_nats_time_stamps_parse():
    assert parse_stamp("2024-05-01T12:00:00.123456789Z").isoformat() == "2024-05-01T12:00:00.123456+00:00"
    assert parse_stamp("2024-05-01T12:00:00Z").isoformat() == "2024-05-01T12:00:00+00:00"
    assert parse_stamp("garbage").year == 1970


# -- LocalAI's agent configuration


def test_localai_fields_map_where_they_mean_the_same():
    doc = from_localai({"name": "a", "description": "d", "model": "", "system_prompt": "p", "api_url": "http://h/v1",
                        "actions": [{"name": "read_file", "config": ""}, {"name": "list_dir", "config": "{}"}],
                        "connectors": [], "hud": False, "kb_results": 5, "kb_compaction_interval": "daily",
                        "parallel_jobs": 0, "cancel_previous_on_new_message": None, "api_key": ""})
    assert doc == {"name": "a", "description": "d", "system_prompt": "p", "llm": {"base_url": "http://h/v1"},
                   "actions": ["read_file", "list_dir"]}
    assert AgentDefinition.model_validate(doc).tool_names == ["read_file", "list_dir"]


def test_a_body_without_localai_fields_is_left_alone():
    doc = {"name": "a", "actions": ["read_file"], "llm": {"api_key_env": "AGENTSTREAM_KEY_X"}}
    assert from_localai(doc) is doc


@pytest.mark.parametrize(("body", "field"), [
    ({"connectors": [{"type": "slack", "config": "{}"}]}, "connectors"),
    ({"enable_kb": True}, "enable_kb"),
    ({"mcp_servers": [{"url": "http://x"}]}, "mcp_servers"),
    ({"periodic_runs": "10m"}, "periodic_runs"),
    ({"cancel_previous_on_new_message": True}, "cancel_previous_on_new_message"),
    ({"api_key": "sk-secret"}, "api_key"),
    ({"api_url": "http://h/v1", "llm": {"base_url": "http://g/v1"}}, "api_url"),
    ({"actions": [{"name": "read_file", "config": '{"root": "/"}'}]}, "actions.0.config"),
    ({"actions": [{"name": "read_file", "extra": 1}]}, "actions.0.extra"),
])
def test_localai_fields_that_do_not_map_are_refused_by_name(body, field):
    with pytest.raises(LocalAIFieldError) as err:
        from_localai({"name": "a", **body})
    assert err.value.field == field
    assert field in str(err.value)
    if field == "api_key":
        assert "sk-secret" not in str(err.value)


# -- the model servers agents created over the API may name


def test_only_listed_model_servers_and_llm_base_url():
    servers = ModelServers.of("https://api.openai.com, http://10.0.0.7:11434/v1", "http://127.0.0.1:8081/v1")
    assert servers.allows("https://API.openai.com/v1") and servers.allows("https://api.openai.com:443/x")
    assert servers.allows("http://10.0.0.7:11434/v1") and servers.allows("http://127.0.0.1:8081/v1")
    assert not servers.allows("http://api.openai.com/v1")  # another scheme: another origin
    assert not servers.allows("http://10.0.0.7:11435/v1") and not servers.allows("http://169.254.169.254/")
    assert not ModelServers().allows("https://api.openai.com/v1")
    with pytest.raises(ValueError, match="AGENTS_LLM_ORIGINS"):
        ModelServers.of("ftp://files.example")


def test_a_stored_agent_naming_an_unlisted_server_is_not_run():
    registry = AgentRegistry(FILES, key_env_pattern=PATTERN, servers=ModelServers.of("http://10.0.0.7:11434"))
    registry.apply_agent(entry("acme.ok", 1, {"definition": {"name": "ok", "llm": {
        "base_url": "http://10.0.0.7:11434/v1"}}, "action": "create"}))
    registry.apply_agent(entry("acme.out", 2, {"definition": {"name": "out", "llm": {
        "base_url": "https://attacker.example/v1", "api_key_env": "AGENTSTREAM_KEY_OPENAI"}}, "action": "create"}))
    assert registry.get("acme", "ok") is not None
    assert registry.get("acme", "out") is None
    assert registry.catalog("acme").invalid["out"][0].field == "llm.base_url"


# -- MCP servers: agent files only


def test_an_agent_created_over_the_api_may_not_declare_mcp_servers():
    servers = ModelServers()
    for server in ({"name": "web", "url": "https://mcp.example/mcp"}, {"name": "notes", "command": "python"}):
        refused = check_own(agent("x", mcp_servers=[server]), "api:x", servers)
        assert refused is not None and refused.field == "mcp_servers" and "AGENTS_DIR" in refused.reason
    assert check_own(agent("x", mcp_servers=[]), "api:x", servers) is None
    registry = AgentRegistry(FILES, key_env_pattern=PATTERN)
    registry.apply_agent(entry("acme.sneaky", 1, {"definition": {"name": "sneaky", "mcp_servers": [
        {"name": "web", "url": "https://mcp.example/mcp"}]}, "action": "create"}))
    assert registry.get("acme", "sneaky") is None
    assert registry.catalog("acme").invalid["sneaky"][0].field == "mcp_servers"
