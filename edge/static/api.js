// The edge's HTTP API, from the page: same origin, the caller's key as `Authorization: Bearer`
// (README, "Tenants and keys"), JSON bodies, errors as ApiFailure.

/**
 * A refused request: `status`, and the edge's `{"error": {"message", "type", "field"}}` fields;
 * `errors`: the error's list of `{field, reason}` when it has one (a refused agent: every field at
 * fault, README "Agents over the API"), else empty.
 */
export class ApiFailure extends Error {
  constructor(status, type, message, field = null, retryAfter = null, errors = []) {
    super(message);
    this.status = status;
    this.type = type;
    this.field = field;
    this.retryAfter = retryAfter;
    this.errors = errors;
  }

  /** The failure a non-2xx response describes (its JSON error body, else its status line). */
  static async from(response) {
    const retry = Number(response.headers.get("Retry-After")) || null;
    let error = {};
    try {
      error = (await response.json()).error ?? {};
    } catch {
      // not JSON: a proxy's page, say
    }
    const message = error.message ?? `${response.status} ${response.statusText}`;
    const errors = Array.isArray(error.errors) ? error.errors : [];
    return new ApiFailure(response.status, error.type ?? "http_error", message, error.field ?? null, retry, errors);
  }

  /** One line for the page: "HTTP 404: no run 'x' (run_id)". */
  describe() {
    const field = this.field ? ` (${this.field})` : "";
    return this.status ? `HTTP ${this.status}: ${this.message}${field}` : this.message;
  }
}

export class Api {
  /** `key()`: the API key to send, or "" to send none (an edge without KEYS_FILE needs none). */
  constructor(key) {
    this.key = key;
  }

  /** The request headers carrying the key, if any. */
  headers(extra = {}) {
    const key = this.key();
    return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
  }

  /** GET a JSON document. Raises ApiFailure (status 0 when the edge is unreachable). */
  async get(path) {
    return this.#send(path, { method: "GET" });
  }

  /** POST a JSON body; returns the JSON answer. Raises ApiFailure. */
  async post(path, body = {}) {
    return this.#send(path, {
      method: "POST",
      body: JSON.stringify(body),
      contentType: "application/json",
    });
  }

  /** PUT a JSON body; returns the JSON answer. Raises ApiFailure. */
  async put(path, body) {
    return this.#send(path, { method: "PUT", body: JSON.stringify(body), contentType: "application/json" });
  }

  /** DELETE; returns the JSON answer. Raises ApiFailure. */
  async delete(path) {
    return this.#send(path, { method: "DELETE" });
  }

  async #send(path, { method, body, contentType }) {
    let response;
    try {
      response = await fetch(path, {
        method,
        body,
        cache: "no-store",
        headers: this.headers(contentType ? { "Content-Type": contentType } : {}),
      });
    } catch (err) {
      throw new ApiFailure(0, "unreachable", `the edge did not answer (${err.message})`);
    }
    if (!response.ok) throw await ApiFailure.from(response);
    return response.json();
  }
}

/** A fresh message id for an idempotent submit (any printable text; README, HTTP API). */
export function newMessageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // works on plain http too
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
