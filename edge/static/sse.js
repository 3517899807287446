// Following a run's events: `GET /api/runs/{id}/events` read with fetch() and a stream reader, so
// the key travels in the Authorization header (never in a URL), and resumed after a drop with
// `Last-Event-ID` (README, HTTP API). Parsing follows WHATWG HTML §9.2.6 ("Interpreting an event
// stream"): lines end with CRLF, LF or CR; `:` starts a comment; `data` lines join with "\n";
// a blank line dispatches; an `id` containing NUL is ignored.

import { ApiFailure } from "./api.js";

export const TERMINAL_TYPES = new Set(["run.completed", "run.failed", "run.cancelled"]);

/** An incremental event-stream parser: `feed(text)` returns the events completed by `text`. */
export class SSEParser {
  constructor() {
    this.rest = "";
    this.skipLF = false; // the last chunk ended with CR: a LF starting the next one belongs to it
    this.data = [];
    this.type = "";
    this.lastEventId = "";
  }

  /** Events completed by this chunk: `[{id, event, data}]` (`event` defaults to "message"). */
  feed(chunk) {
    const out = [];
    let text = this.rest + chunk;
    if (this.skipLF && text.startsWith("\n")) text = text.slice(1);
    this.skipLF = false;
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.#line(text.slice(start, i), out);
      if (c === 13) {
        if (i + 1 === text.length) this.skipLF = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.rest = text.slice(start);
    return out;
  }

  #line(line, out) {
    if (line === "") {
      if (this.data.length) {
        out.push({ id: this.lastEventId, event: this.type || "message", data: this.data.join("\n") });
      }
      this.data = [];
      this.type = "";
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" comment (heartbeats)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One run's events, live. Callbacks: `onEvents(batch)` with `[{id, type, env, raw}]` (`env`: the
 * parsed envelope, `raw`: its JSON text; ids strictly increasing, never one twice), `onState(s)`
 * with "connecting" | "live" | "reconnecting", `onEnd(reason, failure)` once: "terminal" (the
 * terminal event arrived), "done" (204: it had already been delivered), "error" (a refusal,
 * with its ApiFailure) or "stopped".
 */
export class RunStream {
  constructor(api, runId, { after = 0, onEvents, onState = () => {}, onEnd = () => {} }) {
    this.api = api;
    this.runId = runId;
    this.after = after;
    this.onEvents = onEvents;
    this.onState = onState;
    this.onEnd = onEnd;
    this.controller = new AbortController();
    this.ended = false;
  }

  start() {
    this.#loop().catch((err) => this.#end("error", new ApiFailure(0, "client_error", String(err))));
    return this;
  }

  stop() {
    this.controller.abort();
    this.#end("stopped");
  }

  #end(reason, failure = null) {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(reason, failure);
  }

  async #loop() {
    let backoff = 500;
    while (!this.ended) {
      const headers = this.api.headers({ Accept: "text/event-stream" });
      if (this.after) headers["Last-Event-ID"] = String(this.after);
      this.onState(this.after ? "reconnecting" : "connecting");
      let response;
      try {
        response = await fetch(`/api/runs/${encodeURIComponent(this.runId)}/events`, {
          headers, cache: "no-store", signal: this.controller.signal,
        });
      } catch {
        if (this.ended) return;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
        continue;
      }
      if (response.status === 204) return this.#end("done");
      if (!response.ok) {
        const failure = await ApiFailure.from(response);
        if (response.status !== 429 && response.status < 500) return this.#end("error", failure);
        await sleep((failure.retryAfter ?? 1) * 1000);
        continue;
      }
      this.onState("live");
      backoff = 500;
      if (await this.#read(response)) return this.#end("terminal");
      if (!this.ended) await sleep(backoff);
    }
  }

  /** Read one response; true once the terminal event arrived, false when it dropped. */
  async #read(response) {
    const parser = new SSEParser();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        return false; // dropped: the caller reconnects after `this.after`
      }
      if (chunk.done || this.ended) return false;
      const batch = [];
      let terminal = false;
      for (const frame of parser.feed(chunk.value)) {
        const id = Number(frame.id);
        if (!(id > this.after)) continue; // already delivered: never shown twice
        let env;
        try {
          env = JSON.parse(frame.data);
        } catch {
          continue;
        }
        this.after = id;
        batch.push({ id, type: frame.event, env, raw: frame.data });
        terminal ||= TERMINAL_TYPES.has(frame.event);
      }
      if (batch.length) this.onEvents(batch);
      if (terminal) {
        reader.cancel().catch(() => {});
        return true;
      }
    }
  }
}
