"""``bench/RESULTS.md`` from ``bench/results.json``: the targets and whether each was met, then
tables. Every figure in it comes from the results file; the hand-written analysis lives apart, in
``bench/analysis.md``, dated to the run it discusses, and is only linked from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _f(x: Any, digits: int = 1) -> str:
    try:
        return f"{x:,.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """``(target, wanted, measured, met)`` rows."""
    rows = []
    o = r.get("overhead", {})
    if "realistic" in o:
        x = o["realistic"]
        rows.append(("realistic pace: total time vs direct", "≤ 1.02×", f"{_f(x['total_ratio_p50'], 3)}× p50",
                     x["total_ratio_p50"] <= 1.02))
        rows.append(("realistic pace: added time to first token", "≤ 5 ms p50", f"{_f(x['added_ttft_ms_p50'])} ms p50",
                     x["added_ttft_ms_p50"] <= 5))
    if "first_token" in o:
        x = o["first_token"]
        rows.append(("the same, from many short runs at that pace", "≤ 5 ms p50",
                     f"{_f(x['added_ttft_ms_p50'])} ms p50 ({x['agentstream_ttft_ms']['n']} samples)",
                     x["added_ttft_ms_p50"] <= 5))
    if "flat_out" in o:
        x = o["flat_out"]
        rows.append(("flat out: characters per second vs direct", "≥ 0.5×", f"{_f(x['chars_per_s_ratio_p50'], 2)}× p50",
                     x["chars_per_s_ratio_p50"] >= 0.5))
    s = r.get("submit_latency", {})
    if "1_client" in s:
        rows.append(("submit → 202", "≤ 5 ms p50", f"{_f(s['1_client']['to_202_ms']['p50'], 2)} ms",
                     s["1_client"]["to_202_ms"]["p50"] <= 5))
        rows.append(("submit → first event", "≤ 10 ms p50", f"{_f(s['1_client']['to_first_event_ms']['p50'], 2)} ms",
                     s["1_client"]["to_first_event_ms"]["p50"] <= 10))
    for key, label in (("50_clients", "50 clients, a message a second each"),
                       ("50_clients_closed_loop", "50 clients, closed loop (saturation)")):
        if key in s:
            worst = max(s[key]["to_202_ms"]["p99"], s[key]["to_first_event_ms"]["p99"])
            rows.append((f"{label}: submit → 202 and → first event", "≤ 50 ms p99", f"{_f(worst)} ms", worst <= 50))
    fair = r.get("fairness", {})
    for key in ("1_runner", "2_runner"):
        if key in fair:
            x = fair[key]["b_start_delay_ms"]
            rows.append((f"tenant B's start delay behind A's backlog of {fair[key]['backlog']:,}, {key[0]} runner(s)",
                         "≤ 1 s p50", f"{_f(x['p50'])} ms p50, {_f(x['p99'])} ms p99", x["p50"] <= 1000))
    listing = r.get("listing", {})
    for key, label in (("runs", "GET /api/runs?limit=20"), ("agent_status", "GET /api/agents/{name}/status?limit=20")):
        if key in listing:
            x = listing[key]["ms"]
            rows.append((f"{label} with {listing['stored_runs']:,} runs stored", "≤ 50 ms p50",
                         f"{_f(x['p50'])} ms p50, {_f(x['p99'])} ms p99", x["p50"] <= 50))
    t = r.get("run_throughput", {}).get("bench-one-step")
    if t:
        rows.append(("one-step runs per second, one runner", "≥ 300", _f(t["1_runner"]["runs_per_s"]),
                     t["1_runner"]["runs_per_s"] >= 300))
        cores = r.get("machine", {}).get("cores") or 0
        rows.append(("two runners vs one", "≥ 1.6× where cores allow", f"{_f(t['scaling_ratio'], 2)}× ({cores} cores)",
                     t["scaling_ratio"] >= 1.6 if cores >= 4 else None))
    ts = r.get("tool_scaling")
    if ts:
        rows.append(("latency-bound tool calls per second, 2 tool runners vs 1", "≥ 1.9×",
                     f"{_f(ts['scaling_2_vs_1'], 2)}×", ts["scaling_2_vs_1"] >= 1.9))
        rows.append(("latency-bound tool calls per second, 4 tool runners vs 1", "≥ 3.6×",
                     f"{_f(ts['scaling_4_vs_1'], 2)}×", ts["scaling_4_vs_1"] >= 3.6))
    f = r.get("fan_out", {}).get("5000")
    if f:
        rows.append(
            (
                "5,000 SSE clients on one edge: edge RSS",
                "≤ 600 MiB",
                f"{_f(f['edge_rss_mib_peak'], 0)} MiB peak",
                f["edge_rss_mib_peak"] <= 600,
            )
        )
        rows.append(("5,000 SSE clients: events delivered per second", "≥ 20,000", _f(f["events_per_s"], 0),
                     f["events_per_s"] >= 20000))
    pc = r.get("process_concurrency")
    if pc:
        rows.append(("50 concurrent `/api/process` clients: time to the final frame vs 1 client", "≤ 1.1× p50",
                     f"{_f(pc['p50_ratio'], 2)}× p50", pc["p50_ratio"] <= 1.1))
        rows.append(("the same, slowest client", "≤ 1.3×", f"{_f(pc['slowest_ratio'], 2)}×",
                     pc["slowest_ratio"] <= 1.3))
    mr = r.get("many_runs")
    if mr:
        rows.append((f"{mr['target_in_flight']:,} runs in flight on one agent runner: all complete", "all",
                     f"{mr['completed']:,} of {mr['runs']:,}", mr["completed"] == mr["runs"]))
        rows.append(("the same: added time to first token", "≤ 50 ms p99",
                     f"{_f(mr['added_ttft_ms_p50'])} ms p50, {_f(mr['added_ttft_ms_p99'])} ms p99",
                     mr["added_ttft_ms_p99"] <= 50))
        rows.append(("the same: agent runner memory per run in flight", "reported", f"{_f(mr['rss_kib_per_run'])} KiB",
                     None))
        if "runs_per_runner_core" in mr:
            rows.append(("the same: runs at this pace one core of the agent runner carries (from its CPU per model "
                         "chunk)", "reported", f"{_f(mr['runs_per_runner_core'], 0)}", None))
    i = r.get("idle_streams")
    if i:
        rows.append(("idle streams: memory per stream", "near 60 KiB", f"{_f(i['kib_per_stream'])} KiB", None))
    return rows


def _dates(r: dict[str, Any]) -> list[str]:
    """A line naming when each scenario was measured, when a partial run (``BENCH_ONLY``) made
    them differ; none otherwise."""
    dates = r.get("dates") or {}
    if len(set(dates.values())) <= 1:
        return []
    by_date: dict[str, list[str]] = {}
    for name, date in dates.items():
        by_date.setdefault(str(date), []).append(f"`{name}`")
    return ["", "Scenarios measured on different days: " + "; ".join(
        f"{date}: {', '.join(names)}" for date, names in sorted(by_date.items())) + "."]


def _share(value: float, ceiling: float | None) -> str:
    """``value`` as a percentage of ``ceiling`` ("—" without a ceiling)."""
    return f"{value / ceiling:.0%}" if ceiling else "—"


def write_markdown(r: dict[str, Any], path: Path) -> None:
    """Write the report."""
    m = r.get("machine", {})
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m.get('date')} on {m.get('cores')} cores ({m.get('cpu')}), Python {m.get('python')}, "
        f"{m.get('nats_server')}, {m.get('platform')}. Everything (nats-server, the model server, the edge, "
        "the runners and the load clients) shares this one machine. Regenerate with `make bench` "
        "(`bench/results.json` has every number).",
        *_dates(r),
        "",
        "## Targets",
        "",
        "| target | wanted | measured | |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {_met(d)} |" for a, b, c, d in targets(r)],
        "",
    ]
    if "nats_ceiling" in r:
        n = r["nats_ceiling"]
        lines += [
            "## The broker's ceiling from Python (same machine)",
            "",
            "| operation | per second |", "|---|---|",
            f"| JetStream publish, async (acks awaited together) | {_f(n['js_publish_async_per_s'], 0)} |",
            f"| JetStream publish, one at a time | {_f(n['js_publish_sync_per_s'], 0)} |",
            f"| core request/reply, one at a time | {_f(n['request_reply_sequential_per_s'], 0)} |",
            f"| core request/reply, 100 concurrent | {_f(n['request_reply_100_concurrent_per_s'], 0)} |",
            "",
        ]
    ceiling = r.get("nats_ceiling", {})
    if "overhead" in r:
        lines += [
            "## 1. Overhead vs calling the model directly",
            "",
            "The same streamed completion, read from the model server directly and through `/v1/chat/completions`.",
            "",
            "| pace | path | first token p50 / p99 (ms) | total p50 / p99 (ms) | chars/s p50 |",
            "|---|---|---|---|---|",
        ]
        for pace, row in r["overhead"].items():
            if pace == "first_token":
                continue
            for name in ("direct", "agentstream"):
                x = row[name]
                lines.append(
                    f"| {pace} | {name} | {_f(x['ttft_ms']['p50'])} / {_f(x['ttft_ms']['p99'])} | "
                    f"{_f(x['total_ms']['p50'])} / {_f(x['total_ms']['p99'])} | {_f(x['chars_per_s']['p50'], 0)} |"
                )
            lines.append(f"| {pace} | ratio | +{_f(row['added_ttft_ms_p50'])} ms | {_f(row['total_ratio_p50'], 3)}× / "
                         f"{_f(row['total_ratio_p99'], 3)}× | {_f(row['chars_per_s_ratio_p50'], 2)}× |")
        if "first_token" in r["overhead"]:
            x = r["overhead"]["first_token"]
            lines += [
                "",
                f"Time to first token alone, from {x['agentstream_ttft_ms']['n']} short completions per path at "
                "the realistic pace (3 tokens at 50 tokens/s), interleaved: direct "
                f"{_f(x['direct_ttft_ms']['p50'])} / {_f(x['direct_ttft_ms']['p99'])} ms p50 / p99, agentstream "
                f"{_f(x['agentstream_ttft_ms']['p50'])} / {_f(x['agentstream_ttft_ms']['p99'])} ms, added "
                f"+{_f(x['added_ttft_ms_p50'])} ms p50.",
            ]
        lines.append("")
    if "submit_latency" in r:
        submit_stores = 2 * max(x.get("submits_per_s", 0) for x in r["submit_latency"].values())
        lines += [
            "## 2. Submit latency",
            "",
            "`POST /api/agents/bench-one-step/chat` → 202, and → the first event of `GET /api/runs/{id}/events`. "
            "`raw` is a bare HTTP/1.1 client (keep-alive for the POSTs, a new connection per stream), so the time "
            "is the server's; `httpx` is what a Python client using httpx sees. The runs started execute meanwhile. "
            "A submit is two concurrent JetStream stores (the request and `run.queued`); the busiest row's "
            f"{_f(submit_stores, 0)} stores/s are {_share(submit_stores, ceiling.get('js_publish_async_per_s'))} "
            "of the async JetStream publish ceiling.",
            "",
            "| clients | client | think time (mean) | submits/s | → 202 p50 / p99 (ms) | "
            "→ first SSE event p50 / p99 (ms) | samples |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, x in r["submit_latency"].items():
            think = f"{x.get('think_s_mean', 0):g} s" if x.get("think_s_mean") else "none (closed loop)"
            lines.append(
                f"| {x.get('clients', key.split('_')[0])} | {x.get('client', 'httpx')} | {think} | "
                f"{_f(x.get('submits_per_s', float('nan')), 0)} | "
                f"{_f(x['to_202_ms']['p50'], 2)} / {_f(x['to_202_ms']['p99'], 2)} | "
                f"{_f(x['to_first_event_ms']['p50'], 2)} / {_f(x['to_first_event_ms']['p99'], 2)} | "
                f"{x['to_202_ms']['n']} |"
            )
        lines.append("")
    if "run_throughput" in r:
        lines += ["## 3. Run throughput (a full queue drained by the runners)", "",
                  "Events stored: the runners' JetStream writes during the drain (`run.started` to `run.completed`), "
                  "read against the async JetStream publish ceiling above.", "",
                  "| agent | 1 runner (runs/s) | 2 runners (runs/s) | scaling | events stored per run | "
                  "events stored/s, 1 / 2 runners (share of ceiling) |", "|---|---|---|---|---|---|"]
        for agent, x in r["run_throughput"].items():
            one, two = x["1_runner"], x["2_runner"]
            stores = "—"
            if "events_stored_per_s" in one:
                c = ceiling.get("js_publish_async_per_s")
                stores = (f"{_f(one['events_stored_per_s'], 0)} ({_share(one['events_stored_per_s'], c)}) / "
                          f"{_f(two['events_stored_per_s'], 0)} ({_share(two['events_stored_per_s'], c)})")
            per_run = _f(one["events_stored_per_run"]) if "events_stored_per_run" in one else "—"
            lines.append(f"| {agent} | {_f(one['runs_per_s'])} | {_f(two['runs_per_s'])} | "
                         f"{_f(x['scaling_ratio'], 2)}× | {per_run} | {stores} |")
        lines.append("")
    if "fan_out" in r:
        lines += [
            "## 4. Event fan-out",
            "",
            "The broker sends each event to an edge once (one subscription to `live.runs.>`); the edge fans it "
            "out to its clients, so the number of clients costs the broker nothing.",
            "",
            "| SSE clients | runs watched | events delivered | events/s | all ended | errors "
            "| edge RSS before / connected / peak (MiB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, x in r["fan_out"].items():
            lines.append(f"| {key} | {x['runs_watched']} | {x['events_delivered']:,} | {_f(x['events_per_s'], 0)} | "
                         f"{x['all_ended']} | {x['errors']} | {_f(x['edge_rss_mib_before'], 0)} / "
                         f"{_f(x['edge_rss_mib_connected'], 0)} / {_f(x['edge_rss_mib_peak'], 0)} |")
        lines.append("")
    if "idle_streams" in r:
        x = r["idle_streams"]
        lines += [
            f"## 5. Concurrent idle streams (heartbeats every {x.get('heartbeat_s', '?')} s)",
            "",
            "| streams opened | held, receiving pings | errors | edge RSS before / with streams (MiB) | per stream |",
            "|---|---|---|---|---|",
            f"| {x['opened']} | {x['held_with_pings']} | {x['errors']} | {_f(x['edge_rss_mib_before'], 0)} / "
            f"{_f(x['edge_rss_mib_with_streams'], 0)} | {_f(x['kib_per_stream'])} KiB |",
            "",
        ]
    if "tool_throughput" in r:
        x = r["tool_throughput"]
        c = ceiling.get("request_reply_100_concurrent_per_s")
        lines += [f"## 6. Tool throughput (read_file over NATS, {x.get('in_flight', '?')} in flight)", "",
                  "A tool call is one core NATS request/reply; the share is of the 100-concurrent request/reply "
                  "ceiling above.", "",
                  "| tool runners | calls/s | share of ceiling | calls per runner |", "|---|---|---|---|"]
        for key in ("1_tool_runner", "2_tool_runner"):
            lines.append(f"| {key[0]} | {_f(x[key]['calls_per_s'], 0)} | {_share(x[key]['calls_per_s'], c)} | "
                         f"{x[key]['by_runner']} |")
        lines += [f"| scaling | {_f(x['scaling_ratio'], 2)}× | | |", ""]
    if "tool_scaling" in r:
        x = r["tool_scaling"]
        lines += ["## 6b. Tool runners scaling out (a latency-bound tool)", "",
                  "`http_request` to a loopback server that answers each request after "
                  f"{_f(x['tool_latency_ms'], 0)} ms; "
                  f"each tool runner executes at most {x['concurrency_per_runner']} calls at once "
                  f"(`TOOL_RUNNER_CONCURRENCY`), so it can finish at most {_f(x['ceiling_per_runner_per_s'], 0)} "
                  f"calls per second; {x['in_flight']} calls are kept in flight for {_f(x['seconds'], 0)} s.", "",
                  "| tool runners | calls/s | share of the runners' ceiling | call latency p50 / p99 (ms) "
                  "| calls per runner |", "|---|---|---|---|---|"]
        for count in (1, 2, 4):
            y = x[f"{count}_tool_runner"]
            lines.append(f"| {count} | {_f(y['calls_per_s'], 0)} | "
                         f"{_share(y['calls_per_s'], count * x['ceiling_per_runner_per_s'])} | "
                         f"{_f(y['latency_ms']['p50'])} / {_f(y['latency_ms']['p99'])} | {y['by_runner']} |")
        lines += [f"| scaling | 2 vs 1: {_f(x['scaling_2_vs_1'], 2)}×, 4 vs 1: {_f(x['scaling_4_vs_1'], 2)}× "
                  "| | | |", ""]
    if "fairness" in r:
        lines += ["## 7. Fairness between tenants", "",
                  "Tenant A queues a backlog of one-second runs; tenant B then submits one run at a time. B's start "
                  "delay is from its submit to its `run.started`.", "",
                  "| agent runners | A's backlog | B's start delay p50 | p99 | samples "
                  "| A's runs left when B was done |",
                  "|---|---|---|---|---|---|"]
        for key in ("1_runner", "2_runner"):
            if key in r["fairness"]:
                x = r["fairness"][key]
                d = x["b_start_delay_ms"]
                lines.append(f"| {key[0]} | {x['backlog']:,} | {_f(d['p50'])} ms | {_f(d['p99'])} ms | {d['n']} | "
                             f"{x['a_left_when_done']:,} |")
        lines.append("")
    if "process_concurrency" in r:
        x = r["process_concurrency"]
        lines += ["## 8. Many clients of llm-sse's endpoint", "",
                  "`POST /api/process` with an ensemble (two members, then a combiner) on the paced stand-in model: "
                  "the time from the request to the final frame.", "",
                  "| clients | p50 (s) | p99 (s) | slowest vs 1 client | p50 vs 1 client |", "|---|---|---|---|---|",
                  f"| 1 | {_f(x['one_client_s']['p50'], 2)} | {_f(x['one_client_s']['p99'], 2)} | | |",
                  f"| {x['fifty_clients_s']['n']} | {_f(x['fifty_clients_s']['p50'], 2)} | "
                  f"{_f(x['fifty_clients_s']['p99'], 2)} | {_f(x['slowest_ratio'], 2)}× | {_f(x['p50_ratio'], 2)}× |",
                  ""]
        if "cpu_ms_per_client" in x:
            lines += ["CPU used per client of the 50 (ms, by process): " + ", ".join(
                f"{role} {_f(ms, 1)}" for role, ms in x["cpu_ms_per_client"].items()) + ".", ""]
    if "many_runs" in r:
        x = r["many_runs"]
        t = x["steady_ttft_ms"]
        lines += ["## 9. Many runs in flight on one agent runner", "",
                  f"{x['runs']:,} runs at a realistic pace, submitted so that about {x['target_in_flight']:,} are in "
                  f"flight at once (at most {x['most_in_flight']:,} were); time to first token is measured for the "
                  f"{t['n']:,} runs started at the full count, and the model's own first token (one run, unloaded) "
                  f"is {_f(x['model_ttft_ms'])} ms.", "",
                  "| completed | ended | seconds | first token p50 / p99 (ms) | added p50 / p99 (ms) "
                  "| runner RSS before / peak (MiB) | per run |", "|---|---|---|---|---|---|---|",
                  f"| {x['completed']:,} | {x['ended']:,} | {_f(x['seconds'])} | {_f(t['p50'])} / {_f(t['p99'])} | "
                  f"{_f(x['added_ttft_ms_p50'])} / {_f(x['added_ttft_ms_p99'])} | "
                  f"{_f(x['runner_rss_mib_before'], 0)} / "
                  f"{_f(x['runner_rss_mib_peak'], 0)} | {_f(x['rss_kib_per_run'])} KiB |", ""]
        if "cpu_us_per_model_chunk" in x:
            cpu = x["cpu_us_per_model_chunk"]
            lines += ["CPU used per model chunk (µs, user + system, by process), which unlike times does not depend "
                      "on what else the machine was doing:", "",
                      "| " + " | ".join(cpu) + " | all |", "|" + "---|" * (len(cpu) + 1),
                      "| " + " | ".join(_f(v) for v in cpu.values()) + f" | {_f(sum(cpu.values()))} |", "",
                      f"So one core of the agent runner carries about {_f(x['runs_per_runner_core'], 0)} runs at this "
                      f"pace, and {x['target_in_flight']:,} runs in flight need about "
                      f"{_f(x['cores_needed_at_target'], 1)} cores for all these processes together; this machine "
                      f"has {x['cores']}.", ""]
    if (BENCH / "analysis.md").exists():
        lines += ["## Analysis", "",
                  "What these figures mean, what was changed to reach them and why some targets are missed is "
                  "written by hand, dated to the run it discusses, in [analysis.md](analysis.md).", ""]
    path.write_text("\n".join(lines) + "\n")
