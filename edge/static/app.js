// The page: an API key, an agent, a chat with it, and the run's timeline beside it.
// Everything goes through the edge's own API (README, "HTTP API"); nothing else is fetched.

import { Api, newMessageId } from "./api.js";
import { ChatView } from "./chat.js";
import { AgentEditor } from "./editor.js";
import { markActive, renderRuns } from "./runs.js";
import { RunStream, TERMINAL_TYPES } from "./sse.js";
import { SnapshotWriter, loadSnapshot, prefs, readHash, writeHash } from "./store.js";
import { Timeline } from "./timeline.js";

const $ = (id) => document.getElementById(id);
const ui = {
  keyForm: $("key-form"), key: $("api-key"), notice: $("notice"),
  agent: $("agent"), agentDescription: $("agent-description"), runs: $("runs"), runsRefresh: $("runs-refresh"),
  composer: $("composer"), message: $("message"), send: $("send"), cancel: $("cancel"),
  agentNew: $("agent-new"), agentEdit: $("agent-edit"),
};

const api = new Api(() => prefs.key);
const chat = new ChatView($("exchange"));
const timeline = new Timeline(
  {
    list: $("timeline"), status: $("run-status"), runId: $("run-id"), elapsed: $("run-elapsed"),
    count: $("run-count"), usage: $("run-usage"), cancel: ui.cancel,
  },
  {
    followRun: (runId, handlers) => new RunStream(api, runId, handlers).start(),
    openRun: (runId, agent) => openRun(runId, agent, { resume: false }),
    decide: (runId, toolCallId, decision, reason) => api.post(
      `/api/runs/${encodeURIComponent(runId)}/${decision}`, { tool_call_id: toolCallId, ...(reason ? { reason } : {}) }),
  },
);

let agents = [];
let session = null;

const editor = new AgentEditor($("editor"), api, {
  explain: (failure) => explain(failure),
  onSaved: async (name, saved) => {
    if (saved) prefs.agent = name;
    writeHash({ agent: saved ? name : undefined, run: session?.runId });
    await loadAgents();
    notify(saved ? `Saved agent ${name} (revision ${saved.revision}).` : `Deleted agent ${name}.`, "info");
  },
});

function notify(text, kind = "error") {
  ui.notice.textContent = text;
  ui.notice.className = `notice ${kind}`;
  ui.notice.hidden = !text;
}

function explain(failure) {
  if (failure.status === 401) return `${failure.describe()} — enter this edge's API key above.`;
  return failure.describe();
}

/** The run shown: its stream, and what a reload needs to pick it up where it was. */
class RunSession {
  constructor(runId, agent) {
    this.runId = runId;
    this.agent = agent;
    this.stream = null;
    this.writer = null;
  }

  /** Show the run: saved events first (after a reload), then the stream after the last of them. */
  open({ message = "", resume = true }) {
    timeline.reset(this.runId);
    chat.reset(this.runId, message);
    const snapshot = resume ? loadSnapshot(this.runId) : null;
    this.writer = new SnapshotWriter(this.runId, snapshot);
    if (snapshot?.events.length) this.#show(snapshot.events.map((e) => ({ ...e, env: JSON.parse(e.raw) })));
    if (timeline.finished) return; // its terminal event was saved: nothing more will come
    this.stream = new RunStream(api, this.runId, {
      after: snapshot?.lastId ?? 0,
      onEvents: (batch) => {
        this.#show(batch);
        this.writer.add(batch);
        if (batch.some((e) => e.type === "run.queued" || e.type === "tool.approval_requested"
          || TERMINAL_TYPES.has(e.type))) loadRuns();
      },
      onEnd: (reason, failure) => {
        if (reason !== "error") return;
        timeline.failed(failure);
        chat.failed(failure);
        notify(explain(failure));
      },
    }).start();
  }

  #show(batch) {
    for (const ev of batch) {
      timeline.apply(ev);
      chat.apply(ev);
    }
  }

  close() {
    this.stream?.stop();
    this.writer?.save();
    this.writer?.close();
  }
}

