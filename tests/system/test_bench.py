"""The benchmark harness itself runs from a clean checkout: a quick pass of the
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
    for heading in ("## Targets", "## The broker's ceiling", "## 3. Run throughput", "## 6. Tool throughput"):
        assert heading in report
    assert "one-step runs per second, one runner" in report


def test_report_holds_tool_scaling_to_its_targets_and_names_each_scenarios_date(tmp_path):
    from bench.report import write_markdown

    def row(rate: float, runners: int) -> dict:
        return {"calls": int(rate * 10), "failed": 0, "calls_per_s": rate,
                "latency_ms": {"p50": 100.0, "p99": 200.0, "mean": 110.0, "n": int(rate * 10)},
                "by_runner": {f"web-{i + 1}": int(rate * 10 / runners) for i in range(runners)}}

    results = {
        "machine": {"date": "2026-12-01", "cores": 2},
        "dates": {"tool_scaling": "2026-12-01", "fairness": "2026-11-23"},
        "tool_scaling": {"tool_latency_ms": 50.0, "concurrency_per_runner": 8, "in_flight": 64, "seconds": 10.0,
                         "ceiling_per_runner_per_s": 160.0, "1_tool_runner": row(150, 1), "2_tool_runner": row(270, 2),
                         "4_tool_runner": row(570, 4), "scaling_2_vs_1": 1.8, "scaling_4_vs_1": 3.8},
    }
    path = tmp_path / "RESULTS.md"
    write_markdown(results, path)
    report = path.read_text()
    assert "| latency-bound tool calls per second, 2 tool runners vs 1 | ≥ 1.9× | 1.80× | **missed** |" in report
    assert "| latency-bound tool calls per second, 4 tool runners vs 1 | ≥ 3.6× | 3.80× | met |" in report
    assert "## 6b. Tool runners scaling out (a latency-bound tool)" in report
    assert "| 4 | 570 | 89% |" in report  # of 4 × 160 calls/s
    assert "2026-11-23: `fairness`; 2026-12-01: `tool_scaling`" in report


def test_report_quotes_only_the_runs_own_figures_for_many_clients_and_many_runs(tmp_path):
    from bench.report import write_markdown

    results = {
        "machine": {"date": "2026-12-01", "cores": 2},
        "process_concurrency": {"one_client_s": {"p50": 1.6, "p99": 1.7, "mean": 1.6, "n": 3},
                                "fifty_clients_s": {"p50": 1.92, "p99": 2.11, "mean": 1.9, "n": 50},
                                "p50_ratio": 1.2, "slowest_ratio": 1.318},
        "many_runs": {"target_in_flight": 1000, "runs": 3000, "most_in_flight": 1012, "completed": 2999,
                      "ended": 3000, "seconds": 40.0,
                      "steady_ttft_ms": {"p50": 61.0, "p99": 80.25, "mean": 62.0, "n": 2000},
                      "model_ttft_ms": 21.0, "added_ttft_ms_p50": 40.0, "added_ttft_ms_p99": 59.25,
                      "runner_rss_mib_before": 60.0, "runner_rss_mib_peak": 160.0, "rss_kib_per_run": 101.2},
    }
    path = tmp_path / "RESULTS.md"
    write_markdown(results, path)
    report = path.read_text()
    assert "| 50 concurrent `/api/process` clients: time to the final frame vs 1 client | ≤ 1.1× p50 | 1.20× p50 " \
           "| **missed** |" in report
    assert "| the same, slowest client | ≤ 1.3× | 1.32× | **missed** |" in report
    assert "| 1,000 runs in flight on one agent runner: all complete | all | 2,999 of 3,000 | **missed** |" in report
    assert "| the same: added time to first token | ≤ 50 ms p99 | 40.0 ms p50, 59.2 ms p99 | **missed** |" in report
    assert "101.2 KiB" in report
    # The hand-written analysis is linked, never pasted in: its prose cannot contradict these tables.
    analysis = (REPO / "bench" / "analysis.md").read_text()
    assert "analysis.md" in report and analysis.strip().splitlines()[-1] not in report
