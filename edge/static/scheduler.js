// Coalesced DOM updates: event handlers record what changed and `schedule()` the owner; every
// owner's `flush()` runs once per animation frame, however many events arrived in between (a
// 1,000-event run touches the DOM a few dozen times, not a thousand). A timer backs the frame up,
// since hidden tabs get no animation frames.

const dirty = new Set();
let queued = false;

function run() {
  if (!queued) return;
  queued = false;
  const owners = [...dirty];
  dirty.clear();
  for (const owner of owners) owner.flush();
}

/** Have `owner.flush()` called once, on the next frame (or within 100 ms). */
export function schedule(owner) {
  dirty.add(owner);
  if (queued) return;
  queued = true;
  requestAnimationFrame(run);
  setTimeout(run, 100);
}

/** Run every pending flush now. */
export function flushNow() {
  queued = true;
  run();
}

/**
 * Text that grows by fragments (streamed deltas) inside `parent`: `append()` only records the
 * fragment; the frame's flush adds all fragments to one text node with one `appendData`.
 */
export class TextSink {
  constructor(parent) {
    this.text = "";
    this.pending = "";
    this.node = document.createTextNode("");
    parent.append(this.node);
  }

  append(fragment) {
    if (!fragment) return;
    this.text += fragment;
    this.pending += fragment;
    schedule(this);
  }

  /** Replace the whole text at once (the stored answer, when it differs from the deltas). */
  set(text) {
    this.text = text;
    this.pending = "";
    this.node.data = text;
  }

  flush() {
    if (!this.pending) return;
    this.node.appendData(this.pending);
    this.pending = "";
  }
}
