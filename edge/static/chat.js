// The chat pane: the question and the agent's answer, streamed in as `message.delta` events come.
// Each step's text is its own block, so a retry (`run.retrying`) can drop exactly the text it
// supersedes (README, "Run events").

import { el } from "./dom.js";
import { duration } from "./format.js";
import { TextSink, schedule } from "./scheduler.js";
import { TERMINAL_TYPES } from "./sse.js";

export class ChatView {
  constructor(root) {
    this.root = root;
  }

  /** Show run `runId`; `message`: the question, when known before the run's first event. */
  reset(runId, message = "") {
    this.steps = new Map();
    this.user = el("div", { class: "msg user", text: message, hidden: !message });
    this.answer = el("div", { class: "msg agent streaming", dataset: { runId, status: "running" } });
    this.status = el("p", { class: "chat-status muted", "aria-live": "polite" });
    this.root.replaceChildren(this.user, this.answer, this.status);
  }

  /** Show the run's refusal instead of an answer. */
  failed(failure) {
    this.answer.classList.remove("streaming");
    this.answer.hidden = true;
    this.status.textContent = failure.describe();
    this.status.className = "chat-status error";
  }

  /** Add one event (`{type, env}`). */
  apply({ type, env }) {
    const data = env.data ?? {};
    if (type === "run.queued") {
      this.user.textContent = data.message ?? "";
      this.user.hidden = false;
    } else if (type === "message.delta") {
      this.#step(data.step).sink.append(data.text);
      schedule(this);
    } else if (type === "run.retrying") {
      for (const [number, step] of this.steps) {
        if (number >= (data.resume_step ?? 1)) {
          step.node.remove();
          this.steps.delete(number);
        }
      }
    } else if (type === "tool.approval_requested") {
      this.status.textContent = `waiting for approval of ${data.name} (Approve or Reject it in the timeline)`;
      this.status.className = "chat-status muted";
    } else if (type === "run.started") {
      this.status.textContent = "";
    } else if (type === "message.completed" && data.finish_reason !== "tool_calls") {
      const step = this.#step(data.steps);
      if (step.sink.text !== data.text) step.sink.set(data.text ?? ""); // the stored answer wins
    } else if (TERMINAL_TYPES.has(type)) {
      const status = type.slice("run.".length);
      this.answer.classList.remove("streaming");
      this.answer.dataset.status = status;
      let line = `${status} in ${duration(data.duration_ms)}`;
      if (data.error) line += ` — ${data.error.type}: ${data.error.message}`;
      else if (status !== "completed" && data.reason) line += ` — ${data.reason}`;
      this.status.textContent = line;
      this.status.className = `chat-status ${status === "completed" ? "muted" : "error"}`;
    }
  }

  #step(number) {
    let step = this.steps.get(number);
    if (!step) {
      const node = el("div", { class: "step-text", dataset: { step: number } });
      // Steps arrive in order; one resumed after a retry goes back in its place.
      const later = [...this.steps.entries()].find(([n]) => n > number);
      this.answer.insertBefore(node, later ? later[1].node : null);
      step = { node, sink: new TextSink(node) };
      this.steps.set(number, step);
    }
    return step;
  }

  /** Once per frame while text streams: keep the newest text in view if the reader is at the end. */
  flush() {
    const pane = this.root;
    if (pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80) pane.scrollTop = pane.scrollHeight;
  }
}
