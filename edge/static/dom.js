// Small DOM helpers. No innerHTML anywhere: every text goes in as text, so nothing an agent,
// a tool or a user writes can become markup (and the page's CSP allows no inline script anyway).

/**
 * Create an element. `props`: `class`, `text`, `on<event>` handlers, `dataset` (object), any
 * other key becomes an attribute (true: present, false/null: absent). Children: nodes or strings.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const FOLD_CHARS = 400;
const FOLD_LINES = 8;

/**
 * A foldable block: `<details>` with `label` as its summary and `text` in a `<pre>`. Open when the
 * text is short (FOLD_CHARS characters, FOLD_LINES lines); a click on the summary unfolds it.
 */
export function fold(label, text, { className = "" } = {}) {
  const lines = text.split("\n").length;
  const long = text.length > FOLD_CHARS || lines > FOLD_LINES;
  const size = long ? ` · ${lines > 1 ? `${lines} lines, ` : ""}${text.length.toLocaleString("en")} chars` : "";
  return el("details", { class: `fold ${className}`.trim(), open: !long, dataset: { long: String(long) } },
    el("summary", {}, el("span", { class: "fold-label", text: label }), el("span", { class: "muted", text: size })),
    el("pre", { class: "fold-body", text }));
}
