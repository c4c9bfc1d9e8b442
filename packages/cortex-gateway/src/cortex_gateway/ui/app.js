// cortex fleet dashboard. No framework, no build step, nothing from another origin.
// Everything that came from the fleet (model ids, node names, error texts) is set as
// text (textContent), never parsed as HTML. The key, when one is needed, lives in
// sessionStorage (this browser session only) and goes in the Authorization header.
"use strict";

const KEY = "cortex.key";
const STALE_MS = 35000; // the server sends at least every 15 s: silence past this is a dead link
const USAGE_EVERY_MS = 5000; // the keys panel (admin keys only) reads /admin/usage this often
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY) || "",
  offset: 0, // server clock minus ours (ms)
  snapshot: null,
  activityAll: null,
  activityModel: null,
  rows: new Map(), // model id -> {el: its tr, keys: one per cell}
  cards: new Map(), // node name -> {el, json}
  pending: new Map(), // "load|model" or "unload|model|node" -> true while an action runs
  chosen: new Map(), // model id -> node chosen in its load select
  timeline: [],
  retryMs: 1000,
  controller: null,
  watchdog: 0,
  usageTimer: 0,
};

// Read by the browser tests: how long the last snapshot took to render, and how many.
window.cortexDashboard = { renders: 0, lastRenderMs: 0, maxRenderMs: 0, history: [] };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [name, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("data-")) node.setAttribute(name, String(value));
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node[name] = value;
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function auth(extra) {
  const headers = Object.assign({}, extra || {});
  if (state.key) headers.authorization = "Bearer " + state.key;
  return headers;
}

// --- formatting ------------------------------------------------------------------

const GiB = 1024 ** 3;
function gib(bytes) {
  return (bytes / GiB).toFixed(bytes >= 10 * GiB ? 0 : 1) + " GiB";
}
function serverNow() {
  return (Date.now() + state.offset) / 1000;
}
function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, serverNow() - seconds);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function elapsed(seconds) {
  const s = Math.max(0, serverNow() - seconds);
  return s < 60 ? Math.round(s) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}
function clock(seconds) {
  return new Date(seconds * 1000 - state.offset).toLocaleTimeString([], { hour12: false });
}
function rate(value) {
  if (value === null || value === undefined) return "—";
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}
function seconds(value) {
  if (value === null || value === undefined) return "—";
  return value < 1 ? Math.round(value * 1000) + " ms" : value.toFixed(2) + " s";
}
function colour(model) {
  let h = 0;
  for (let i = 0; i < model.length; i++) h = (h * 31 + model.charCodeAt(i)) >>> 0;
  return "c" + ((h % 6) + 1);
}

// --- connection ------------------------------------------------------------------

function setStatus(name, text) {
  const pill = $("status");
  pill.dataset.state = name;
  pill.textContent = text || name;
}

function showKeyPrompt(reason) {
  $("dashboard").hidden = true;
  $("key-prompt").hidden = false;
  $("key-reason").textContent = reason;
  setStatus("key", "key needed");
  $("key-input").focus();
}

function showDashboard() {
  $("key-prompt").hidden = true;
  $("dashboard").hidden = false;
  $("forget-key").hidden = !state.key;
}

function retry() {
  clearTimeout(state.watchdog);
  setStatus("reconnecting", "reconnecting…");
  const wait = state.retryMs;
  state.retryMs = Math.min(wait * 2, 5000);
  setTimeout(connect, wait);
}

function pet(controller) {
  clearTimeout(state.watchdog);
  state.watchdog = setTimeout(() => controller.abort(), STALE_MS);
}

