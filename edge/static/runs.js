// The runs list of one agent (`GET /api/agents/{name}/status`, its `runs`): status, question,
// duration and start time; a click opens the run's timeline.

import { el } from "./dom.js";
import { clock, duration, excerpt, tsMs } from "./format.js";

/** Replace the list's items with `runs` (newest first). `onOpen(run)` on a click. */
export function renderRuns(list, runs, { activeRunId, onOpen }) {
  const items = runs.map((run) => {
    const ms = tsMs(run.finished_at) - tsMs(run.created_at);
    const took = Number.isNaN(ms) ? "" : duration(ms);
    return el("li", {},
      el("button", {
        type: "button",
        class: `run-item${run.run_id === activeRunId ? " active" : ""}`,
        dataset: { runId: run.run_id, status: run.status },
        title: `run ${run.run_id}`,
        onclick: () => onOpen(run),
      },
      el("span", { class: `badge ${run.status.replace("_", "-")}`, text: run.status.replace("_", " ") }),
      el("span", { class: "run-msg", text: excerpt(run.message, 70) || "(no message)" }),
      el("span", { class: "muted run-meta", text: [took, clock(run.created_at)].filter(Boolean).join(" · ") })));
  });
  if (!items.length) items.push(el("li", { class: "hint", text: "No runs yet." }));
  list.replaceChildren(...items);
}

/** Mark the item of `runId` as the one shown. */
export function markActive(list, runId) {
  for (const button of list.querySelectorAll(".run-item")) {
    button.classList.toggle("active", button.dataset.runId === runId);
  }
}
