// What the page remembers. The API key and the chosen agent: localStorage (this browser). The run
// shown: the URL's hash (`#agent=NAME&run=ID`, so a run can be linked and a reload reopens it).
// The events shown so far and the last event id: sessionStorage (this tab), so a reload renders
// them again without the network and resumes the stream after them with `Last-Event-ID`.

const KEY = "agentstream.apiKey";
const AGENT = "agentstream.agent";
const SNAPSHOT = "agentstream.run";
const SNAPSHOT_MAX_CHARS = 2_000_000; // larger runs are replayed from the start after a reload

function get(storage, name) {
  try {
    return storage.getItem(name);
  } catch {
    return null; // storage disabled
  }
}

function put(storage, name, value) {
  try {
    if (value === null || value === "") storage.removeItem(name);
    else storage.setItem(name, value);
    return true;
  } catch {
    return false; // quota exceeded or storage disabled
  }
}

export const prefs = {
  get key() { return get(localStorage, KEY) ?? ""; },
  set key(value) { put(localStorage, KEY, value.trim()); },
  get agent() { return get(localStorage, AGENT) ?? ""; },
  set agent(value) { put(localStorage, AGENT, value); },
};

/** The hash's `{agent, run}` (each null when absent). */
export function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  return { agent: params.get("agent"), run: params.get("run") };
}

/** Set the hash without a `hashchange` event (the page made the change itself). */
export function writeHash({ agent, run }) {
  const params = new URLSearchParams();
  if (agent) params.set("agent", agent);
  if (run) params.set("run", run);
  const hash = params.toString();
  history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
}

/** The saved events of run `runId`: `{lastId, events: [{id, type, raw}]}`, or null. */
export function loadSnapshot(runId) {
  try {
    const doc = JSON.parse(get(sessionStorage, SNAPSHOT) ?? "null");
    if (!doc || doc.runId !== runId || !Array.isArray(doc.events)) return null;
    return { lastId: doc.lastId, events: doc.events.map(([id, type, raw]) => ({ id, type, raw })) };
  } catch {
    return null;
  }
}

/**
 * The run's events as shown, written to sessionStorage at most every 250 ms and when the page is
 * hidden or left. The events and their last id are written together, so a reload never skips or
 * repeats one; a run too large to keep is stored as "start over" (last id 0).
 */
export class SnapshotWriter {
  constructor(runId, snapshot = null) {
    this.runId = runId;
    this.events = snapshot ? snapshot.events.map((e) => [e.id, e.type, e.raw]) : [];
    this.lastId = snapshot?.lastId ?? 0;
    this.chars = this.events.reduce((n, e) => n + e[2].length + 32, 0);
    this.timer = null;
    this.closed = false;
  }

  add(batch) {
    if (this.closed) return;
    for (const ev of batch) {
      this.events.push([ev.id, ev.type, ev.raw]);
      this.chars += ev.raw.length + 32;
      this.lastId = ev.id;
    }
    this.timer ??= setTimeout(() => this.save(), 250);
  }

  save() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.closed) return;
    const fits = this.chars <= SNAPSHOT_MAX_CHARS;
    const doc = { runId: this.runId, lastId: fits ? this.lastId : 0, events: fits ? this.events : [] };
    if (!put(sessionStorage, SNAPSHOT, JSON.stringify(doc))) put(sessionStorage, SNAPSHOT, null);
  }

  /** Stop writing (another run is shown now). */
  close() {
    clearTimeout(this.timer);
    this.closed = true;
  }
}
