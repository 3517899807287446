// The run's timeline: one row per thing that happened (queued, started, each step with its text
// and tool calls, retries, ensemble members, the end), built as events arrive. Rows are appended
// or updated in place, never rebuilt; text and counters change once per frame (scheduler.js).
// A tool call waiting for a person's approval gets Approve and Reject buttons (and a reason) until
// it is decided (README, "Approval of tool calls"). Event types and fields: README, "Run events".

import { el, fold } from "./dom.js";
import { duration, excerpt, outputText, prettyArguments, tsMs, usageText } from "./format.js";
import { TextSink, schedule } from "./scheduler.js";
import { TERMINAL_TYPES } from "./sse.js";

const STATUS_OF = { "run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled" };

/** Text per step, for an answer that a retry may partly supersede (`run.retrying` resume_step). */
export class StepTexts {
  constructor(onReset) {
    this.parts = new Map();
    this.onReset = onReset;
  }

  add(step, text) {
    this.parts.set(step, (this.parts.get(step) ?? "") + text);
  }

  /** Drop the text of `resume_step` onwards; returns the steps dropped. */
  supersede(resumeStep) {
    const dropped = [...this.parts.keys()].filter((s) => s >= resumeStep);
    for (const s of dropped) this.parts.delete(s);
    return dropped;
  }

  get text() {
    return [...this.parts.values()].join("");
  }
}

/** One ensemble member's card: its status and, followed on its own child run, its answer. */
class MemberCard {
  constructor(name, runId, hooks) {
    this.name = name;
    this.runId = runId;
    this.badge = el("span", { class: "badge running", text: "running" });
    this.meta = el("span", { class: "muted member-meta" });
    const text = el("div", { class: "member-text" });
    this.sink = new TextSink(text);
    this.texts = new StepTexts();
    this.node = el("div", { class: "member", dataset: { member: name, runId, status: "running" } },
      el("div", { class: "member-head" }, el("strong", { text: name }), this.badge),
      el("button", {
        type: "button", class: "link run-link", title: "Open this member's own timeline",
        text: `run ${runId.slice(0, 12)}…`, onclick: () => hooks.openRun(runId, name),
      }),
      this.meta, text);
    this.stream = hooks.followRun(runId, { onEvents: (batch) => this.#apply(batch) });
  }

  #apply(batch) {
    for (const { type, env } of batch) {
      const data = env.data ?? {};
      if (type === "message.delta") {
        this.texts.add(data.step, data.text);
        this.sink.append(data.text);
      } else if (type === "run.retrying") {
        this.texts.supersede(data.resume_step);
        this.sink.set(this.texts.text);
      } else if (TERMINAL_TYPES.has(type) && this.node.dataset.status === "running") {
        this.#status(STATUS_OF[type]);
      }
    }
  }

  #status(status) {
    this.node.dataset.status = status;
    this.badge.className = `badge ${status}`;
    this.badge.textContent = status;
  }

  /** The parent's `member.finished`: status, duration, usage, error. */
  finished(data) {
    this.#status(data.status);
    const bits = [duration(data.duration_ms)];
    if (data.usage?.total_tokens !== undefined) bits.push(`${data.usage.total_tokens} tokens`);
    if (data.error) bits.push(`${data.error.type ?? "error"}: ${data.error.message ?? ""}`);
    this.meta.textContent = bits.filter(Boolean).join(" · ");
  }

  stop() {
    this.stream?.stop();
  }
}

export class Timeline {
  /**
   * `parts`: the list (`ol`), the status badge, run id, elapsed, count and usage elements and the
   * cancel button. `hooks.followRun(runId, {onEvents})` follows another run (an ensemble member)
   * and returns something with `stop()`; `hooks.openRun(runId, agent)` shows that run instead;
   * `hooks.decide(runId, toolCallId, "approve"|"reject", reason)` posts a decision (a promise).
   */
  constructor(parts, hooks) {
    this.parts = parts;
    this.hooks = hooks;
    this.members = new Map();
    this.ticker = null;
    this.reset(null);
  }

  /** Empty the timeline for run `runId` (null: no run). */
  reset(runId) {
    this.stop();
    this.runId = runId;
    this.count = 0;
    this.lastId = 0;
    this.status = runId ? "connecting" : "no run";
    this.startMs = NaN;
    this.endMs = NaN;
    this.elapsedMs = undefined;
    this.prevTs = NaN;
    this.steps = new Map();
    this.tools = new Map();
    this.members = new Map();
    this.memberGrid = null;
    this.dirtySteps = new Set();
    this.parts.list.replaceChildren();
    this.parts.runId.textContent = runId ?? "";
    this.parts.usage.textContent = "";
    this.#render();
    if (runId) this.ticker = setInterval(() => schedule(this), 1000);
  }