async function connect() {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  let response;
  try {
    response = await fetch("/ui/events", { headers: auth(), signal: controller.signal, cache: "no-store" });
  } catch (error) {
    if (state.controller === controller) retry();
    return;
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => null);
    const told = body && body.error && body.error.message;
    showKeyPrompt(state.key ? "That key was refused (" + (told || response.status) + "). Try another." :
      "This gateway needs an API key. It is kept for this browser session only.");
    return;
  }
  if (!response.ok || !response.body) {
    // 503: this gateway process has as many dashboards open as it takes; wait as it says.
    const after = Number(response.headers.get("retry-after"));
    if (after > 0) state.retryMs = Math.max(state.retryMs, after * 1000);
    retry();
    return;
  }
  state.retryMs = 1000;
  state.timeline = [];
  showDashboard();
  setStatus("live", "live");
  pet(controller);
  try {
    for await (const block of sseBlocks(response, () => pet(controller))) dispatch(block);
  } catch (error) {
    // the link broke or the watchdog cut it: reconnect below
  }
  if (state.controller === controller) retry();
}

// The events of a server-sent-event response, as text blocks, as they arrive (the
// dashboard's own stream and the chat's); onRead runs on every read.
async function* sseBlocks(response, onRead) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    if (onRead) onRead();
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      yield buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
    }
  }
}

function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (!data.length) return;
  const value = JSON.parse(data.join("\n"));
  if (event === "snapshot") renderSnapshot(value);
  else if (event === "changes") applyChanges(value);
  else if (event === "timeline") addTimeline(value);
  else if (event === "activity") onActivity(value);
}

// --- fleet -----------------------------------------------------------------------

function renderSnapshot(snapshot) {
  const started = performance.now();
  state.offset = snapshot.time * 1000 - Date.now();
  state.snapshot = snapshot;
  document.body.classList.toggle("admin", snapshot.admin);
  watchUsage(snapshot.admin);
  $("version").textContent = "gateway " + snapshot.version;
  renderNodes(snapshot.nodes);
  renderModels(snapshot.models, snapshot.nodes);
  renderTryModels(snapshot.models);
  const took = performance.now() - started;
  const stats = window.cortexDashboard;
  stats.renders += 1;
  stats.lastRenderMs = took;
  stats.maxRenderMs = Math.max(stats.maxRenderMs, took);
  stats.history.push(took);
  if (stats.history.length > 100) stats.history.shift();
}

// What changed since the last snapshot or changes: node cards and model rows, by key, in
// place of the ones shown (the gateway sends a whole snapshot when rows come or go).
function applyChanges(changes) {
  const shown = state.snapshot;
  if (!shown) return;
  const nodes = new Map(changes.nodes.map((node) => [node.name, node]));
  const models = new Map(changes.models.map((model) => [model.id, model]));
  renderSnapshot({
    ...shown,
    time: changes.time,
    nodes: shown.nodes.map((node) => nodes.get(node.name) || node),
    models: shown.models.map((model) => models.get(model.id) || model),
  });
}

// Keep box's children the elements of items, in order: entries (key -> {el, ...}) holds
// what is on the page; update(item, entry) returns the entry to show (the same, mended,
// or new); what is no longer among items goes.
function reconcile(box, entries, items, keyOf, update) {
  const seen = new Set();
  items.forEach((item, index) => {
    const key = keyOf(item);
    seen.add(key);
    const entry = update(item, entries.get(key));
    entries.set(key, entry);
    if (box.children[index] !== entry.el) box.insertBefore(entry.el, box.children[index] || null);
  });
  for (const [key, entry] of entries) {
    if (!seen.has(key)) {
      entry.el.remove();
      entries.delete(key);
    }
  }
}

function renderNodes(nodes) {
  const up = nodes.filter((n) => n.up).length;
  $("fleet-summary").textContent = up + " of " + nodes.length + " up";
  reconcile($("nodes"), state.cards, nodes, (node) => node.name, (node, card) => {
    const json = JSON.stringify(node);
    if (card && card.json === json) return card;
    const fresh = nodeCard(node);
    if (card) card.el.replaceWith(fresh);
    return { el: fresh, json };
  });
}

