"""End to end through real processes: HTTP edge → JetStream → agent runner → tool runner → SSE.

What a user checks: the programmer-helper agent asked about a real file of the repository calls
read_file in a tool runner process and answers with that file's real content; the SSE stream shows
run.queued … tool.call … tool.result … message.completed … run.completed in order, with strictly
increasing ids; Last-Event-ID resumes exactly; tool calls spread over two tool runners.
"""

from __future__ import annotations

import asyncio

from schemas.events import run_event_adapter
from tests.conftest import read_events, repo_file, submit


def _types(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


async def test_agent_reads_a_real_file_and_streams_every_step(api, system):
    text = repo_file("agent_runner/loop.py")
    lines = text.splitlines()
    accepted = await submit(api, "programmer-helper", "How long is agent_runner/loop.py and how does it start?")
    assert accepted["status"] == "message_received"
    assert accepted["run_id"] and accepted["message_id"]

    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    types = _types(events)

    # The order a user watches: queued, started, the tool call and its result, the answer, the end.
    assert types[0] == "run.queued"
    assert types[1] == "run.started"
    assert types.index("tool.call") < types.index("tool.result") < types.index("message.completed")
    assert types[-1] == "run.completed"
    assert types.count("run.completed") + types.count("run.failed") + types.count("run.cancelled") == 1
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids

    # Every event is a valid envelope of the documented vocabulary, for this run.
    for e in events:
        parsed = run_event_adapter.validate_python(e["data"])
        assert parsed.type == e["event"]
        assert parsed.run_id == accepted["run_id"]
        assert parsed.tenant == "alice" and parsed.agent == "programmer-helper"

    call = next(e["data"]["data"] for e in events if e["event"] == "tool.call")
    assert call["name"] == "read_file"
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is True
    assert result["runner"] in ("tools-a", "tools-b")  # executed by a tool runner process
    assert result["output"]["total_lines"] == len(lines)
    assert result["output"]["content"] == text

    answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
    assert str(len(lines)) in answer
    assert lines[0] in answer
    streamed = "".join(e["data"]["data"]["text"] for e in events if e["event"] == "message.delta")
    assert streamed == answer

    done = events[-1]["data"]["data"]
    assert done["usage"]["total_tokens"] > 0 and done["steps"] == 2


async def test_run_record_is_readable_by_id(api):
    accepted = await submit(api, "programmer-helper", "What is the first line of pyproject.toml?")
    await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    resp = await api.get(f"/api/runs/{accepted['run_id']}")
    assert resp.status_code == 200
    record = resp.json()
    assert record["status"] == "completed"
    assert record["agent"] == "programmer-helper"
    assert record["message"] == "What is the first line of pyproject.toml?"
    assert repo_file("pyproject.toml").splitlines()[0] in record["answer"]
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert [c["name"] for c in record["tool_calls"]] == ["read_file"]
    assert record["tool_calls"][0]["ok"] is True


async def test_reconnect_with_last_event_id_gets_exactly_the_rest(api):
    accepted = await submit(api, "slow-talker", "Tell me a long story")
    run_id = accepted["run_id"]
    # Read the first few events while the run is still going, then drop the connection.
    first = await asyncio.wait_for(read_events(api, run_id, stop_after=5), 30)
    assert _types(first)[-1] == "message.delta"  # mid-run: the answer is still streaming
    rest = await asyncio.wait_for(read_events(api, run_id, last_event_id=first[-1]["id"]), 30)
    everything = await asyncio.wait_for(read_events(api, run_id), 30)

    assert [e["id"] for e in first + rest] == [e["id"] for e in everything]
    assert first[-1]["id"] < rest[0]["id"]
    assert _types(rest)[-1] == "run.completed"

    # Resuming after the terminal event: nothing left, and 204 tells EventSource to stop.
    resp = await api.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(everything[-1]["id"])})
    assert resp.status_code == 204


async def test_tool_calls_are_spread_across_two_tool_runners(api):
    runs = [await submit(api, "programmer-helper", f"Read README_{i}.md please") for i in range(20)]
    streams = await asyncio.wait_for(asyncio.gather(*(read_events(api, r["run_id"]) for r in runs)), 60)
    runners = set()
    for events in streams:
        result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
        assert result["ok"] is False and result["error"]["type"] == "not_found"  # a tool error is an answer
        assert _types(events)[-1] == "run.completed"
        runners.add(result["runner"])
    assert runners == {"tools-a", "tools-b"}


async def test_same_message_id_names_the_same_run(api):
    first = await submit(api, "programmer-helper", "What is in pyproject.toml?", message_id="client-msg-42")
    second = await submit(api, "programmer-helper", "What is in pyproject.toml?", message_id="client-msg-42")
    assert second["run_id"] == first["run_id"]
    assert second["duplicate"] is True
    events = await asyncio.wait_for(read_events(api, first["run_id"]), 30)
    assert _types(events).count("run.queued") == 1
    assert _types(events).count("run.started") == 1
    assert _types(events).count("run.completed") == 1


async def test_model_failure_ends_the_run_failed_with_the_reason(api):
    accepted = await submit(api, "failing-model", "hello")
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    assert _types(events)[-1] == "run.failed"
    failure = events[-1]["data"]["data"]
    assert failure["error"]["type"] == "llm_http_error"
    assert "500" in failure["error"]["message"]


async def test_cancel_stops_a_running_run(api):
    accepted = await submit(api, "slow-talker", "Tell me a long story")
    run_id = accepted["run_id"]
    await asyncio.wait_for(read_events(api, run_id, stop_after=4), 30)  # it is streaming
    resp = await api.post(f"/api/runs/{run_id}/cancel", json={"reason": "user pressed stop"})
    assert resp.status_code == 202, resp.text
    events = await asyncio.wait_for(read_events(api, run_id), 30)
    assert _types(events)[-1] == "run.cancelled"
    assert events[-1]["data"]["data"]["reason"] == "user pressed stop"
    assert "message.completed" not in _types(events)
    again = await api.post(f"/api/runs/{run_id}/cancel", json={})
    assert again.status_code == 409
    assert again.json()["error"]["run_status"] == "cancelled"


async def test_fast_model_deltas_are_coalesced(api):
    accepted = await submit(api, "fast-talker", "go")
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    deltas = [e for e in events if e["event"] == "message.delta"]
    answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
    assert len(answer.split()) == 400
    assert "".join(d["data"]["data"]["text"] for d in deltas) == answer
    assert len(deltas) < 400 / 4, f"{len(deltas)} delta events for 400 tokens"


async def test_skill_is_loaded_on_request(api):
    accepted = await submit(api, "programmer-helper", "Use your go-analyzer skill on this project")
    events = await asyncio.wait_for(read_events(api, accepted["run_id"]), 30)
    call = next(e["data"]["data"] for e in events if e["event"] == "tool.call")
    assert call["name"] == "load_skill" and '"go-analyzer"' in call["arguments"]
    result = next(e["data"]["data"] for e in events if e["event"] == "tool.result")
    assert result["ok"] is True and result["output"]["text"] == repo_file("agents/skills/go-analyzer.md")
    assert result["runner"] is None  # load_skill runs inside the agent runner
    answer = next(e["data"]["data"]["text"] for e in events if e["event"] == "message.completed")
    assert "Analyse Go code" in answer
