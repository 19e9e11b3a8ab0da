// The status page: polls /api/v1/wal/namespaces every 2 s, keeps 5 minutes of each
// namespace's counters to draw its write and delivery rates, and shows one namespace
// (targets, recent messages, the DLQ with replay) at #/ns/<name>. The admin key, asked
// for only by the namespace view, stays in this tab's session storage.
"use strict";

const POLL_MS = 2000;
const KEEP = 150; // samples: 5 minutes at 2 s
const history = new Map(); // namespace -> [{t, accepted, delivered}]
let latest = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const adminKey = () => sessionStorage.getItem("wald-admin-key") || "";

async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  if (options.admin) headers.Authorization = "Bearer " + adminKey();
  const response = await fetch(path, { method: options.method || "GET", headers, body: options.body });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    throw Object.assign(new Error(message), { status: response.status, code: body.error && body.error.code });
  }
  return body;
}

function delivered(ns) {
  const group = (ns.consumer_groups || []).find((g) => g.group === "wald");
  return group ? group.next_offset : 0;
}

function record(data) {
  const t = Date.now() / 1000;
  for (const ns of data.namespaces) {
    const points = history.get(ns.namespace) || [];
    points.push({ t, accepted: ns.writes.accepted_messages, delivered: delivered(ns) });
    if (points.length > KEEP) points.shift();
    history.set(ns.namespace, points);
  }
}

// Rates between consecutive samples, per second.
function rates(name, field) {
  const points = history.get(name) || [];
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const dt = points[i].t - points[i - 1].t;
    out.push(dt > 0 ? Math.max(0, points[i][field] - points[i - 1][field]) / dt : 0);
  }
  return out;
}

function spark(values, kind, label) {
  const w = 100, h = 24;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (KEEP - 1) : 0;
  const start = w - step * (values.length - 1);
  const points = values.map((v, i) => `${(start + i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark " + kind);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  return svg;
}

function rateCell(name, field, kind) {
  const values = rates(name, field);
  const now = values.length ? values[values.length - 1] : 0;
  const text = now >= 10 ? now.toFixed(0) : now.toFixed(1);
  return el("td", { class: "num" },
    el("div", { class: "rate" },
      spark(values, kind, `${kind} per second over the last ${Math.round(values.length * POLL_MS / 1000)} s, now ${text}`),
      el("span", { "data-field": kind + "-rate" }, text)));
}

const badge = (state) => el("span", { class: "badge " + state }, state);
const when = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");

function lag(ns) {
  const group = (ns.consumer_groups || []).find((g) => g.group === "wald");
  return group ? group.lag : "";
}

// The background parts of a namespace that are not running (see api.md, "Namespace
// status"), each as "name: error".
function failingParts(ns) {
  return Object.entries(ns.components || {})
    .filter(([, c]) => c.state !== "running")
    .map(([name, c]) => `${name} ${c.state}: ${c.error || ""}`);
}

function failingTargets(ns) {
  return (ns.targets || []).filter((t) => t.delivery.last_error_at_ms && t.delivery.last_error_at_ms > Date.now() - 5 * 60 * 1000);
}

function renderSummary(data) {
  const parts = [`generation ${data.generation}`, `${data.namespaces.length} namespaces`];
  const summary = document.getElementById("summary");
  summary.replaceChildren(parts.join(" · "));
  const reload = data.last_reload;
  if (reload) {
    summary.append(" · last reload ", badge(reload.result), ` at ${new Date(reload.finished_at).toLocaleTimeString()}`);
    const problems = [
      ...reload.blocked_by.map((b) => `${b.file}: ${b.message}`),
      ...reload.failed.map((f) => `${f.namespace}: ${f.error}`),
    ];
    if (problems.length) summary.append(" ", el("span", { class: "error-text" }, problems.join("; ")));
  }
}

function renderOverview(data) {
  const rows = data.namespaces.map((ns) => {
    const failing = failingTargets(ns);
    const error = ns.error || ns.delivery_error || failingParts(ns)[0] || (failing[0] && `${failing[0].name}: ${failing[0].delivery.last_error}`) || "";
    return el("tr", { "data-namespace": ns.namespace },
      el("th", { scope: "row" }, el("a", { href: `#/ns/${encodeURIComponent(ns.namespace)}` }, ns.namespace)),
      el("td", {}, badge(quarantinedNames(data).has(ns.namespace) && ns.state === "running" ? "quarantined" : ns.state)),
      el("td", { class: "wide" }, ns.backend),
      el("td", { class: "num", "data-field": "accepted" }, ns.writes.accepted_messages),
      rateCell(ns.namespace, "accepted", "writes"),
      rateCell(ns.namespace, "delivered", "delivered"),
      el("td", { class: "num", "data-field": "lag" }, lag(ns)),
      el("td", { class: "num", "data-field": "dlq" }, ns.dlq_depth ?? ""),
      el("td", { class: "wide", "data-field": "targets" }, failing.length ? el("span", { class: "error" }, `${failing.length} of ${ns.targets.length} failing`) : `${(ns.targets || []).length} ok`),
      el("td", { class: "error-text wide" }, error));
  });
  const table = el("div", { class: "table-wrap" }, el("table", { "aria-labelledby": "namespaces-title" },
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Namespace"), el("th", { scope: "col" }, "State"),
      el("th", { scope: "col", class: "wide" }, "Backend"), el("th", { scope: "col", class: "num" }, "Written"),
      el("th", { scope: "col", class: "num" }, "Writes/s"), el("th", { scope: "col", class: "num" }, "Delivered/s"),
      el("th", { scope: "col", class: "num" }, "Lag"), el("th", { scope: "col", class: "num" }, "DLQ"),
      el("th", { scope: "col", class: "wide" }, "Targets"), el("th", { scope: "col", class: "wide" }, "Last error"))),
    el("tbody", {}, rows)));
  const parts = [el("h2", { id: "namespaces-title" }, "Namespaces"), table];
  if (data.quarantined.length) {
    parts.push(el("h2", {}, "Files with errors"), el("ul", {}, data.quarantined.map((q) => el("li", {},
      el("code", {}, q.file), q.error ? `:${q.error.line ?? ""}:${q.error.column ?? ""} ` : " ",
      el("span", { class: "error-text" }, q.error ? `${q.error.code}: ${q.error.message}` : ""),
      q.keeps_running ? el("span", { class: "muted" }, ` (${q.namespace} runs on its last good configuration)`) : null))));
  }
  return parts;
}