function nodeCard(node) {
  const card = el("article", { class: "card node" + (node.up ? "" : " down"), "data-node": node.name,
    "data-up": node.up ? "true" : "false" });
  const since = node.since ? (node.up ? "up since " : "down since ") + clock(node.since) : "";
  card.append(el("header", null, el("h3", { text: node.name }),
    el("span", { class: "state " + (node.up ? "up" : "down"), text: node.up ? "up" : "down" }),
    el("span", { class: "muted small", text: since })));
  const facts = [];
  if (node.version) facts.push("neuron " + node.version);
  if (node.endpoint) facts.push(node.endpoint);
  if (facts.length) card.append(el("div", { class: "muted small", text: facts.join(" · ") }));
  if (node.error) card.append(el("div", { class: "small err", text: node.error }));
  if (node.cpu_only) card.append(el("div", { class: "muted small", text: "CPU only (no GPU): models run in host memory" }));
  for (const device of node.devices) card.append(deviceBar(device));
  // Sleeping models hold host memory, not a GPU's: listed apart from the bars.
  if (node.host_models.length) {
    if (!node.cpu_only) card.append(el("div", { class: "muted small", text: "host memory" }));
    card.append(el("div", { class: "legend host" }, ...node.host_models.map((m) =>
      el("span", { "data-model": m.model, "data-kind": m.kind, "data-bytes": m.bytes },
        el("i", { class: "seg " + (m.kind === "loading" ? "loading" : colour(m.model)) + (m.kind === "sleeping" ? " sleeping" : "") }),
        m.model + (m.kind === "ready" ? "" : " (" + m.kind + ")") + (m.bytes ? " " + gib(m.bytes) : "")))));
  }
  return card;
}

function deviceBar(device) {
  const total = device.total || 1;
  const meter = el("div", { class: "meter", role: "img" });
  const legend = el("div", { class: "legend" });
  let models = 0;
  let reserved = 0;
  let other = 0;
  for (const seg of device.segments) {
    const kind = seg.kind === "loading" ? "loading" : seg.kind === "other" ? "other" : colour(seg.model || "");
    const part = el("div", { class: "seg " + kind, "data-model": seg.model, "data-kind": seg.kind, "data-bytes": seg.bytes,
      title: (seg.model || "other use") + ": " + gib(seg.bytes) + (seg.kind === "loading" ? " (reserved, loading)" : "") });
    part.style.width = Math.min(100, (seg.bytes / total) * 100) + "%";
    meter.append(part);
    if (seg.kind === "loading") reserved += seg.bytes;
    else if (seg.kind === "other") other += seg.bytes;
    else models += seg.bytes;
    const label = seg.model ? seg.model + (seg.kind === "loading" ? " (loading)" : seg.kind === "unloading" ? " (unloading)" : "") : "other use";
    legend.append(el("span", null, el("i", { class: "seg " + kind }), label + " " + gib(seg.bytes)));
  }
  const free = Math.max(0, device.total - models - reserved - other);
  meter.setAttribute("aria-label", gib(device.used) + " used, " + gib(reserved) + " reserved, " + gib(free) + " free of " + gib(device.total));
  meter.dataset.modelsBytes = String(models);
  meter.dataset.reservedBytes = String(reserved);
  legend.append(el("span", { class: "muted" }, el("i", { class: "seg free" }), "free " + gib(free)));
  return el("div", { class: "device", "data-device": device.index },
    el("div", { class: "label" }, el("span", { text: "GPU " + device.index + (device.name ? " · " + device.name : "") }),
      el("span", { text: gib(device.used) + " / " + gib(device.total) })),
    meter, legend);
}

// --- keys (admin only) ------------------------------------------------------------

function watchUsage(admin) {
  if (admin && !state.usageTimer) {
    refreshUsage();
    state.usageTimer = setInterval(refreshUsage, USAGE_EVERY_MS);
  } else if (!admin && state.usageTimer) {
    clearInterval(state.usageTimer);
    state.usageTimer = 0;
  }
}

async function refreshUsage() {
  let response;
  try {
    response = await fetch("/admin/usage", { headers: auth(), cache: "no-store" });
  } catch (error) {
    return; // the stream's reconnect says the gateway is gone
  }
  if (response.ok) renderUsage(await response.json());
}

function count(value) {
  return value >= 1e6 ? (value / 1e6).toFixed(1) + " M" : value >= 1e4 ? (value / 1e3).toFixed(1) + " k" : String(value);
}