  /** Stop following members and ticking. */
  stop() {
    for (const card of this.members.values()) card.stop();
    clearInterval(this.ticker);
    this.ticker = null;
  }

  get finished() {
    return ["completed", "failed", "cancelled"].includes(this.status);
  }

  /** A refusal of the run's stream (404 for an unknown or another tenant's run, say). */
  failed(failure) {
    this.status = "unavailable";
    this.#row("error", null, el("span", { class: "error", text: failure.describe() }));
    this.stop();
    this.#render();
  }

  /** Add one event (`{id, type, env}`) to the timeline. */
  apply(ev) {
    const { type, env } = ev;
    const data = env.data ?? {};
    const ts = tsMs(env.ts);
    this.count += 1;
    this.lastId = ev.id;
    if (Number.isNaN(this.startMs)) this.startMs = ts;
    switch (type) {
      case "run.queued":
        this.status = "queued";
        this.#row(type, ev, el("strong", { text: "queued" }), ` ${excerpt(data.message, 100)}`);
        break;
      case "run.started":
        this.status = "running";
        this.#row(type, ev, el("strong", { text: "started" }), ` on ${data.runner} · attempt ${data.attempt}`);
        break;
      case "run.requeued":
        this.#row(type, ev, el("strong", { text: "handed back" }), ` by ${data.runner}: ${data.reason}`);
        break;
      case "run.retrying":
        this.status = "retrying";
        this.#retrying(ev, data);
        break;
      case "member.started":
        this.#memberStarted(ev, data);
        break;
      case "member.finished":
        this.members.get(data.run_id)?.finished(data);
        break;
      case "message.delta": {
        const step = this.#step(env, data.step);
        const text = this.#textRow(step);
        text.sink.append(data.text);
        this.#touch(step, ts);
        break;
      }
      case "tool.call":
        this.#toolCall(ev, data, ts);
        break;
      case "tool.result":
        this.#toolResult(ev, data, ts);
        break;
      case "tool.approval_requested":
        this.status = "awaiting approval";
        this.#approvalRequested(ev, data, ts);
        break;
      case "tool.approval_decided":
        this.#approvalDecided(ev, data, ts);
        break;
      case "message.completed": {
        const step = this.#step(env, data.steps);
        const what = data.finish_reason === "tool_calls" && data.tool_calls?.length
          ? "waiting for the client's tool results" : `${(data.text ?? "").length.toLocaleString("en")} chars`;
        step.body.append(this.#makeRow(type, ev, [el("strong", { text: "message completed" }),
          ` · ${data.finish_reason} · ${what}`]));
        this.#touch(step, ts);
        break;
      }
      default:
        if (TERMINAL_TYPES.has(type)) this.#terminal(ev, data, ts);
        else this.#row(type, ev, el("strong", { text: type }));
    }
    if (!Number.isNaN(ts)) this.prevTs = ts;
    schedule(this);
  }

  // -- rows

  #row(type, ev, ...children) {
    const li = this.#makeRow(type, ev, children);
    this.parts.list.append(li);
    return li;
  }

  #makeRow(type, ev, children) {
    const since = ev ? tsMs(ev.env.ts) - this.startMs : NaN;
    return el("li", { class: `row ${type.replace(".", "-")}`, dataset: { type, eventId: ev?.id ?? "" } },
      el("span", { class: "at muted", text: Number.isNaN(since) ? "" : `+${duration(since)}` }),
      el("span", { class: "what" }, ...children));
  }

  #step(env, number) {
    const attempt = env.attempt ?? 1;
    const key = `${attempt}:${number}`;
    let step = this.steps.get(key);
    if (step) return step;
    const dur = document.createTextNode(""); // updated in place once per frame, never replaced
    const body = el("ol", { class: "step-body" });
    const li = el("li", { class: "row step", dataset: { type: "step", step: number, attempt } },
      el("div", { class: "step-head" }, el("strong", { text: `Step ${number}` }),
        attempt > 1 ? el("span", { class: "muted", text: ` · attempt ${attempt}` }) : null,
        el("span", { class: "muted dur" }, dur)),
      body);
    this.parts.list.append(li);
    step = { number, attempt, li, body, dur, start: this.prevTs, end: this.prevTs, text: null };
    this.steps.set(key, step);
    return step;
  }

  #touch(step, ts) {
    if (!Number.isNaN(ts)) step.end = ts;
    this.dirtySteps.add(step);
  }

  #textRow(step) {
    if (step.text) return step.text;
    const body = el("div", { class: "text-body" });
    const label = el("span", { class: "fold-label", text: "text" });
    const size = document.createTextNode("");
    const li = el("li", { class: "row text", dataset: { type: "text", step: step.number } },
      el("details", { class: "fold" }, el("summary", {}, label, el("span", { class: "muted" }, size)), body));
    step.body.append(li);
    step.text = { li, label, size, sink: new TextSink(body) };
    return step.text;
  }

  #toolCall(ev, data, ts) {
    const step = this.#step(ev.env, data.step);
    const status = el("span", { class: "badge running", text: data.client ? "client tool" : "running" });
    const meta = el("span", { class: "muted tool-meta" });
    const li = el("li", { class: "row tool", dataset: { type: "tool", toolCallId: data.tool_call_id, name: data.name } },
      el("div", { class: "tool-head" }, el("span", { class: "tool-name", text: data.name }), status, meta),
      fold("arguments", prettyArguments(data.arguments), { className: "args" }));
    step.body.append(li);
    this.tools.set(data.tool_call_id, { li, status, meta, step });
    this.#touch(step, ts);
  }

  #toolResult(ev, data, ts) {
    let tool = this.tools.get(data.tool_call_id);
    if (!tool) {
      this.#toolCall(ev, { ...data, arguments: "" }, ts);
      tool = this.tools.get(data.tool_call_id);
    }
    const ok = data.ok === true;
    tool.li.dataset.ok = String(ok);
    tool.status.className = `badge ${ok ? "completed" : "failed"}`;
    tool.status.textContent = ok ? "ok" : "failed";
    const bits = [duration(data.ms)];
    if ((data.attempts ?? 1) > 1) bits.push(`${data.attempts} attempts`);
    if (data.runner) bits.push(data.runner);
    tool.meta.textContent = bits.filter(Boolean).join(" · ");
    const body = ok ? outputText(data.output)
      : `${data.error?.type ?? "error"}: ${data.error?.message ?? ""}`;
    tool.li.append(fold(ok ? "result" : "error", body, { className: ok ? "result" : "result error" }));
    this.#touch(tool.step, ts);
  }

  #approvalRequested(ev, data, ts) {
    let tool = this.tools.get(data.tool_call_id);
    if (!tool) {
      this.#toolCall(ev, data, ts);
      tool = this.tools.get(data.tool_call_id);
    }
    if (tool.approval) return; // asked again by a later attempt: the buttons are there
    tool.li.dataset.approval = "pending";
    tool.status.className = "badge awaiting-approval";
    tool.status.textContent = "awaiting approval";
    const until = new Date(data.expires_at);
    const note = el("span", { class: "muted", text: Number.isNaN(until.getTime()) ? "waits for approval"
      : `waits for approval until ${until.toLocaleString()}` });
    const reason = el("input", { type: "text", class: "approval-reason", maxlength: "1000",
      placeholder: "reason (optional)", "aria-label": `reason for the decision on ${data.name}` });
    const outcome = el("span", { class: "approval-outcome muted", "aria-live": "polite" });
    const decide = async (decision) => {
      for (const button of buttons) button.disabled = true;
      outcome.className = "approval-outcome muted";
      outcome.textContent = decision === "approve" ? "approving…" : "rejecting…";
      try {
        await this.hooks.decide(this.runId, data.tool_call_id, decision, reason.value.trim() || null);
        // The run's tool.approval_decided may have come first: it says how, and stays.
        if (tool.li.dataset.approval === "pending") {
          outcome.textContent = `${decision === "approve" ? "approved" : "rejected"}; the run goes on`;
        }
      } catch (failure) {
        if (tool.li.dataset.approval !== "pending") return;
        outcome.className = "approval-outcome error";
        outcome.textContent = failure.describe ? failure.describe() : String(failure);
        if (failure.status !== 409) for (const button of buttons) button.disabled = false;
      }
    };
    const buttons = [
      el("button", { type: "button", class: "small approve", text: "Approve", onclick: () => decide("approve") }),
      el("button", { type: "button", class: "small danger reject", text: "Reject", onclick: () => decide("reject") }),
    ];
    const box = el("div", { class: "approval", dataset: { toolCallId: data.tool_call_id } },
      note, el("div", { class: "approval-actions" }, reason, ...buttons), outcome);
    tool.li.append(box);
    tool.approval = { box, note, buttons, reason, outcome };
    this.#touch(tool.step, ts);
  }

  #approvalDecided(ev, data, ts) {
    const tool = this.tools.get(data.tool_call_id);
    if (!tool) return;
    tool.li.dataset.approval = data.decision;
    const approved = data.decision === "approved";
    if (tool.li.dataset.ok === undefined) {
      tool.status.className = `badge ${approved ? "running" : "failed"}`;
      tool.status.textContent = approved ? "running" : "rejected";
    }
    const by = data.by === "timeout" ? "by the approval timeout" : "";
    const text = [data.decision, by, data.reason ? `— ${data.reason}` : ""].filter(Boolean).join(" ");
    if (tool.approval) {
      for (const button of tool.approval.buttons) button.remove();
      tool.approval.reason.remove();
      tool.approval.note.remove();
      tool.approval.outcome.className = `approval-outcome ${approved ? "muted" : "error"}`;
      tool.approval.outcome.textContent = text;
    } else {
      tool.li.append(el("div", { class: "approval" }, el("span", { class: "approval-outcome", text })));
    }
    this.#touch(tool.step, ts);
  }

  #retrying(ev, data) {
    const resume = data.resume_step ?? 1;
    for (const step of this.steps.values()) {
      if (step.number >= resume && step.attempt < (ev.env.attempt ?? data.attempt) && step.text) {
        step.text.li.classList.add("superseded");
        step.text.label.textContent = "text (superseded by the retry)";
      }
    }
    this.#row("run.retrying", ev, el("strong", { text: "retrying" }),
      ` attempt ${data.attempt} (${data.reason}); text of step ${resume} onwards is written anew`);
  }

  #memberStarted(ev, data) {
    if (!this.memberGrid) {
      this.memberGrid = el("div", { class: "member-grid" });
      this.#row("members", ev, el("strong", { text: "ensemble members" }), this.memberGrid);
    }
    if (this.members.has(data.run_id)) return;
    const card = new MemberCard(data.member, data.run_id, this.hooks);
    this.members.set(data.run_id, card);
    this.memberGrid.append(card.node);
  }

  #terminal(ev, data, ts) {
    this.status = STATUS_OF[ev.type];
    this.endMs = ts;
    const bits = [duration(data.duration_ms), `${data.steps ?? 0} step${data.steps === 1 ? "" : "s"}`];
    const what = [el("strong", { text: this.status }), ` · ${bits.join(" · ")}`];
    if (data.error) what.push(el("div", { class: "error", text: `${data.error.type}: ${data.error.message}` }));
    else if (this.status !== "completed" && data.reason) what.push(` · ${data.reason}`);
    const usage = usageText(data.usage);
    if (usage) what.push(el("div", { class: "muted", text: usage }));
    this.#row(ev.type, ev, ...what);
    this.parts.usage.textContent = usage;
    // Wall time from queued to the end, as the runs list counts it (duration_ms is the last attempt's).
    this.elapsedMs = Number.isNaN(ts - this.startMs) ? data.duration_ms : ts - this.startMs;
    clearInterval(this.ticker);
    this.ticker = null;
  }

  // -- once per frame

  flush() {
    for (const step of this.dirtySteps) {
      step.dur.data = Number.isNaN(step.end - step.start) ? "" : ` · ${duration(step.end - step.start)}`;
      if (step.text) {
        const text = step.text.sink.text;
        step.text.size.data = ` · ${text.length.toLocaleString("en")} chars · ${excerpt(text, 60)}`;
      }
    }
    this.dirtySteps.clear();
    this.#render();
  }

  #render() {
    const { status, runId, elapsed, count, cancel, list } = this.parts;
    status.textContent = this.status;
    status.className = `badge ${this.status.replace(" ", "-")}`;
    list.dataset.status = this.status;
    list.dataset.events = String(this.count);
    list.dataset.lastEventId = String(this.lastId);
    count.textContent = this.runId ? `${this.count.toLocaleString("en")} events` : "";
    runId.title = this.runId ?? "";
    let ms = NaN;
    if (this.finished && !Number.isNaN(this.elapsedMs ?? NaN)) ms = this.elapsedMs;
    else if (!Number.isNaN(this.startMs)) ms = (Number.isNaN(this.endMs) ? Date.now() : this.endMs) - this.startMs;
    elapsed.textContent = Number.isNaN(ms) ? "" : duration(ms);
    cancel.disabled = !this.runId || this.finished || this.status === "unavailable";
  }
}