function quarantinedNames(data) {
  return new Set(data.quarantined.filter((q) => q.keeps_running).map((q) => q.namespace));
}

// The namespace view's admin part is loaded when asked, not on every poll.
const view = { name: null, admin: null, outcome: "" };

function renderNamespace(data, name) {
  const ns = data.namespaces.find((n) => n.namespace === name);
  if (!ns) return [el("p", {}, `No namespace “${name}” runs now. `, el("a", { href: "#/" }, "All namespaces"))];
  const card = (label, value, field) => el("div", { class: "card" }, el("b", { "data-field": field }, value), el("span", {}, label));
  const targets = el("div", { class: "table-wrap" }, el("table", { "aria-labelledby": "targets-title" },
    el("thead", {}, el("tr", {}, ["Target", "Type", "Delivered", "Retried", "Dead-lettered", "Filtered out", "Last error", "State", ""].map((h, i) =>
      el("th", { scope: "col", class: i >= 2 && i <= 5 ? "num" : null }, h)))),
    el("tbody", {}, ns.targets.map((t) => el("tr", { "data-target": t.name },
      el("th", { scope: "row" }, t.name), el("td", {}, t.type),
      el("td", { class: "num" }, t.delivery.delivered), el("td", { class: "num" }, t.delivery.retried),
      el("td", { class: "num" }, t.delivery.dead_lettered),
      el("td", { class: "num", "data-field": "skipped" }, t.delivery.skipped ?? 0),
      el("td", { class: "error-text" }, t.delivery.last_error ? `${when(t.delivery.last_error_at_ms)} ${t.delivery.last_error}` : ""),
      el("td", { "data-field": "target-state", class: targetState(t) === "delivering" ? null : "error-text" }, targetState(t)),
      el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `${t.paused ? "Resume" : "Pause"} ${t.name}`,
        onclick: () => setPaused(name, t.name, !t.paused) }, t.paused ? "Resume" : "Pause")))))));
  return [
    el("p", {}, el("a", { href: "#/" }, "← All namespaces")),
    el("h2", {}, name, " ", badge(ns.state)),
    ns.description ? el("p", { class: "muted" }, ns.description) : null,
    ...failingParts(ns).map((part) => el("p", { class: "error-text", "data-field": "failing-part" }, part)),
    ...(ns.dlq_replays || []).filter((r) => r.state !== "done").slice(0, 3).map((r) => el("p", { class: r.state === "failed" ? "error-text" : "muted", "data-field": "dlq-replay" },
      r.state === "running" ? `DLQ replay running: ${r.replayed} of ${r.selected} replayed, ${r.skipped} skipped.` : `DLQ replay failed after ${r.replayed} of ${r.selected}: ${r.error}`)),
    el("div", { class: "cards" },
      card("written", ns.writes.accepted_messages, "accepted"), card("lag", lag(ns), "lag"),
      card("in the DLQ", ns.dlq_depth ?? "", "dlq"), card("delayed", ns.delayed_pending ?? "", "delayed"),
      chart(name, "accepted", "writes", "writes/s"), chart(name, "delivered", "delivered", "delivered/s")),
    el("h3", { id: "targets-title" }, "Targets"),
    targets,
  ];
}