function renderUsage(report) {
  const rows = [];
  for (const key of report.keys) for (const m of key.models) rows.push([key.name, m]);
  const named = report.keys.filter((k) => k.name).length;
  $("keys-summary").textContent = named + " named keys · since " + clock(report.since);
  const body = $("keys").tBodies[0];
  body.replaceChildren(...rows.map(([name, m]) => el("tr", { "data-key": name, "data-model": m.model },
    el("td", { text: name || "(unnamed)", class: name ? "" : "muted" }),
    el("td", { class: "id", text: m.model }),
    el("td", { text: m.requests }),
    el("td", { class: m.errors ? "err" : "", text: m.errors }),
    el("td", { text: count(m.prompt_tokens) }),
    el("td", { text: count(m.cached_tokens) }),
    el("td", { text: count(m.completion_tokens) }))));
  if (!rows.length) body.append(el("tr", null, el("td", { colSpan: 7, class: "muted", text: "no inference requests yet" })));
}

// --- models ----------------------------------------------------------------------

function renderModels(models, nodes) {
  const loaded = models.filter((m) => !m.alias_of && m.placements.some((p) => p.state === "ready")).length;
  const concrete = models.filter((m) => !m.alias_of).length;
  $("models-summary").textContent = loaded + " of " + concrete + " loaded, " + (models.length - concrete) + " aliases";
  const names = nodes.map((n) => n.name);
  reconcile($("models").tBodies[0], state.rows, models, (model) => model.id, (model, row) => {
    row = row || { el: el("tr", { "data-model": model.id }), keys: [] };
    // Only the cells whose data changed are rebuilt (a node going down changes
    // every row's "fits on", and nothing else of it).
    CELLS.forEach((cell, i) => {
      const key = cell.key(model, names);
      if (row.keys[i] === key) return;
      row.keys[i] = key;
      const fresh = cell.build(model, names);
      const old = row.el.children[i];
      if (old) old.replaceWith(fresh);
      else row.el.append(fresh);
    });
    return row;
  });
}

function nameCell(model) {
  const name = el("td", { class: "id" }, el("span", { class: "model-id", text: model.id }));
  if (model.alias_of) name.append(el("span", { class: "tag", text: "alias → " + model.alias_of }));
  if (model.pinned) name.append(el("span", { class: "tag", text: "pinned" }));
  if (model.task !== "generate") name.append(el("span", { class: "tag", text: model.task === "embed" ? "embeddings" : model.task }));
  if (!model.catalogued && !model.alias_of) name.append(el("span", { class: "tag", text: "not in catalogue" }));
  if (model.memory_bytes) name.append(el("span", { class: "tag", text: gib(model.memory_bytes) }));
  return name;
}

function whereCell(model) {
  const where = el("td", { class: "where" });
  if (model.alias_of) where.append(el("span", { class: "muted", text: "as " + model.alias_of }));
  for (const p of model.placements) {
    let detail = null;
    if (p.state === "loading" && (p.phase || p.since)) {
      detail = el("span", { class: "muted small", "data-phase": p.phase || "", "data-elapsed": p.since || "" });
      tickElapsed(detail);
    } else if (p.state === "sleeping" && p.host_memory_bytes) {
      detail = el("span", { class: "muted small", text: " " + gib(p.host_memory_bytes) + " in host memory" });
    }
    const place = el("span", { class: "place", "data-node": p.node, "data-state": p.state },
      el("b", { text: p.node }), " ", el("span", { class: "state " + p.state, text: p.state }), detail);
    if (p.error) place.append(el("span", { class: "err", text: p.error }));
    where.append(place);
  }
  if (!model.placements.length && !model.alias_of) where.append(el("span", { class: "muted", text: "not loaded" }));
  if (model.backoff.length) where.append(el("span", { class: "err small", text: "paused after failed loads on " + model.backoff.join(", ") }));
  return where;
}

function pendingFor(model) {
  return Array.from(state.pending.keys()).filter((key) => key.split("|")[1] === model).join(",");
}

