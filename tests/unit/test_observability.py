"""Observability's pure parts: the tenant label rule, the JSON log formatter, start-up lines in
either format, tracing that is off (tests/system/test_observability.py has the processes)."""

from __future__ import annotations

import json
import logging
import secrets

from agentstream import logs, tracing
from agentstream.metrics import ALL_TENANTS, NO_TENANT, TenantLabels


def test_tenant_labels_name_tenants_only_while_few_and_enabled():
    rule = TenantLabels(max_tenants=2)
    assert rule.label("alice") == ALL_TENANTS  # none known yet
    rule.set_known(["alice", "bob"])
    assert (rule.label("alice"), rule.label("bob"), rule.label("eve")) == ("alice", "bob", ALL_TENANTS)
    assert rule.label(None) == NO_TENANT
    rule.set_known(["alice", "bob", "carol"])
    assert rule.label("alice") == ALL_TENANTS  # more than max_tenants: aggregated
    off = TenantLabels()  # the default, METRICS_MAX_TENANTS=0
    off.set_known(["alice"])
    assert off.label("alice") == ALL_TENANTS


def test_json_formatter_writes_one_object_with_the_context():
    record = logging.LogRecord("agent_runner.runner", logging.WARNING, __file__, 1, "line one\nline %d", (2,), None)
    with logs.bound(run_id="r-1", tenant="alice", agent="echo"):
        line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "line one\nline 2" and doc["level"] == "WARNING" and doc["logger"] == "agent_runner.runner"
    assert (doc["run_id"], doc["tenant"], doc["agent"]) == ("r-1", "alice", "echo")
    assert doc["time"].endswith("Z") and "trace_id" not in doc  # tracing is off in this process
    assert "run_id" not in json.loads(logs.JsonFormatter().format(record))  # the context ended with the block


def test_start_up_lines_are_read_back_in_either_format():
    assert logs.announced("edge ready: http://127.0.0.1:1") == "edge ready: http://127.0.0.1:1"
    assert logs.announced(json.dumps({"message": "edge ready: http://127.0.0.1:1", "level": "INFO"})) \
        == "edge ready: http://127.0.0.1:1"
    assert logs.announced("{not json") == "{not json"


def test_tracing_off_costs_nothing_and_writes_no_header():
    assert not tracing.enabled()
    headers: dict[str, str] = {}
    tracing.inject(headers)
    caller = {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}  # W3C Trace Context §3.2
    with tracing.span("anything", parent=caller) as span:
        assert span is None
    assert headers == {} and tracing.current_trace_id() is None and tracing.start_span("x") is None