/** Show run `runId` of `agent`; `resume`: pick up after the events saved in this tab, if any. */
function openRun(runId, agent, { message = "", resume = true } = {}) {
  session?.close();
  if (agent && agent !== ui.agent.value && agents.some((a) => a.name === agent)) {
    ui.agent.value = agent;
    agentChanged({ keepRun: true });
  }
  session = new RunSession(runId, agent ?? ui.agent.value);
  writeHash({ agent: session.agent, run: runId });
  markActive(ui.runs, runId);
  session.open({ message, resume });
}

// -- agents and runs

async function loadAgents() {
  try {
    const doc = await api.get("/api/agents");
    agents = doc.items ?? [];
    notify("");
  } catch (failure) {
    agents = [];
    notify(explain(failure));
  }
  const wanted = readHash().agent || prefs.agent;
  ui.agent.replaceChildren(...agents.map((a) => new Option(a.name, a.name)));
  if (agents.some((a) => a.name === wanted)) ui.agent.value = wanted;
  ui.send.disabled = !agents.length;
  ui.agentEdit.disabled = !agents.length;
  agentChanged({ keepRun: true });
  document.body.dataset.agents = String(agents.length);
}

function agentChanged({ keepRun = false } = {}) {
  const agent = agents.find((a) => a.name === ui.agent.value);
  ui.agentDescription.textContent = agent?.description ?? "";
  if (agent) prefs.agent = agent.name;
  if (!keepRun) writeHash({ agent: agent?.name, run: session?.runId });
  loadRuns();
}

let runsAsked = 0;

async function loadRuns() {
  const name = ui.agent.value;
  const asked = ++runsAsked;
  if (!name) {
    ui.runs.replaceChildren();
    return;
  }
  try {
    const doc = await api.get(`/api/agents/${encodeURIComponent(name)}/status?limit=30`);
    if (asked !== runsAsked) return; // a later list was asked for
    renderRuns(ui.runs, doc.runs ?? [], {
      activeRunId: session?.runId,
      onOpen: (run) => openRun(run.run_id, name, { resume: false }),
    });
  } catch (failure) {
    if (asked === runsAsked) ui.runs.replaceChildren();
  }
}

// -- actions

async function send(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  const agent = ui.agent.value;
  if (!text || !agent) return;
  ui.send.disabled = true;
  try {
    const doc = await api.post(`/api/agents/${encodeURIComponent(agent)}/chat`,
      { message: text, message_id: newMessageId() });
    ui.message.value = "";
    notify("");
    openRun(doc.run_id, agent, { message: text, resume: false });
  } catch (failure) {
    notify(explain(failure));
  } finally {
    ui.send.disabled = !agents.length;
  }
}

async function cancel() {
  if (!session) return;
  ui.cancel.disabled = true;
  try {
    await api.post(`/api/runs/${encodeURIComponent(session.runId)}/cancel`, { reason: "cancelled from the web page" });
    notify("Cancelling…", "info");
  } catch (failure) {
    notify(explain(failure));
  }
}

ui.key.value = prefs.key;
ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  prefs.key = ui.key.value;
  loadAgents().then(() => {
    const { run, agent } = readHash();
    if (run && timeline.status === "unavailable") openRun(run, agent);
  });
});
ui.agent.addEventListener("change", () => agentChanged());
ui.agentNew.addEventListener("click", () => editor.create());
ui.agentEdit.addEventListener("click", () => ui.agent.value && editor.edit(ui.agent.value));
ui.runsRefresh.addEventListener("click", () => loadRuns());
ui.composer.addEventListener("submit", send);
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault(); // Enter sends, Shift+Enter starts a new line
    ui.composer.requestSubmit();
  }
});
ui.cancel.addEventListener("click", cancel);
window.addEventListener("hashchange", () => {
  const { run, agent } = readHash();
  if (run && run !== session?.runId) openRun(run, agent);
});
window.addEventListener("pagehide", () => session?.writer?.save());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") session?.writer?.save();
});

await loadAgents();
const initial = readHash();
if (initial.run) openRun(initial.run, initial.agent);
document.body.dataset.ready = "true";