const CELLS = [
  { key: (m) => JSON.stringify([m.alias_of, m.pinned, m.task, m.catalogued, m.memory_bytes]), build: nameCell },
  { key: (m) => JSON.stringify([m.alias_of, m.placements, m.backoff]), build: whereCell },
  { key: (m) => m.in_flight + "+" + m.waiting,
    build: (m) => el("td", { text: String(m.in_flight) + (m.waiting ? " (+" + m.waiting + " waiting)" : "") }) },
  { key: (m) => String(m.last_used),
    build: (m) => el("td", { "data-ago": m.last_used === null ? "" : m.last_used, text: ago(m.last_used) }) },
  { key: (m) => String(m.priority), build: (m) => el("td", { text: m.priority === null ? "—" : String(m.priority) }) },
  { key: (m) => m.feasible_on.join(", "),
    build: (m) => el("td", { class: "small", text: m.feasible_on.length ? m.feasible_on.join(", ") : "—" }) },
  { key: (m, names) => m.alias_of ? "alias" :
      JSON.stringify([m.placements.filter((p) => p.state === "ready").map((p) => p.node), pendingFor(m.id), names]),
    build: (m, names) => el("td", { class: "admin-only" }, m.alias_of ? null : modelActions(m, names)) },
];

function tickElapsed(span) {
  const parts = [];
  if (span.dataset.phase) parts.push(span.dataset.phase);
  if (span.dataset.elapsed) parts.push(elapsed(Number(span.dataset.elapsed)));
  span.textContent = " " + parts.join(", ");
}

// Times in the page ("3 s ago", "loading 12 s") move on between snapshots, in place.
function tick() {
  for (const cell of document.querySelectorAll("[data-ago]")) {
    if (cell.dataset.ago) cell.textContent = ago(Number(cell.dataset.ago));
  }
  for (const span of document.querySelectorAll("[data-elapsed]")) tickElapsed(span);
}

function modelActions(model, names) {
  const box = el("div", { class: "actions" });
  const select = el("select", { "aria-label": "node for " + model.id, class: "load-node",
    onchange: () => state.chosen.set(model.id, select.value) });
  const chosen = state.chosen.get(model.id) || "";
  select.append(el("option", { value: "", text: "auto" }));
  if (chosen) select.append(el("option", { value: chosen, text: chosen }));
  select.value = chosen;
  // The node list is filled in when the select is used: 200 rows of 20 options each
  // would be most of a snapshot's rendering.
  const fill = () => {
    if (select.dataset.filled) return;
    select.dataset.filled = "true";
    const keep = select.value;
    select.replaceChildren(el("option", { value: "", text: "auto" }),
      ...names.map((name) => el("option", { value: name, text: name })));
    select.value = keep;
  };
  select.addEventListener("pointerdown", fill);
  select.addEventListener("focus", fill);
  const loading = state.pending.has("load|" + model.id);
  box.append(select, el("button", { type: "button", class: "load", text: loading ? "loading…" : "load", disabled: loading,
    onclick: () => act("load", model.id, select.value || null) }));
  for (const p of model.placements) {
    if (p.state !== "ready") continue;
    const key = "unload|" + model.id + "|" + p.node;
    box.append(el("button", { type: "button", class: "secondary unload", "data-node": p.node,
      text: state.pending.has(key) ? "unloading…" : "unload from " + p.node, disabled: state.pending.has(key),
      onclick: () => act("unload", model.id, p.node) }));
  }
  return box;
}

function notice(text, ok) {
  const box = $("action-result");
  box.hidden = false;
  box.className = "notice " + (ok ? "ok" : "bad");
  box.textContent = text;
}

