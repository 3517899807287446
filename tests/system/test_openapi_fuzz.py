"""The live edge fuzzed from its own OpenAPI document (schemathesis): no 5xx, and every response
conforms to the document (its status is listed, its content type, headers and body match).

The system is real (tests/harness.py: nats-server with authentication, the built-in model, a tool
runner, an agent runner, an edge with a keys file); requests carry alice's valid key. Each operation
gets schemathesis's phases (the document's examples, boundary values, then generated requests,
valid and invalid), bounded by ``MAX_EXAMPLES`` per operation and a request timeout, so the module
stays within a few minutes on two cores.

Left out, because it cannot be fuzzed meaningfully: ``GET /api/agents/{name}/sse``, LocalAI's
stream of every run of an agent, which never ends by itself (a fuzzer waiting for its body would
wait forever); tests/test_openapi.py reads its first events and checks them against the document.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edge.api_docs import document
from tests.conftest import ALICE_KEY
from tests.harness import TEST_AGENTS, System, new_system

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 15
"""Generated requests per operation (the examples and boundary-value phases add a few more)."""
REQUEST_TIMEOUT = 30.0
"""Seconds a request may take (a run of the built-in model takes well under one)."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
"""No 5xx; the status, content type, headers and body are the document's."""


FUZZ_AGENTS = ("echo", "failing-model", "midstream-failure", "short-budget", "busy-reject")
"""Test agents besides the shipped ones: quick ones whose runs fail in each way a client can see
(the model server's error, a failure mid-stream, the run's budget), and a conversation that refuses
a second message. The slow test agents are left out: fuzzing follows a run's stream to its end."""


@pytest.fixture(scope="module")
def fuzz_system(tmp_path_factory) -> Iterator[System]:
    base = tmp_path_factory.mktemp("fuzz")
    extra = base / "extra-agents"
    extra.mkdir()
    for name in FUZZ_AGENTS:
        shutil.copy(TEST_AGENTS / f"{name}.yaml", extra / f"{name}.yaml")
    # Invalid requests include wrong keys (negative cases of the Authorization header); the default
    # throttle of wrong keys per client address would soon answer everything with 429.
    sysm = new_system(base, extra_agents=extra, EDGE_AUTH_FAILURES_PER_MINUTE="1000000")
    with sysm:
        sysm.start_model()
        sysm.start_tool_runner("tools-fuzz")
        sysm.start_agent_runner("runner-fuzz")
        keys = base / "keys.yaml"  # alice, with room for a fuzzer's pace (the defaults allow a burst of 300)
        keys.write_text(f"tenants:\n  alice:\n    keys: [{ALICE_KEY}]\n    requests_per_minute: 1000000\n"
                        "    burst: 100000\n    max_queued_runs: 100000\n    max_streams: 10000\n")
        sysm.start_edge(KEYS_FILE=str(keys))
        yield sysm


# The document the edge serves is built by this function (tests/test_openapi.py checks that the
# served one is the same); loading it here gives one test per operation at collection time.
schema = schemathesis.openapi.from_dict(document())
schema.config.update(request_timeout=REQUEST_TIMEOUT)
schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES)


fuzzed = schema.exclude(path="/api/agents/{name}/sse")


@fuzzed.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_edge_answers_as_documented(case, fuzz_system):
    case.call_and_validate(base_url=fuzz_system.edge_url, headers={"Authorization": f"Bearer {ALICE_KEY}"},
                           checks=CHECKS, timeout=REQUEST_TIMEOUT)


runs = schema.include(path_regex=r"^/(api/runs|api/agents/\{name\}/chat$|v1/(chat/completions|completions|responses))")
"""The operations that start runs and those that take a run (or response) id: where the links lead."""
STATEFUL_STEPS = 6
"""Calls per scenario; a scenario starts with a call that creates something (a run, a response)."""
STATEFUL_SCENARIOS = 25


def test_runs_followed_through_the_documents_links(fuzz_system):
    """Scenarios along the document's links: a run started (native chat, OpenAI, Responses) is then
    read, streamed, cancelled, deleted by its id, every answer checked as above.

    The edge's state changes under the scenarios (runs end, ids are taken), so Hypothesis may find
    that a scenario it replays draws differently (FlakyStrategyDefinition): that ends the
    exploration early, as in schemathesis's own runner, and is not a failure; what was explored
    must still have followed links to runs."""
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    followed: list[tuple[str, int]] = []

    class Scenarios(runs.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case):
            return {"base_url": fuzz_system.edge_url, "headers": headers, "timeout": REQUEST_TIMEOUT}

        def after_call(self, response, case):
            followed.append((f"{case.method} {case.path}", response.status_code))
            super().after_call(response, case)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, headers=headers,
                                   transport_kwargs={"base_url": fuzz_system.edge_url, "headers": headers})

    try:
        Scenarios.run(settings=settings(max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS,
                                        phases=[Phase.generate], deadline=None, derandomize=True,
                                        suppress_health_check=list(HealthCheck)))
    except FlakyStrategyDefinition:
        # The exploration ended early (see above); what it explored is checked below.
        assert followed, "the exploration ended before any call was made"
    by_run = {call for call, status in followed if call.startswith(("GET /api/runs/{run_id}", "DELETE /api/runs/",
                                                                    "POST /api/runs/{run_id}/cancel")) and status < 300}
    assert by_run, f"no run was followed by its id: {sorted(set(followed))}"
