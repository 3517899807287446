// The agent editor: create, change and delete the tenant's own agents (see the README's section
// on agents over the API). The edge checks every write; its refusal names the fields at fault (`{"error": {"field",
// "errors": [{"field", "reason"}]}}`), and each reason is shown at its field's input. A field the
// form has no input for (one only YAML can set) is shown above the buttons, with its name.

import { el } from "./dom.js";

/** The form's fields: `path` is the field's name in the agent document (and in the edge's errors). */
const FIELDS = [
  { path: "name", label: "Name", kind: "text", hint: "1 to 64 of A-Z a-z 0-9 _ -" },
  { path: "description", label: "Description", kind: "text" },
  { path: "model", label: "Model", kind: "text", hint: "empty: the edge's LLM_MODEL" },
  { path: "system_prompt", label: "System prompt", kind: "textarea" },
  { path: "actions", label: "Tools", kind: "list", hint: "comma-separated: read_file, list_dir, http_request" },
  { path: "skills", label: "Skills", kind: "list", hint: "comma-separated skill names (AGENTS_DIR/skills)" },
  { path: "max_steps", label: "Max steps", kind: "number", hint: "model calls per run" },
  { path: "timeout", label: "Timeout", kind: "number", hint: "seconds per run" },
  { path: "llm.base_url", label: "Model server", kind: "text", hint: "empty: the edge's; others only if the operator lists them" },
  { path: "llm.api_key_env", label: "Key variable", kind: "text", hint: "the NAME of the runners' variable holding the key" },
];

const inputId = (path) => `ed-${path.replace(/[^a-z0-9]+/gi, "-")}`;

function read(doc, path) {
  return path.split(".").reduce((value, part) => (value && typeof value === "object" ? value[part] : undefined), doc);
}

function write(doc, path, value) {
  const parts = path.split(".");
  const last = parts.pop();
  let node = doc;
  for (const part of parts) {
    if (value === undefined && (node[part] === undefined || node[part] === null)) return;
    if (typeof node[part] !== "object" || node[part] === null) node[part] = {};
    node = node[part];
  }
  if (value === undefined) delete node[last];
  else node[last] = value;
  if (parts.length && value === undefined && !Object.keys(node).length) delete doc[parts[0]]; // an emptied `llm`
}

/** The field of FIELDS an error's `field` names: itself, or the one it lies under (`actions.0`). */
function fieldOf(name) {
  if (!name) return null;
  return FIELDS.find((f) => name === f.path || name.startsWith(`${f.path}.`)) ?? null;
}

export class AgentEditor {
  /**
   * `dialog`: an empty `<dialog>`; `api`: the page's Api; `onSaved(name, doc)` after a write (doc:
   * the edge's answer, or null after a delete); `explain(failure)`: the page's wording of a failure.
   */
  constructor(dialog, api, { onSaved, explain }) {
    this.dialog = dialog;
    this.api = api;
    this.onSaved = onSaved;
    this.explain = explain;
    this.original = {};
    this.editing = null;
    this.inputs = new Map();
    this.errors = new Map();
    this.#build();
  }

