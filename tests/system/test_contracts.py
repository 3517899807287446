"""The contracts in schemas/: subject validation, JSON Schema files, the AsyncAPI document — and a
service that knows only the AsyncAPI document running an agent over bare nats-py."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import jsonschema
import nats
import pytest
import yaml
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas import subjects
from schemas.jsonschema import JSON_DIR, generate
from schemas.permissions import tenant_inbox_prefix, tenant_permissions

SCHEMAS = Path(subjects.__file__).resolve().parent
ASYNCAPI = SCHEMAS / "asyncapi.yaml"


# -- subjects

@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "", "x" * 65, "tab\there", "new\nline", "é", None, 7])
def test_unsafe_tokens_are_refused_before_nats(bad):
    assert not subjects.is_token(bad)
    with pytest.raises(subjects.SubjectTokenError) as err:
        subjects.run_request("tenant", bad)
    assert err.value.field == "agent"
    with pytest.raises(subjects.SubjectTokenError):
        subjects.run_events(bad, "agent", "run")
    with pytest.raises(subjects.SubjectTokenError):
        subjects.tool("tenant", bad)
    with pytest.raises(subjects.SubjectTokenError):
        subjects.control("tenant", bad)


@pytest.mark.parametrize("good", ["a", "A-b_9", "x" * 64, "programmer-helper"])
def test_safe_tokens_build_subjects(good):
    assert subjects.run_request(good, good) == f"agents.{good}.{good}.run"
    parsed = subjects.parse_run_events(subjects.run_events("t", good, "r1"))
    assert (parsed.tenant, parsed.agent, parsed.run_id) == ("t", good, "r1")
    assert subjects.parse_run_events("live." + subjects.run_events("t", good, "r1")).agent == good


@pytest.mark.parametrize("parse,bad", [
    (subjects.parse_run_request, "agents.t.a"),
    (subjects.parse_run_request, "agents.t.a.b.run"),
    (subjects.parse_run_request, "agents.t.*.run"),
    (subjects.parse_run_request, "runs.t.a.run"),
    (subjects.parse_run_events, "runs.t.a"),
    (subjects.parse_run_events, "runs.t.a.r.x"),
    (subjects.parse_run_events, "runs.t.>.r"),
    (subjects.parse_tool, "tools.t"),
    (subjects.parse_tool, "tools.t.a b"),
    (subjects.parse_control, "control.t.r.x"),
])
def test_parsers_refuse_other_shapes(parse, bad):
    with pytest.raises(subjects.SubjectTokenError):
        parse(bad)


# -- JSON Schema files

def test_committed_json_schemas_match_the_models():
    generated = generate()
    on_disk = {p.name: p.read_text() for p in JSON_DIR.glob("*.schema.json")}
    assert set(on_disk) == set(generated), "run: python -m schemas.jsonschema"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{name} drifted from its model: run python -m schemas.jsonschema"


def test_every_shipped_agent_validates_against_the_agent_schema():
    schema = json.loads((JSON_DIR / "agent-definition.schema.json").read_text())
    for path in (SCHEMAS.parent / "agents").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


# -- AsyncAPI

def _asyncapi() -> dict:
    return yaml.safe_load(ASYNCAPI.read_text())


def test_asyncapi_names_every_subject_family_and_its_schema():
    doc = _asyncapi()
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values() if c.get("address")}
    assert addresses == {
        "agents.{tenant}.{agent}.run", "agents.{tenant}.{agent}.member", "runs.{tenant}.{agent}.{run_id}",
        "live.runs.{tenant}.{agent}.{run_id}", "tools.{tenant}.{tool}", "control.{tenant}.{run_id}",
        "deadletter.{tenant}.{agent}.{run_id}", "webhooks.{tenant}.{run_id}",
    }
    assert subjects.member_request("T", "A") == "agents.{tenant}.{agent}.member".format(tenant="T", agent="A")
    assert subjects.dead_letter("T", "A", "R") == "deadletter.{tenant}.{agent}.{run_id}".format(
        tenant="T", agent="A", run_id="R"
    )
    # The addresses are the ones the code builds.
    assert subjects.run_request("T", "A") == "agents.{tenant}.{agent}.run".format(tenant="T", agent="A")
    assert subjects.run_events("T", "A", "R") == "runs.{tenant}.{agent}.{run_id}".format(
        tenant="T", agent="A", run_id="R"
    )
    assert subjects.tool("T", "X") == "tools.{tenant}.{tool}".format(tenant="T", tool="X")
    assert subjects.control("T", "R") == "control.{tenant}.{run_id}".format(tenant="T", run_id="R")
    assert subjects.webhook_job("T", "R") == "webhooks.{tenant}.{run_id}".format(tenant="T", run_id="R")
    for name, message in doc["components"]["messages"].items():
        payload = message["payload"]
        if "schema" in payload:
            ref = payload["schema"]["$ref"]
            assert (SCHEMAS / ref).is_file(), f"{name}: {ref} missing"
    for op in doc["operations"].values():
        assert op["action"] in ("send", "receive")
        assert op.get("x-publishers") or op.get("x-subscribers")


def _payload_schema(doc: dict, message: str) -> dict:
    return json.loads((SCHEMAS / doc["components"]["messages"][message]["payload"]["schema"]["$ref"]).read_text())


def issue_creds(system, tenant: str) -> Path:
    """``agentstream creds TENANT`` against the system, as an operator runs it; the seed's path."""
    env = {**system.env, "KEYS_FILE": str(system.base / "keys.yaml")}
    out = subprocess.run([sys.executable, "-m", "agentstream", "creds", tenant], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return Path(re.search(r"wrote (\S+)", out).group(1))


def test_asyncapi_states_the_tenant_permissions_the_server_is_given():
    scheme = _asyncapi()["components"]["securitySchemes"]["tenantNkey"]
    granted = tenant_permissions("T")

    def fill(rules: list[str]) -> list[str]:
        return [r.replace("{tenant}", "T") for r in rules]

    assert fill(scheme["x-permissions"]["publish"]) == list(granted.publish)
    assert fill(scheme["x-permissions"]["subscribe"]) == list(granted.subscribe)
    assert scheme["x-inbox-prefix"].replace("{tenant}", "T") == tenant_inbox_prefix("T")


async def test_a_service_runs_an_agent_from_the_asyncapi_document_alone(system):
    """Uses only: the AsyncAPI document, the JSON Schema files it references, bare nats-py and the
    tenant's credentials from ``agentstream creds``."""
    doc = _asyncapi()
    submit_op = doc["operations"]["submitRun"]
    request_channel = doc["channels"][submit_op["channel"]["$ref"].split("/")[-1]]
    events_channel = doc["channels"]["runEvents"]
    request_schema = _payload_schema(doc, "RunRequest")
    event_schema = _payload_schema(doc, "RunEvent")
    terminal = set(events_channel["x-jetstream"]["terminal-event-types"])

    def fill(address: str, **params: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], address)

    tenant, agent, run_id = "alice", "programmer-helper", uuid.uuid4().hex
    request = {"run_id": run_id, "message_id": f"svc-{run_id}", "message": "What is the first line of pyproject.toml?"}
    jsonschema.validate(request, request_schema)
    seed = issue_creds(system, tenant)
    inbox = fill(doc["components"]["securitySchemes"]["tenantNkey"]["x-inbox-prefix"], tenant=tenant)

    nc = await nats.connect(system.env["NATS_URL"], nkeys_seed=str(seed), inbox_prefix=inbox)
    try:
        js = nc.jetstream()
        events_subject = fill(events_channel["address"], tenant=tenant, agent=agent, run_id=run_id)
        received: list[dict] = []
        done = asyncio.Event()

        async def on_event(msg):
            event = json.loads(msg.data)
            received.append(event)
            if event["type"] in terminal:
                done.set()

        sub = await js.subscribe(
            events_subject, stream=events_channel["x-jetstream"]["stream"], cb=on_event, ordered_consumer=True,
            config=ConsumerConfig(name=f"svc-{run_id}", deliver_policy=DeliverPolicy.ALL),
        )
        ack = await js.publish(
            fill(request_channel["address"], tenant=tenant, agent=agent),
            json.dumps(request).encode(),
            headers={"Nats-Msg-Id": run_id},
        )
        assert ack.stream == request_channel["x-jetstream"]["stream"]
        await asyncio.wait_for(done.wait(), 30)
        await sub.unsubscribe()
    finally:
        await nc.close()

    for event in received:
        jsonschema.validate(event, event_schema)
        assert event["tenant"] == tenant and event["run_id"] == run_id
    types = [e["type"] for e in received]
    assert types[0] == "run.queued" and types[-1] == "run.completed"
    answer = next(e["data"]["text"] for e in received if e["type"] == "message.completed")
    assert (SCHEMAS.parent / "pyproject.toml").read_text().splitlines()[0] in answer