// A card with the current rate and its chart over the last minutes.
function chart(name, field, kind, label) {
  const values = rates(name, field);
  const now = values.length ? values[values.length - 1] : 0;
  return el("div", { class: "card chart" }, el("b", {}, now >= 10 ? now.toFixed(0) : now.toFixed(1)), el("span", {}, label),
    spark(values, kind, `${label} over the last ${Math.round(values.length * POLL_MS / 1000)} s`));
}

function adminPart(name) {
  const part = el("section", { id: "admin", "aria-labelledby": "admin-title" });
  if (!adminKey()) {
    const input = el("input", { type: "password", id: "admin-key", autocomplete: "off", required: true });
    part.append(el("h2", { id: "admin-title" }, "Messages and dead letters"),
      el("form", { class: "key", onsubmit: (e) => { e.preventDefault(); sessionStorage.setItem("wald-admin-key", input.value); loadAdmin(name); } },
        el("label", { for: "admin-key" }, "Admin key"), input, el("button", { type: "submit" }, "Show")),
      el("p", { class: "muted" }, "Recent messages and the DLQ need the admin key; it stays in this tab."));
    return part;
  }
  part.append(el("h2", { id: "admin-title" }, "Messages and dead letters"),
    el("div", { id: "outcome", role: "status", "aria-live": "polite" }, view.outcome || null));
  const admin = view.name === name ? view.admin : null;
  if (!admin) {
    part.append(el("p", { class: "muted" }, "Loading…"));
    return part;
  }
  if (admin.error) {
    part.append(el("p", { class: "error-text" }, admin.error), el("button", { type: "button", class: "secondary", onclick: forgetKey }, "Enter another key"));
    return part;
  }
  const parked = admin.dlq.filter((e) => !e.replayed);
  append(part,
    el("h3", {}, "Dead letters"),
    parked.length ? el("p", {}, el("button", { type: "button", onclick: () => replay(name, {}) }, `Replay all ${parked.length}`)) : el("p", { class: "muted" }, "The DLQ is empty."),
    parked.length ? el("div", { class: "table-wrap" }, el("table", { id: "dlq" },
      el("thead", {}, el("tr", {}, ["Message", "Target", "Attempts", "Last error", "Failed at", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, parked.map((e) => el("tr", { "data-dlq-offset": e.dlq_offset },
        el("td", { class: "id" }, e.message_id), el("td", {}, e.target), el("td", { class: "num" }, e.attempts),
        el("td", { class: "error-text" }, e.last_error), el("td", {}, when(e.last_failed_at_ms)),
        el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `Replay ${e.message_id} to ${e.target}`, onclick: () => replay(name, { ids: [e.message_id], target: e.target }) }, "Replay"))))))) : null,
    el("h3", {}, "Recent messages"),
    admin.messages === null ? el("p", { class: "muted" }, "This namespace's backend cannot list its recent messages (a queue).") : el("div", { class: "table-wrap" }, el("table", { id: "messages" },
      el("thead", {}, el("tr", {}, ["Offset", "Logged at", "Message", "Key", "Bytes", "Status"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, admin.messages.map((m) => el("tr", {},
        el("td", { class: "num" }, m.partition === undefined ? m.offset : `${m.partition}:${m.offset}`), el("td", {}, when(m.timestamp_ms)), el("td", { class: "id" }, m.message_id || ""),
        el("td", {}, m.key || ""), el("td", { class: "num" }, m.payload_bytes),
        el("td", { "data-tx": m.transaction_id }, el("button", { type: "button", class: "secondary", onclick: (ev) => showTransaction(ev.target, m.transaction_id) }, "Show"))))))),
    el("p", {}, el("button", { type: "button", class: "secondary", onclick: forgetKey }, "Forget the admin key")));
  return part;
}

// Element.append, leaving out what is absent.
function append(node, ...children) {
  node.append(...children.filter((c) => c !== null && c !== undefined));
}

function forgetKey() {
  sessionStorage.removeItem("wald-admin-key");
  view.admin = null;
  renderAdmin();
}

async function loadAdmin(name) {
  try {
    const [messages, dlq] = await Promise.all([
      // A queue (SQS) cannot list its recent messages (501): its DLQ is shown all the same.
      api(`/api/v1/wal/namespace/${encodeURIComponent(name)}/messages?limit=20`, { admin: true })
        .catch((e) => (e.status === 501 ? null : Promise.reject(e))),
      api(`/api/v1/wal/namespace/${encodeURIComponent(name)}/dlq?state=parked&limit=100`, { admin: true }),
    ]);
    view.admin = { messages, dlq: dlq.entries };
  } catch (e) {
    view.admin = { error: e.status === 401 || e.status === 403 ? `The admin key was refused (${e.message}).` : e.message };
  }
  view.name = name;
  renderAdmin();
}

// A target's state: paused by an operator, its circuit open or half-open, or delivering.
function targetState(t) {
  if (t.paused) return "paused";
  const circuit = t.circuit || {};
  if (circuit.state === "open") return `circuit open since ${when(circuit.since_ms)}`;
  if (circuit.state === "half_open") return "circuit half-open: probing";
  return "delivering";
}

async function setPaused(name, target, paused) {
  const verb = paused ? "pause" : "resume";
  try {
    await api(`/api/v1/admin/namespaces/${encodeURIComponent(name)}/${verb}?target=${encodeURIComponent(target)}`, { method: "POST", admin: true });
  } catch (e) {
    view.outcome = `${paused ? "Pause" : "Resume"} refused: ${e.message}`;
  }
  await poll();
}

async function replay(name, request) {
  try {
    const outcome = await api(`/api/v1/wal/namespace/${encodeURIComponent(name)}/dlq/replay`, { method: "POST", admin: true, body: JSON.stringify(request) });
    // A long replay answers how far it got and goes on; the namespace's status follows it.
    view.outcome = outcome.state === "running"
      ? `Replay running: ${outcome.replayed} of ${outcome.selected} so far; it goes on in the background.`
      : `Replayed ${outcome.replayed.length}` + (outcome.skipped.length ? `, skipped ${outcome.skipped.length}: ${outcome.skipped.map((s) => s.reason).join("; ")}` : "") + ".";
  } catch (e) {
    view.outcome = `Replay refused: ${e.message}`;
  }
  await loadAdmin(name);
}

async function showTransaction(button, id) {
  const cell = button.parentElement;
  try {
    const status = await api(`/api/v1/wal/transaction/${encodeURIComponent(id)}/status`);
    const states = [];
    for (const message of status.messages || []) {
      for (const [target, s] of Object.entries(message.targets || {})) {
        states.push(el("span", {}, `${target} `, badge(s.state), s.attempts > 1 ? ` ×${s.attempts}` : "", " "));
      }
    }
    cell.replaceChildren(...(states.length ? states : [badge(status.state || "unknown")]));
  } catch (e) {
    cell.replaceChildren(el("span", { class: "error-text" }, e.message));
  }
}

function route() {
  const match = location.hash.match(/^#\/ns\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

// The live part is drawn anew on every poll; the admin part only when it changes, so
// that a key being typed or a focused button stays as it is.
function render() {
  const live = document.getElementById("live");
  if (!latest || !live) return;
  renderSummary(latest);
  const name = route();
  live.replaceChildren(...(name ? renderNamespace(latest, name) : renderOverview(latest)).filter(Boolean));
}

function renderAdmin() {
  const slot = document.getElementById("admin-slot");
  if (slot) slot.replaceChildren(adminPart(route()));
}

function layout() {
  const name = route();
  const parts = [el("div", { id: "live" })];
  if (name) parts.push(el("div", { id: "admin-slot" }));
  document.getElementById("main").replaceChildren(...parts);
  render();
  renderAdmin();
}

async function poll() {
  try {
    latest = await api("/api/v1/wal/namespaces");
    record(latest);
    render();
  } catch (e) {
    document.getElementById("summary").textContent = `Cannot reach wald: ${e.message}`;
  }
}

window.addEventListener("hashchange", () => {
  view.admin = null;
  view.outcome = "";
  layout();
  if (route() && adminKey()) loadAdmin(route());
  document.getElementById("main").focus();
});

layout();
poll();
setInterval(poll, POLL_MS);
if (route() && adminKey()) loadAdmin(route());