  #build() {
    this.title = el("h2", { id: "editor-title" });
    this.note = el("p", { class: "hint", id: "editor-note" });
    const rows = FIELDS.map((field) => {
      const id = inputId(field.path);
      const input = field.kind === "textarea"
        ? el("textarea", { id, name: field.path, rows: 4, spellcheck: "false" })
        : el("input", {
          id, name: field.path, spellcheck: "false", autocomplete: "off",
          type: "text", inputmode: field.kind === "number" ? "decimal" : null,
        });
      const error = el("p", { class: "field-error", id: `${id}-error`, role: "alert", hidden: true });
      const hint = field.hint ? el("span", { class: "hint", id: `${id}-hint`, text: field.hint }) : null;
      input.setAttribute("aria-describedby", [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(" "));
      this.inputs.set(field.path, input);
      this.errors.set(field.path, error);
      return el("div", { class: "field", dataset: { field: field.path } },
        el("label", { for: id, text: field.label }), input, hint, error);
    });
    this.general = el("p", { class: "field-error", id: "editor-error", role: "alert", hidden: true });
    this.save = el("button", { type: "submit", id: "editor-save", text: "Save" });
    this.remove = el("button", { type: "button", id: "editor-delete", class: "danger", text: "Delete",
      onclick: () => this.#delete() });
    const close = el("button", { type: "button", id: "editor-close", text: "Close", onclick: () => this.close() });
    this.form = el("form", { id: "editor-form", class: "editor", novalidate: true, onsubmit: (e) => this.#submit(e) },
      this.title, this.note, ...rows, this.general, el("div", { class: "editor-buttons" }, this.save, close, this.remove));
    this.dialog.replaceChildren(this.form);
    this.dialog.setAttribute("aria-labelledby", "editor-title");
  }

  /** Open the editor for a new agent. */
  create() {
    this.#open(null, {}, "New agent", "Saved in NATS for your tenant; every edge and agent runner serves it at once.");
  }

  /** Open the editor for the tenant's agent `name` (a file agent: saving makes the tenant's own copy). */
  async edit(name) {
    let view;
    try {
      view = await this.api.get(`/api/agents/${encodeURIComponent(name)}`);
    } catch (failure) {
      this.#open(name, { name }, `Agent ${name}`, "");
      this.#showGeneral(this.explain(failure));
      return;
    }
    const note = view.source === "file"
      ? "From the agents directory (AGENTS_DIR): saving makes your tenant's own copy, which then replaces it for you."
      : `Your own agent, revision ${view.revision}. Saving stores a new revision.`;
    this.#open(name, view.definition ?? { name }, `Agent ${name}`, note, view.source === "api");
  }

  close() {
    this.dialog.close();
  }

  #open(name, doc, title, note, deletable = false) {
    this.editing = name;
    this.original = structuredClone(doc);
    this.title.textContent = title;
    this.note.textContent = note;
    for (const field of FIELDS) {
      const value = read(doc, field.path);
      this.inputs.get(field.path).value = Array.isArray(value) ? value.join(", ") : (value ?? "");
    }
    this.inputs.get("name").readOnly = name !== null; // the URL names it; PUT cannot rename
    this.remove.hidden = !deletable;
    this.remove.textContent = "Delete";
    this.#clearErrors();
    if (!this.dialog.open) this.dialog.showModal();
    this.inputs.get(name === null ? "name" : "description").focus();
  }

  /** The document to send: the agent as loaded, with the form's fields over it (empty: unset). */
  #document() {
    const doc = structuredClone(this.original);
    for (const field of FIELDS) {
      const raw = this.inputs.get(field.path).value;
      let value = field.kind === "textarea" ? raw : raw.trim();
      if (!value.trim()) value = undefined;
      else if (field.kind === "list") value = value.split(",").map((v) => v.trim()).filter(Boolean);
      else if (field.kind === "number" && /^-?\d+(\.\d+)?$/.test(value)) value = Number(value);
      // anything else goes as typed: the edge says what is wrong with it, at its field
      write(doc, field.path, value);
    }
    return doc;
  }

  async #submit(event) {
    event.preventDefault();
    this.#clearErrors();
    const doc = this.#document();
    this.save.disabled = true;
    try {
      const saved = this.editing === null
        ? await this.api.post("/api/agents", doc)
        : await this.api.put(`/api/agents/${encodeURIComponent(this.editing)}`, doc);
      this.close();
      this.onSaved(saved.name, saved);
    } catch (failure) {
      this.#showFailure(failure);
    } finally {
      this.save.disabled = false;
    }
  }

  async #delete() {
    if (this.remove.textContent === "Delete") {
      this.remove.textContent = "Really delete?"; // a second click deletes (its revisions stay, for rollback)
      return;
    }
    this.#clearErrors();
    try {
      await this.api.delete(`/api/agents/${encodeURIComponent(this.editing)}`);
      this.close();
      this.onSaved(this.editing, null);
    } catch (failure) {
      this.remove.textContent = "Delete";
      this.#showFailure(failure);
    }
  }

  /** Each of the refusal's errors at its field's input; the rest above the buttons. */
  #showFailure(failure) {
    const listed = failure.errors?.length ? failure.errors : [{ field: failure.field, reason: failure.message }];
    const elsewhere = [];
    let first = null;
    for (const error of listed) {
      const field = failure.status ? fieldOf(error.field) : null;
      if (field === null) {
        elsewhere.push(error.field ? `${error.field}: ${error.reason}` : error.reason);
        continue;
      }
      const input = this.inputs.get(field.path);
      const box = this.errors.get(field.path);
      input.setAttribute("aria-invalid", "true");
      box.textContent = box.hidden ? error.reason : `${box.textContent}; ${error.reason}`;
      box.hidden = false;
      first ??= input;
    }
    if (elsewhere.length) {
      this.#showGeneral(failure.status && failure.status !== 401 ? `HTTP ${failure.status}: ${elsewhere.join("; ")}`
        : this.explain(failure));
    }
    (first ?? this.save).focus();
  }

  #showGeneral(text) {
    this.general.textContent = text;
    this.general.hidden = false;
  }

  #clearErrors() {
    for (const [path, box] of this.errors) {
      box.hidden = true;
      box.textContent = "";
      this.inputs.get(path).removeAttribute("aria-invalid");
    }
    this.general.hidden = true;
    this.general.textContent = "";
  }
}