async function act(verb, model, node) {
  const key = verb === "load" ? "load|" + model : "unload|" + model + "|" + node;
  state.pending.set(key, true);
  if (state.snapshot) renderModels(state.snapshot.models, state.snapshot.nodes);
  const where = node ? " on " + node : "";
  notice((verb === "load" ? "Loading " : "Unloading ") + model + where + "…", true);
  try {
    const body = { model };
    if (node) body.node = node;
    const response = await fetch("/admin/models/" + verb, {
      method: "POST", headers: auth({ "content-type": "application/json" }), body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => null);
    if (response.ok) {
      const nodesDone = answer.node ? answer.node : (answer.nodes || []).join(", ");
      notice((verb === "load" ? "Loaded " : "Unloaded ") + model + " (" + nodesDone + ")", true);
    } else {
      const message = answer && answer.error ? answer.error.message : "HTTP " + response.status;
      notice((verb === "load" ? "Load" : "Unload") + " of " + model + " failed: " + message, false);
    }
  } catch (error) {
    notice((verb === "load" ? "Load" : "Unload") + " of " + model + " failed: the gateway did not answer", false);
  } finally {
    state.pending.delete(key);
    if (state.snapshot) renderModels(state.snapshot.models, state.snapshot.nodes);
  }
}

// --- timeline --------------------------------------------------------------------

const KIND_TEXT = {
  load_started: "load started", loaded: "loaded", load_failed: "load failed", unloaded: "unloaded",
  evicted: "evicted", slept: "slept", node_up: "node up", node_down: "node down", node_restarted: "node restarted",
};
// A load that woke a sleeping model (no engine start) says so.
const WAKE_TEXT = { load_started: "waking", loaded: "woke", load_failed: "wake failed" };

function addTimeline(events) {
  const list = $("timeline");
  for (const event of events) {
    const parts = [];
    if (event.seconds !== null && event.seconds !== undefined) parts.push("in " + event.seconds + " s");
    if (event.reason) parts.push(["evicted", "unloaded", "slept"].includes(event.kind) ? "reason: " + event.reason : event.reason);
    if (event.host_bytes) parts.push(gib(event.host_bytes) + " in host memory");
    const text = (event.wake && WAKE_TEXT[event.kind]) || KIND_TEXT[event.kind] || event.kind;
    const item = el("li", { "data-kind": event.kind, "data-seq": event.seq, "data-wake": event.wake ? "true" : "false" },
      el("time", { text: clock(event.time) }),
      el("span", { class: "kind " + event.kind, text }),
      el("b", { text: event.node }),
      event.model ? el("span", { class: "model-id", text: event.model }) : null,
      parts.length ? el("span", { class: "muted", text: parts.join(" · ") }) : null);
    list.prepend(item);
  }
  while (list.children.length > 200) list.lastChild.remove();
}

// --- activity --------------------------------------------------------------------

function onActivity(payload) {
  state.activityAll = payload.all;
  const select = $("activity-model");
  const chosen = select.value;
  const have = new Set(Array.from(select.options, (o) => o.value));
  for (const model of payload.models) {
    if (!have.has(model)) select.append(el("option", { value: model, text: model }));
  }
  select.value = chosen;
  refreshActivity();
}

async function refreshActivity() {
  const model = $("activity-model").value;
  if (!model) {
    state.activityModel = null;
    drawCharts(state.activityAll);
    return;
  }
  try {
    const response = await fetch("/ui/activity?model=" + encodeURIComponent(model), { headers: auth(), cache: "no-store" });
    if (response.ok) state.activityModel = await response.json();
  } catch (error) {
    return;
  }
  if ($("activity-model").value === model) drawCharts(state.activityModel);
}

const MINUTE = 12; // buckets of 5 s

function minuteMean(values) {
  const recent = values.slice(-MINUTE);
  return recent.reduce((sum, v) => sum + (v || 0), 0) / Math.max(1, recent.length);
}

function last(values) {
  for (let i = values.length - 1; i >= Math.max(0, values.length - MINUTE); i--) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return null;
}

function drawCharts(series) {
  if (!series) return;
  chart($("c-requests"), [series.requests], rate);
  chart($("c-tokens"), [series.tokens], rate);
  chart($("c-ttft"), [series.ttft_p50, series.ttft_p95], seconds);
  chart($("c-errors"), [series.errors], rate);
  // The figures: the last minute's mean rate, the latest time to first token in it.
  $("v-requests").textContent = rate(minuteMean(series.requests));
  $("v-tokens").textContent = rate(minuteMean(series.tokens));
  $("v-ttft").textContent = seconds(last(series.ttft_p50)) + " / " + seconds(last(series.ttft_p95));
  $("v-errors").textContent = rate(minuteMean(series.errors));
}

function chart(canvas, lines, format) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 110;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const colours = [style.getPropertyValue("--accent"), style.getPropertyValue("--chart2")];
  let top = 0;
  for (const line of lines) for (const v of line) if (v !== null && v > top) top = v;
  top = top > 0 ? top * 1.15 : 1;
  const pad = 14;
  ctx.strokeStyle = style.getPropertyValue("--line");
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, height - pad + 0.5);
  ctx.lineTo(width, height - pad + 0.5);
  ctx.stroke();
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(format(top), 2, 10);
  ctx.fillText("−15 min", 2, height - 2);
  ctx.fillText("now", width - 20, height - 2);
  lines.forEach((line, index) => {
    const n = line.length;
    if (!n) return;
    ctx.strokeStyle = colours[index % colours.length];
    ctx.lineWidth = 1.5;
    ctx.fillStyle = colours[index % colours.length];
    ctx.beginPath();
    let drawing = false;
    const missing = (v) => v === null || v === undefined;
    line.forEach((v, i) => {
      if (missing(v)) {
        drawing = false;
        return;
      }
      const x = (i / Math.max(1, n - 1)) * width;
      const y = height - pad - (v / top) * (height - pad - 14);
      if (drawing) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      drawing = true;
      if (missing(line[i - 1]) && missing(line[i + 1])) ctx.fillRect(x - 2, y - 2, 4, 4); // alone: a dot
    });
    ctx.stroke();
  });
}

