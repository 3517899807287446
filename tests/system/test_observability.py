"""Observability of real processes: each one's ``GET /metrics`` counts what the test's runs did;
one OpenTelemetry trace per run spans the edge, the agent runner, the tool runner and the model
server, also across a runner crash; ``LOG_FORMAT=json`` logs are JSON lines that name the run and
never hold a secret.

Spans are collected by an OTLP/HTTP receiver in this test (protobuf on ``/v1/traces``, decoded
with opentelemetry-proto), which every process exports to through OTEL_EXPORTER_OTLP_ENDPOINT.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pytest
from httpx_sse import aconnect_sse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from agentstream.metrics import NO_TENANT
from tests.conftest import ALICE_KEY, BOB_KEY, eventually, read_events, submit, write_keys_file
from tests.harness import Proc, System, new_system

pytestmark = pytest.mark.timeout(180)

LLM_KEY = "llm-secret-key-for-the-log-test"
SPAN_KIND_CLIENT = Span.SPAN_KIND_CLIENT
WRONG_KEY = "a-wrong-key-that-must-not-be-logged"


# -- an OTLP/HTTP receiver


@dataclass
class SpanRecord:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class _Receiver(http.server.BaseHTTPRequestHandler):
    spans: ClassVar[list[SpanRecord]] = []
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(SpanRecord(
                        service=resource.get("service.name", ""), name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex() or None, kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                    ))
        with self.lock:
            _Receiver.spans.extend(found)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def spans_of(trace_id: str) -> list[SpanRecord]:
    with _Receiver.lock:
        return [s for s in _Receiver.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def otlp() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def observed_env(otlp: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_BSP_SCHEDULE_DELAY": "100", "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG", "METRICS_MAX_TENANTS": "10", "LLM_MAX_ATTEMPTS": "2", "LLM_API_KEY": LLM_KEY,
    }


@pytest.fixture(scope="module")
def observed(tmp_path_factory, otlp) -> Iterator[System]:
    """A system of its own, every process exporting spans to ``otlp`` and logging JSON."""
    base = tmp_path_factory.mktemp("observed")
    sysm = new_system(base, **observed_env(otlp))
    with sysm:
        sysm.start_model()
        sysm.start_tool_runner("tools-o")
        sysm.start_agent_runner("runner-o")
        sysm.start_edge(KEYS_FILE=str(write_keys_file(base / "keys.yaml")))
        yield sysm


def alice(sysm: System, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=sysm.edge_url, timeout=httpx.Timeout(10, read=60),
                             headers={"Authorization": f"Bearer {ALICE_KEY}", **headers})


# -- reading /metrics


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample of a /metrics page, parsed with prometheus-client's own parser."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def metrics_urls(sysm: System) -> dict[str, str]:
    """Each process's /metrics on its METRICS_BIND (the edge's too: never on EDGE_BIND)."""
    return {proc.name: proc.metrics_url for proc in sysm.procs
            if proc.name.startswith(("edge", "agent-runner", "tool-runner"))}


def of_kind(procs: dict[str, Samples], kind: str) -> list[Samples]:
    return [s for name, s in procs.items() if name.startswith(kind)]


async def test_every_process_counts_what_its_runs_did(observed):
    urls = metrics_urls(observed)
    before = {name: await scrape(url) for name, url in urls.items()}
    read = 0
    async with alice(observed) as api:
        run_ids = [(await submit(api, "programmer-helper", "How many lines does pyproject.toml have?"))["run_id"]
                   for _ in range(3)]
        message_id = f"m-{uuid.uuid4().hex}"
        first = await submit(api, "programmer-helper", "What is the first line of README.md?", message_id=message_id)
        again = await submit(api, "programmer-helper", "What is the first line of README.md?", message_id=message_id)
        assert again["duplicate"] is True and again["run_id"] == first["run_id"]
        failing = (await submit(api, "failing-model", "hello"))["run_id"]
        assert (await api.post("/api/agents/programmer-helper/chat", json={"message": " "})).status_code == 422
        wrong = await api.post("/api/agents/programmer-helper/chat", json={"message": "hi"},
                               headers={"Authorization": f"Bearer {WRONG_KEY}"})
        assert wrong.status_code == 401
        for run_id in [*run_ids, first["run_id"]]:
            events = await read_events(api, run_id)
            assert events[-1]["event"] == "run.completed", events[-1]
            read += len(events)
        events = await read_events(api, failing)
        assert events[-1]["event"] == "run.failed" and events[-1]["data"]["data"]["error"]["type"] == "llm_http_error"
        read += len(events)

    edge_url = next(u for n, u in urls.items() if n.startswith("edge"))

    async def streams_closed() -> bool:
        """the edge counts no open SSE stream"""
        return value(await scrape(edge_url), "agentstream_sse_streams_open") == 0

    await eventually(streams_closed)

    async def all_acked() -> bool:
        """every run request is acknowledged (nothing pending on alice's consumer)"""
        page = await scrape(next(u for n, u in urls.items() if n.startswith("agent-runner")))
        return (("agentstream_consumer_ack_pending_messages", frozenset({("consumer", "tenant_alice")})) in page
                and value(page, "agentstream_consumer_ack_pending_messages", consumer="tenant_alice") == 0
                and value(page, "agentstream_consumer_pending_messages", consumer="tenant_alice") == 0)

    await eventually(all_acked)
    after = {name: await scrape(url) for name, url in urls.items()}

    def delta(kind: str, name: str, **labels: str) -> float:
        return (sum(value(s, name, **labels) for s in of_kind(after, kind))
                - sum(value(s, name, **labels) for s in of_kind(before, kind)))

    # The edge: submits by outcome, events sent on its SSE streams.
    assert delta("edge", "agentstream_submits_total", tenant="alice", outcome="accepted", status="202") == 5
    assert delta("edge", "agentstream_submits_total", tenant="alice", outcome="duplicate", status="202") == 1
    assert delta("edge", "agentstream_submits_total", tenant="alice", outcome="refused", status="422") == 1
    assert delta("edge", "agentstream_submits_total", tenant=NO_TENANT, outcome="refused", status="401") == 1
    assert delta("edge", "agentstream_sse_events_sent_total") == read
    # The agent runner: runs by outcome, their durations and first tokens, tool calls, model requests.
    helper = {"tenant": "alice", "agent": "programmer-helper"}
    assert delta("agent-runner", "agentstream_runs_total", **helper, outcome="completed", error_type="") == 4
    assert delta("agent-runner", "agentstream_runs_total", tenant="alice", agent="failing-model", outcome="failed",
                 error_type="llm_http_error") == 1
    assert delta("agent-runner", "agentstream_run_duration_seconds_count", agent="programmer-helper",
                 outcome="completed") == 4
    assert delta("agent-runner", "agentstream_run_time_to_first_token_seconds_count", agent="programmer-helper") == 4
    assert delta("agent-runner", "agentstream_tool_calls_total", tool="read_file", outcome="ok") == 4
    assert delta("agent-runner", "agentstream_tool_call_duration_seconds_count", tool="read_file") == 4
    assert delta("agent-runner", "agentstream_llm_request_duration_seconds_count", model="builtin", outcome="ok") == 8
    assert delta("agent-runner", "agentstream_llm_errors_total", model="builtin:fail=500",
                 error_type="llm_http_error") == 2  # LLM_MAX_ATTEMPTS=2
    assert delta("agent-runner", "agentstream_run_redeliveries_total") == 0
    # The tool runner, as the executor.
    assert delta("tool-runner", "agentstream_tool_executions_total", tool="read_file", outcome="ok") == 4
    assert delta("tool-runner", "agentstream_tool_execution_duration_seconds_count", tool="read_file") == 4
    # Every process also reports itself.
    for name, page in after.items():
        assert value(page, "process_cpu_seconds_total") > 0, name


async def test_agents_created_over_the_api_share_one_label(observed):
    """A tenant may create any number of agents, each naming any model: the runner's series stay
    few (agent ``_api``, model ``_other``), the names only in the run's own events."""
    urls = metrics_urls(observed)
    runner_url = next(u for n, u in urls.items() if n.startswith("agent-runner"))
    before = await scrape(runner_url)
    name = f"own-{uuid.uuid4().hex[:8]}"
    async with alice(observed) as api:
        made = await api.post("/api/agents", json={"name": name, "model": "builtin:tokens=6,delay=0.001"})
        assert made.status_code == 201, made.text
        run = await submit(api, name, "hello")
        events = await read_events(api, run["run_id"])
        assert events[-1]["event"] == "run.completed", events[-1]
        assert (await api.delete(f"/api/agents/{name}")).status_code == 200
    after = await scrape(runner_url)

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("agentstream_runs_total", agent="_api", outcome="completed") == 1
    assert delta("agentstream_llm_request_duration_seconds_count", model="_other", outcome="ok") == 1
    assert not any(name in str(labels) or "tokens=6" in str(labels) for _, labels in after)


async def test_metrics_need_no_key_and_show_no_secret(observed):
    async with httpx.AsyncClient(timeout=10) as client:
        for name, url in metrics_urls(observed).items():
            resp = await client.get(url, headers={"Host": "metrics.example"})  # scrapers use the IP: any Host
            assert resp.status_code == 200, (name, resp.text)
            for secret in (ALICE_KEY, BOB_KEY, LLM_KEY):
                assert secret not in resp.text, name


async def test_a_tenant_cannot_read_the_metrics_on_the_edges_api_port(observed):
    """Counts over every tenant stay on METRICS_BIND: on EDGE_BIND, /metrics is an unknown path."""
    async with alice(observed) as api:
        assert (await submit(api, "programmer-helper", "hello"))["run_id"]
        resp = await api.get("/metrics")
        assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found"
        assert "agentstream_" not in resp.text
        anonymous = await api.get("/metrics", headers={"Authorization": ""})
        assert anonymous.status_code == 401 and "agentstream_" not in anonymous.text


# -- traces


def new_traceparent() -> tuple[str, str, str]:
    """(traceparent header, its trace id, its parent span id): W3C Trace Context §3.2."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans: list[SpanRecord], service: str, name: str) -> SpanRecord:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, [(s.service, s.name) for s in spans]
    return found[0]


async def test_one_trace_spans_edge_runner_tool_runner_and_model(observed):
    header, trace_id, caller_span = new_traceparent()
    async with alice(observed, traceparent=header) as api:
        run = await submit(api, "programmer-helper", "How many lines does pyproject.toml have?")
        events = await read_events(api, run["run_id"])
    assert events[-1]["event"] == "run.completed"
    services = {"agentstream-edge", "agentstream-agent-runner", "agentstream-tool-runner", "agentstream-builtin-model"}

    async def exported() -> bool:
        """spans of every process, both model calls included, have reached the receiver"""
        spans = spans_of(trace_id)
        return ({s.service for s in spans} >= services
                and sum(s.service == "agentstream-builtin-model" for s in spans) >= 2
                and any(s.name.startswith("invoke_agent") for s in spans))

    await eventually(exported, within=15)
    spans = spans_of(trace_id)
    submit_span = one(spans, "agentstream-edge", "submit programmer-helper")
    assert submit_span.parent_id == caller_span  # the caller's traceparent was honoured
    assert submit_span.attributes["agentstream.run_id"] == run["run_id"]
    run_span = one(spans, "agentstream-agent-runner", "invoke_agent programmer-helper")
    assert run_span.parent_id == submit_span.span_id  # through the run request's NATS headers
    assert run_span.attributes["agentstream.attempt"] == 1
    chats = [s for s in spans if s.service == "agentstream-agent-runner" and s.name == "chat builtin"]
    assert len(chats) == 2 and {c.parent_id for c in chats} == {run_span.span_id}
    # Each model request is the httpx instrumentation's client span under its chat span, and the
    # model server's span is its child: the traceparent went on the HTTP request.
    requests = [s for s in spans if s.service == "agentstream-agent-runner" and s.name == "POST"]
    assert len(requests) == 2 and {r.parent_id for r in requests} == {c.span_id for c in chats}
    assert all(r.kind == SPAN_KIND_CLIENT and r.attributes["http.response.status_code"] == 200 for r in requests)
    served = [s for s in spans if s.service == "agentstream-builtin-model"]
    assert {s.parent_id for s in served} == {r.span_id for r in requests}
    call = one(spans, "agentstream-agent-runner", "execute_tool read_file")
    assert call.parent_id == run_span.span_id
    executed = one(spans, "agentstream-tool-runner", "execute_tool read_file")
    assert executed.parent_id == call.span_id  # through the tool call's NATS headers
    assert executed.attributes["agentstream.run_id"] == run["run_id"]


async def test_an_ensembles_members_run_in_its_trace(observed):
    header, trace_id, _ = new_traceparent()
    async with alice(observed, traceparent=header) as api:
        run = await submit(api, "ens-pair", "Why is the sky blue?")
        events = await read_events(api, run["run_id"])
    assert events[-1]["event"] == "run.completed"
    members = {e["data"]["data"]["member"] for e in events if e["event"] == "member.finished"}

    async def exported() -> bool:
        """the parent's and every member's run span have reached the receiver"""
        names = {s.name for s in spans_of(trace_id)}
        return {"invoke_agent ens-pair", *(f"invoke_agent {m}" for m in members)} <= names

    await eventually(exported, within=15)
    spans = spans_of(trace_id)
    parent = one(spans, "agentstream-agent-runner", "invoke_agent ens-pair")
    for member in members:
        assert one(spans, "agentstream-agent-runner", f"invoke_agent {member}").parent_id == parent.span_id


async def test_a_run_resumed_by_another_runner_stays_in_its_trace(tmp_path, otlp):
    sysm = new_system(tmp_path / "resume", AGENT_RUNNER_ACK_WAIT="1.5", **observed_env(otlp))
    try:
        sysm.start_model()
        sysm.start_tool_runner("tools-r")
        runners = {rid: sysm.start_agent_runner(rid) for rid in ("runner-a", "runner-b")}
        sysm.start_edge()
        header, trace_id, _ = new_traceparent()
        async with httpx.AsyncClient(base_url=sysm.edge_url, timeout=60, headers={"traceparent": header}) as api:
            run = await submit(api, "long-story", "Tell me a long story")
            seen: list[dict] = []
            async with aconnect_sse(api, "GET", f"/api/runs/{run['run_id']}/events") as source:
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue
                    seen.append({"event": sse.event, "data": json.loads(sse.data)})
                    if sse.event == "message.delta" and sum(e["event"] == "message.delta" for e in seen) == 2:
                        holder = next(e["data"]["data"]["runner"] for e in seen if e["event"] == "run.started")
                        runners[holder].kill()  # mid-answer: another runner resumes the run
                    if sse.event in ("run.completed", "run.failed", "run.cancelled"):
                        break
        assert seen[-1]["event"] == "run.completed"
        survivor = ({"runner-a", "runner-b"} - {holder}).pop()
        assert [e["data"]["data"]["runner"] for e in seen if e["event"] == "run.started"] == [holder, survivor]

        async def exported() -> bool:
            """the second attempt's run span has reached the receiver"""
            return any(s.name == "invoke_agent long-story" and s.attributes.get("agentstream.attempt") == 2
                       for s in spans_of(trace_id))

        await eventually(exported, within=15)
        spans = spans_of(trace_id)
        submit_span = one(spans, "agentstream-edge", "submit long-story")
        resumed = next(s for s in spans if s.name == "invoke_agent long-story"
                       and s.attributes.get("agentstream.attempt") == 2)
        assert resumed.parent_id == submit_span.span_id  # the context stored with the request
        assert resumed.attributes["agentstream.runner"] == survivor
        page = await scrape(runners[survivor].metrics_url)
        assert value(page, "agentstream_run_redeliveries_total", agent="long-story") == 1
    finally:
        sysm.stop()


# -- logs


def secrets_of(sysm: System) -> dict[str, str]:
    """Everything that must never be logged: API keys (and the keys file's digest), the wrong key
    a client sent, the model server key, every nkey seed."""
    found = {"alice key": ALICE_KEY, "bob key": BOB_KEY, "bob digest": hashlib.sha256(BOB_KEY.encode()).hexdigest(),
             "wrong key": WRONG_KEY, "LLM_API_KEY": LLM_KEY}
    assert sysm.auth is not None
    for seed in sysm.auth.directory.rglob("*.nk"):
        found[f"seed {seed.name}"] = seed.read_text().strip()
    return found


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = [line for line in proc.log_path.read_text().splitlines() if line.strip()]
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line: one JSON object
        assert isinstance(doc, dict), line
        assert {"time", "level", "logger", "message"} <= doc.keys(), line
        docs.append(doc)
    return docs


async def test_json_logs_name_the_run_and_hold_no_secret(observed):
    header, trace_id, _ = new_traceparent()
    async with alice(observed, traceparent=header) as api:
        run = await submit(api, "programmer-helper", "How many lines does pyproject.toml have?")
        events = await read_events(api, run["run_id"])
        assert events[-1]["event"] == "run.completed"
        # Keys in every place a client may put one, right or wrong.
        async with aconnect_sse(api, "GET", f"/api/runs/{run['run_id']}/events?api_key={ALICE_KEY}",
                                headers={"Authorization": ""}) as source:
            assert source.response.status_code == 200
        for headers, url in (({"Authorization": f"Bearer {WRONG_KEY}"}, "/api/agents"),
                             ({"Authorization": ""}, f"/api/agents?api_key={ALICE_KEY}"),
                             ({"Authorization": ""}, f"/api/runs/{run['run_id']}/events?api_key={WRONG_KEY}")):
            assert (await api.get(url, headers=headers)).status_code == 401
    forbidden = secrets_of(observed)
    for proc in observed.procs:
        text = proc.log_path.read_text()
        for what, secret in forbidden.items():
            assert secret not in text, f"{what} in {proc.name}'s log"
        json_lines(proc)
    runner = next(p for p in observed.procs if p.name.startswith("agent-runner"))
    tools = next(p for p in observed.procs if p.name.startswith("tool-runner"))
    edge = next(p for p in observed.procs if p.name.startswith("edge"))
    for proc, want in ((edge, {"tenant": "alice", "agent": "programmer-helper"}),
                       (runner, {"tenant": "alice", "agent": "programmer-helper"}),
                       (tools, {"tenant": "alice"})):
        mine = [d for d in json_lines(proc) if d.get("run_id") == run["run_id"]]
        assert mine, f"no log line of {proc.name} names the run"
        assert all(want.items() <= d.items() for d in mine), mine
        assert any(d.get("trace_id") == trace_id for d in mine), mine
