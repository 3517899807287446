// Formatting of durations, timestamps, JSON and tool outputs for display.

/** A duration in milliseconds as people read it: "840 ms", "2.35 s", "14.2 s", "3 min 05 s". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.floor((ms % 60_000) / 1000);
  return `${minutes} min ${String(seconds).padStart(2, "0")} s`;
}

/** An event's ISO 8601 `ts` in epoch milliseconds (NaN when absent or unreadable). */
export function tsMs(ts) {
  return ts ? Date.parse(ts) : NaN;
}

/** A local clock time ("14:03:27") for an ISO 8601 timestamp; "" when absent. */
export function clock(ts) {
  const ms = tsMs(ts);
  if (Number.isNaN(ms)) return "";
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** Tool-call arguments (JSON text as the model wrote it) pretty-printed; the text itself if not JSON. */
export function prettyArguments(text) {
  try {
    const value = JSON.parse(text);
    const compact = JSON.stringify(value);
    return compact.length <= 80 ? compact : JSON.stringify(value, null, 2);
  } catch {
    return String(text ?? "");
  }
}

/**
 * A tool's output as readable text: an object's short fields as `key: value` lines, then its long
 * or multi-line strings (a file's content, a response body) as they are, under their key.
 */
export function outputText(output) {
  if (output === null || typeof output !== "object" || Array.isArray(output)) {
    return typeof output === "string" ? output : JSON.stringify(output, null, 2);
  }
  const short = [];
  const long = [];
  for (const [key, value] of Object.entries(output)) {
    if (typeof value === "string" && (value.includes("\n") || value.length > 120)) long.push(`${key}:\n${value}`);
    else if (value !== null && typeof value === "object") long.push(`${key}:\n${JSON.stringify(value, null, 2)}`);
    else short.push(`${key}: ${value}`);
  }
  return [...short, ...long].join("\n");
}

/** Token usage as "12 prompt + 34 completion = 46 tokens"; "" when absent. */
export function usageText(usage) {
  if (!usage || usage.total_tokens === undefined) return "";
  const n = (x) => Number(x ?? 0).toLocaleString("en");
  return `${n(usage.prompt_tokens)} prompt + ${n(usage.completion_tokens)} completion = ${n(usage.total_tokens)} tokens`;
}

/** The first `n` characters of `text` on one line, with an ellipsis when cut. */
export function excerpt(text, n = 80) {
  const line = String(text ?? "").replace(/\s+/g, " ").trim();
  return line.length > n ? `${line.slice(0, n - 1)}…` : line;
}