// --- try it ----------------------------------------------------------------------

function renderTryModels(models) {
  const select = $("try-model");
  // The chat box chats: embedding models (task "embed") have nothing to say.
  const ids = models.filter((m) => m.task === "generate").map((m) => m.id);
  const current = Array.from(select.options, (o) => o.value);
  if (current.join("\n") === ids.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  if (ids.includes(chosen)) select.value = chosen;
}

async function tryIt(event) {
  event.preventDefault();
  const output = $("try-output");
  const stats = $("try-stats");
  const button = $("try-send");
  output.textContent = "";
  stats.textContent = "sending…";
  button.disabled = true;
  const body = {
    model: $("try-model").value,
    messages: [{ role: "user", content: $("try-prompt").value }],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: 256,
  };
  const started = performance.now();
  let first = null;
  let lastAt = null;
  let chunks = 0;
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: auth({ "content-type": "application/json" }), body: JSON.stringify(body),
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => null);
      stats.textContent = "failed: " + (answer && answer.error ? answer.error.message : "HTTP " + response.status);
      return;
    }
    for await (const block of sseBlocks(response)) {
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) {
          stats.textContent = "failed: " + chunk.error.message;
          return;
        }
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const text = choice.delta && choice.delta.content;
          if (!text) continue;
          const now = performance.now();
          if (first === null) first = now;
          lastAt = now;
          chunks += 1;
          output.textContent += text;
        }
      }
    }
    const tokens = usage ? usage.completion_tokens : chunks;
    const parts = [];
    if (first !== null) parts.push("first token " + seconds((first - started) / 1000));
    if (first !== null && lastAt > first && tokens > 1) parts.push(rate((tokens - 1) / ((lastAt - first) / 1000)) + " tokens/s");
    parts.push(tokens + " tokens");
    stats.textContent = parts.join(" · ");
    stats.dataset.done = "true";
  } catch (error) {
    stats.textContent = "failed: the stream broke";
  } finally {
    button.disabled = false;
  }
}

// --- start -----------------------------------------------------------------------

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key-input").value.trim();
    $("key-input").value = "";
    if (state.key) sessionStorage.setItem(KEY, state.key);
    connect();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    state.key = "";
    connect();
  });
  $("activity-model").addEventListener("change", refreshActivity);
  $("try-form").addEventListener("submit", tryIt);
  setInterval(tick, 1000);
  window.addEventListener("resize", () => drawCharts($("activity-model").value ? state.activityModel : state.activityAll));
  connect();
}

start();
