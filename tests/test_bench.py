"""The benchmark harness itself (issue 6) runs from a clean checkout: a quick pass of the
scenarios that finish in seconds, through ``python -m bench`` as ``make bench`` runs it. Only
completeness is checked (every run and tool call finished, the report has its tables); the
figures are the benchmark's business, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness import REPO


def test_bench_quick_pass_writes_complete_results(tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "BENCH_OUT": str(tmp_path),
           "BENCH_ONLY": "nats_ceiling,run_throughput,tool_throughput"}
    done = subprocess.run([sys.executable, "-m", "bench"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=110)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.quick.json").read_text())
    assert results["machine"]["cores"] >= 1
    assert all(results["nats_ceiling"][k] > 0 for k in ("js_publish_async_per_s", "request_reply_100_concurrent_per_s"))
    for agent in ("bench-one-step", "bench-two-step"):
        for runners in ("1_runner", "2_runner"):
            drain = results["run_throughput"][agent][runners]
            assert drain["completed"] == drain["runs"] > 0, (agent, runners, drain)
            assert drain["events_stored_per_run"] >= 3  # run.started, an answer, run.completed at least
    for count in ("1_tool_runner", "2_tool_runner"):
        tools = results["tool_throughput"][count]
        assert tools["ok"] == tools["calls"] > 0
    assert len(results["tool_throughput"]["2_tool_runner"]["by_runner"]) == 2  # both tool runners took calls
    report = (tmp_path / "RESULTS.quick.md").read_text()
    for heading in ("## Targets (issue 6)", "## The broker's ceiling", "## 3. Run throughput", "## 6. Tool throughput"):
        assert heading in report
    assert "one-step runs per second, one runner" in report
