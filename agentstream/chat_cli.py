"""``agentstream chat AGENT "message"``: submit a message and render its run live in the terminal.

Talks to an edge over HTTP like any client: ``POST /api/agents/{agent}/chat``, then the run's SSE
stream (resuming with ``Last-Event-ID`` if the connection drops): the answer as it streams, each
tool call (``→``) and its result (``←``), each ensemble member as it starts (``⇉``) and finishes
(``⇇``, with its status, duration, tokens and error), and how the run ended.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import httpx
from httpx_sse import connect_sse

from schemas import events as E


def _dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stdout.isatty() else text


def chat(url: str, agent: str, message: str, *, api_key: str | None = None, message_id: str | None = None,
         out: TextIO = sys.stdout) -> int:
    """Submit and render; returns 0 if the run completed, 1 if it failed or was cancelled, 2 on
    an HTTP error (printed)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"message": message}
    if message_id:
        body["message_id"] = message_id
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(10.0, read=None)) as client:
        try:
            resp = client.post(f"/api/agents/{agent}/chat", json=body)
        except httpx.HTTPError as err:
            print(f"cannot reach the edge at {url}: {err}", file=sys.stderr)
            return 2
        if resp.status_code != 202:
            print(f"HTTP {resp.status_code}: {_error_text(resp)}", file=sys.stderr)
            return 2
        accepted = resp.json()
        run_id = accepted["run_id"]
        print(_dim(f"run {run_id}"), file=out)
        last_id: str | None = None
        status: str | None = None
        in_text = False
        started = time.monotonic()
        while status is None:
            hdrs: dict[str, str] = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(client, "GET", f"/api/runs/{run_id}/events", headers=hdrs) as source:
                    if source.response.status_code == 204:
                        break
                    if source.response.status_code != 200:
                        source.response.read()
                        print(f"HTTP {source.response.status_code}: {_error_text(source.response)}", file=sys.stderr)
                        return 2
                    for sse in source.iter_sse():
                        if sse.id:
                            last_id = sse.id
                        if not sse.data:
                            continue
                        ev = json.loads(sse.data)
                        data = ev.get("data", {})
                        kind = sse.event
                        if kind == E.MESSAGE_DELTA:
                            out.write(data.get("text", ""))
                            out.flush()
                            in_text = True
                            continue
                        if in_text:
                            out.write("\n")
                            in_text = False
                        if kind == E.RUN_STARTED:
                            print(_dim(f"started on {data.get('runner')} (attempt {data.get('attempt')})"), file=out)
                        elif kind == E.RUN_RETRYING:
                            print(_dim(f"retrying: attempt {data.get('attempt')} ({data.get('reason')}); "
                                       f"continuing from step {data.get('resume_step')}"), file=out)
                        elif kind == E.RUN_REQUEUED:
                            print(_dim(f"handed back by {data.get('runner')}: {data.get('reason')}"), file=out)
                        elif kind == E.MEMBER_STARTED:
                            print(f"⇉ member {data.get('member')} started (run {data.get('run_id')})", file=out)
                        elif kind == E.MEMBER_FINISHED:
                            print(_member_finished(data), file=out)
                        elif kind == E.TOOL_CALL:
                            print(f"→ {data.get('name')} {data.get('arguments')}", file=out)
                        elif kind == E.TOOL_APPROVAL_REQUESTED:
                            print(f"? {data.get('name')} waits for approval until {data.get('expires_at')}: POST "
                                  f"/api/runs/{ev.get('run_id')}/approve (or /reject) with "
                                  f"{{\"tool_call_id\": \"{data.get('tool_call_id')}\"}}", file=out)
                        elif kind == E.TOOL_APPROVAL_DECIDED:
                            by = " (timed out)" if data.get("by") == "timeout" else ""
                            print(f"! {data.get('name')} {data.get('decision')}{by}", file=out)
                        elif kind == E.TOOL_RESULT:
                            if data.get("ok"):
                                took = f"{data.get('ms', 0):.0f} ms"
                                print(f"← {data.get('name')} ok ({took}){_summary(data.get('output'))}", file=out)
                            else:
                                error = data.get("error") or {}
                                print(f"← {data.get('name')} failed: {error.get('type')}: {error.get('message')}",
                                      file=out)
                        elif kind in E.TERMINAL_TYPES:
                            status = kind
                            usage = data.get("usage") or {}
                            line = (
                                f"{kind} in {time.monotonic() - started:.2f} s, {usage.get('total_tokens', 0)} tokens"
                            )
                            if kind != E.RUN_COMPLETED:
                                line += f": {data.get('reason')}"
                                if data.get("error"):
                                    line += f" ({data['error'].get('message')})"
                            print(_dim(line), file=out)
                            break
            except httpx.HTTPError as err:
                print(_dim(f"stream interrupted ({err}); resuming"), file=out)
                time.sleep(0.5)
        return 0 if status == E.RUN_COMPLETED else 1


def _member_finished(data: dict[str, Any]) -> str:
    """``⇇ member NAME STATUS (1.23 s, 45 tokens)``, with the error of a member left out."""
    usage = data.get("usage") or {}
    took = f"{(data.get('duration_ms') or 0) / 1000:.2f} s"
    tokens = f", {usage['total_tokens']} tokens" if usage.get("total_tokens") is not None else ""
    line = f"⇇ member {data.get('member')} {data.get('status')} ({took}{tokens})"
    error = data.get("error") or {}
    if error:
        line += f": {error.get('type')}: {error.get('message')}"
    return line


def _summary(output: Any) -> str:
    if isinstance(output, dict):
        if "total_lines" in output:
            if output["total_lines"] is None:  # read_file stopped before the file's end
                lines = f"{output.get('start_line')}-{output.get('end_line')}"
                return f": {output.get('path')}, lines {lines} of a longer file"
            return f": {output.get('path')}, {output.get('total_lines')} lines"
        if "status" in output:
            return f": HTTP {output.get('status')}, {output.get('bytes')} bytes"
        if "entries" in output:
            return f": {len(output['entries'])} entries"
    return ""


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        field = f" [{err.get('field')}]" if err.get("field") else ""
        return f"{err.get('message')}{field}"
    except (ValueError, AttributeError):
        return resp.text[:300]
