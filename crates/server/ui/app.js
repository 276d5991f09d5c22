// Shepherd's dashboard: plain JavaScript over the REST API, with the token
// the user logs in with (kept in this tab's sessionStorage only). Every
// value from the API goes into the page as text, never as markup; the only
// markup taken from the server is the SVG of its own plots.
"use strict";

const view = document.getElementById("view");
let session = JSON.parse(sessionStorage.getItem("shepherd") || "null");
let stop = []; // what the current page must close when left (streams, timers)
let generation = 0; // bumped on each route: a page that finds it moved on renders nothing

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "width") node.style.width = v; // through the CSSOM: the page's CSP allows no inline style
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { authorization: "Bearer " + session.token, "content-type": "application/json", ...(options.headers || {}) },
  });
  if (response.status === 401) {
    logout();
    throw new Error("the token was refused");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body?.error?.message || response.statusText);
  return body;
}

function state(s) {
  return el("span", { class: "state " + s }, s);
}

function when(t) {
  return t ? new Date(t).toLocaleString() : "";
}

function closePage() {
  stop.forEach((f) => f());
  stop = [];
}

// Reads a streamed response line by line (logs) or event by event (SSE).
async function follow(path, onText) {
  const controller = new AbortController();
  stop.push(() => controller.abort());
  try {
    const response = await fetch(path, { headers: { authorization: "Bearer " + session.token }, signal: controller.signal });
    if (!response.ok) return;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onText(decoder.decode(value, { stream: true }));
    }
  } catch (e) {
    if (e.name !== "AbortError") console.warn(e);
  }
}

function sseEvents(onEvent) {
  let buffer = "";
  let data = "";
  return (text) => {
    buffer += text;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line === "") {
        if (data) onEvent(JSON.parse(data));
        data = "";
      } else if (line.startsWith("data:")) {
        data += line.slice(5).trimStart();
      }
    }
  };
}

// ---- pages ----

// Throws when the user went elsewhere while a page waited for the API.
function current(mine) {
  if (mine !== generation) throw new Error("left");
}

async function overview(mine) {
  const data = await api("/v1/overview");
  current(mine);
  const tiles = el("div", { class: "tiles" });
  for (const s of ["queued", "scheduled", "running", "succeeded", "failed", "timed_out", "cancelled"]) {
    tiles.append(el("div", { class: "tile", id: "count-" + s }, el("div", { class: "n" }, String(data.tasks[s] || 0)), el("div", { class: "k" }, s)));
  }
  if (data.nodes) {
    for (const [s, n] of Object.entries(data.nodes)) {
      tiles.append(el("div", { class: "tile" }, el("div", { class: "n" }, String(n)), el("div", { class: "k" }, "nodes " + s)));
    }
  }
  const plots = el("div", { class: "plots" });
  for (const name of ["queue", "running", "throughput", "failures"]) {
    const box = el("div", { id: "plot-" + name });
    box.innerHTML = data.plots[name]; // drawn by the server from numbers only
    plots.append(box);
  }
  view.replaceChildren(el("h1", {}, "Overview"), tiles, el("h2", {}, "The last hour"), plots);
  const timer = setTimeout(() => route(), 5000);
  stop.push(() => clearTimeout(timer));
}

async function tasks(params, mine) {
  const query = new URLSearchParams();
  for (const k of ["state", "project", "label", "cursor"]) if (params.get(k)) query.set(k, params.get(k));
  query.set("limit", "50");
  const page = await api("/v1/tasks?" + query);
  current(mine);
  const stateSelect = el("select", { id: "filter-state" }, el("option", { value: "" }, "any state"),
    ["waiting", "queued", "scheduled", "running", "succeeded", "failed", "timed_out", "cancelled"].map((s) => el("option", { value: s }, s)));
  stateSelect.value = params.get("state") || "";
  const project = el("input", { id: "filter-project", placeholder: "project", value: params.get("project") || "" });
  const label = el("input", { id: "filter-label", placeholder: "label key=value", value: params.get("label") || "" });
  const apply = () => {
    const q = new URLSearchParams();
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (project.value) q.set("project", project.value);
    if (label.value) q.set("label", label.value);
    location.hash = "#/tasks?" + q;
  };
  const filters = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
    stateSelect, session.admin ? project : "", label, el("button", { type: "submit" }, "Filter"));
  const rows = page.tasks.map((t) =>
    el("tr", { "data-task-id": t.id },
      el("td", { class: "mono" }, el("a", { href: "#/task/" + t.id }, t.id)),
      el("td", {}, t.project), el("td", {}, state(t.state)), el("td", { class: "mono" }, t.image),
      el("td", {}, when(t.created_at)), el("td", {}, t.reason || "")));
  const table = el("table", { id: "tasks" },
    el("thead", {}, el("tr", {}, ["ID", "Project", "State", "Image", "Created", "Reason"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
  const pager = el("div", { class: "pager" });
  if (params.get("cursor")) pager.append(el("a", { href: "#/tasks?" + withoutCursor(params) }, "« newest"));
  if (page.next_cursor) {
    const next = new URLSearchParams(params);
    next.set("cursor", page.next_cursor);
    pager.append(el("a", { href: "#/tasks?" + next, id: "next-page" }, "older »"));
  }
  view.replaceChildren(el("h1", {}, "Tasks"), filters, table, pager);
}

function withoutCursor(params) {
  const q = new URLSearchParams(params);
  q.delete("cursor");
  return q;
}

async function task(id, mine) {
  const t = await api("/v1/tasks/" + encodeURIComponent(id));
  current(mine);
  const kv = el("dl", { class: "kv" });
  const add = (k, v) => kv.append(el("dt", {}, k), el("dd", {}, v));
  add("State", el("span", { id: "task-state" }, state(t.state)));
  add("Project", t.project);
  add("Image", el("span", { class: "mono" }, t.image));
  add("Command", el("span", { class: "mono" }, (t.command || []).join(" ")));
  if (t.code) add("Code", t.code.name + " revision " + t.code.revision);
  add("Environment", el("span", { class: "mono" }, Object.keys(t.env || {}).map((k) => k + "=" + t.env[k]).join(" ")));
  add("Secrets", (t.secrets || []).map((s) => s.name + " → " + (s.env || s.file || "")).join(", ") || "none");
  add("Resources", t.resources.cpu_millicores + " millicores, " + t.resources.memory_mib + " MiB");
  add("Labels", Object.entries(t.labels || {}).map(([k, v]) => k + "=" + v).join(", "));
  if (t.reason) add("Reason", el("span", { id: "task-reason" }, t.reason));
  if (t.queue) {
    add("Queue", el("span", { id: "task-queue" }, "#" + t.queue.in_project + " in project " + t.project + (t.queue.in_cluster ? ", #" + t.queue.in_cluster + " in the cluster" : "")));
    add("Starts", t.queue.estimated_start ? "about " + when(t.queue.estimated_start) + " (" + t.queue.estimate + ")" : t.queue.estimate);
  }
  if (t.progress) add("Progress", t.progress.percent + "% " + (t.progress.message || ""));
  if (t.array) add("Array", el("span", {}, el("a", { href: "#/array/" + t.array.id }, t.array.id), " index " + t.array.index + " of " + t.array.size));
  add("Created", when(t.created_at));
  add("Finished", when(t.finished_at));
  const attempts = el("table", { id: "attempts" },
    el("thead", {}, el("tr", {}, ["#", "Node", "Started", "Finished", "Outcome", "Exit", "CPU", "Peak memory", "Reason"].map((h) => el("th", {}, h)))),
    el("tbody", {}, (t.attempts || []).map((a) => el("tr", {},
      el("td", {}, String(a.number)), el("td", { class: "mono" }, a.node_id), el("td", {}, when(a.started_at)),
      el("td", {}, when(a.finished_at)), el("td", {}, a.outcome || "in progress"), el("td", {}, a.exit_code ?? ""),
      el("td", {}, a.usage ? (a.usage.cpu_ms / 1000).toFixed(2) + " s" : ""),
      el("td", {}, a.usage ? (a.usage.peak_memory_bytes / 1048576).toFixed(1) + " MiB" : ""),
      el("td", {}, a.reason || "")))));
  const log = el("pre", { id: "log" });
  const actions = el("div", { class: "pager" });
  if (!["succeeded", "failed", "timed_out", "cancelled"].includes(t.state)) {
    actions.append(el("button", { class: "secondary", id: "cancel", onclick: async () => { await api("/v1/tasks/" + t.id + "/cancel", { method: "POST", body: "{}" }); route(); } }, "Cancel"));
  }
  const deps = (t.depends_on || []).length || t.state === "waiting" ? [el("h2", {}, "Dependencies"), await graph(t.id)] : [];
  view.replaceChildren(el("h1", { class: "mono" }, "Task " + t.id), el("div", { class: "card" }, kv), actions,
    ...deps, el("h2", {}, "Attempts"), attempts, el("h2", {}, "Output"), log);
  // Live: the output as it comes, and the task's state changes.
  follow("/v1/tasks/" + t.id + "/logs?follow=true", (text) => {
    log.append(text);
    log.scrollTop = log.scrollHeight;
  });
  follow("/v1/events?types=task&task=" + t.id, sseEvents((e) => {
    document.getElementById("task-state")?.replaceChildren(state(e.state));
  }));
}

// Arrays: each with a bar of its children's progress.
function progressBar(a) {
  const c = a.counts || {};
  const done = ["succeeded", "failed", "timed_out", "cancelled"].reduce((n, k) => n + (c[k] || 0), 0);
  const pct = a.children ? Math.round((100 * done) / a.children) : 0;
  return el("div", { class: "progress" },
    el("div", { class: "bar" }, el("span", { width: pct + "%" })),
    el("span", { class: "muted" }, done + "/" + a.children + " done" + ((c.failed || 0) + (c.timed_out || 0) ? ", " + ((c.failed || 0) + (c.timed_out || 0)) + " failed" : "")));
}

async function arrays(params, mine) {
  const query = new URLSearchParams({ limit: "50" });
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  const page = await api("/v1/arrays?" + query);
  current(mine);
  const rows = page.arrays.map((a) =>
    el("tr", { "data-array-id": a.id },
      el("td", { class: "mono" }, el("a", { href: "#/array/" + a.id }, a.id)),
      el("td", {}, a.project), el("td", {}, state(a.state)), el("td", {}, progressBar(a)),
      el("td", { class: "mono" }, a.image), el("td", {}, when(a.created_at))));
  const table = el("table", { id: "arrays" },
    el("thead", {}, el("tr", {}, ["ID", "Project", "State", "Progress", "Image", "Created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
  const pager = el("div", { class: "pager" });
  if (page.next_cursor) pager.append(el("a", { href: "#/arrays?cursor=" + encodeURIComponent(page.next_cursor) }, "older »"));
  view.replaceChildren(el("h1", {}, "Arrays"), table, pager);
  const timer = setTimeout(() => route(), 3000);
  stop.push(() => clearTimeout(timer));
}

async function array(id, mine) {
  const a = await api("/v1/arrays/" + encodeURIComponent(id));
  current(mine);
  const kv = el("dl", { class: "kv" });
  const add = (k, v) => kv.append(el("dt", {}, k), el("dd", {}, v));
  add("State", el("span", { id: "array-state" }, state(a.state)));
  if (a.reason) add("Reason", a.reason);
  add("Project", a.project);
  add("Image", el("span", { class: "mono" }, a.image));
  add("Command", el("span", { class: "mono" }, (a.command || []).join(" ")));
  add("Size", a.size + " (" + a.children + " children" + (a.parallelism ? ", at most " + a.parallelism + " at once" : "") + ")");
  add("Progress", progressBar(a));
  add("Children", Object.entries(a.counts).filter(([, n]) => n > 0).map(([k, n]) => k + " " + n).join(", "));
  if (a.failed_indices.length) add("Failed indices", el("span", { id: "failed-indices", class: "mono" }, a.failed_indices.join(", ")));
  if (a.retry_of) add("Retry of", el("a", { href: "#/array/" + a.retry_of }, a.retry_of));
  add("Created", when(a.created_at));
  add("Finished", when(a.finished_at));
  const actions = el("div", { class: "pager" });
  if (["waiting", "running"].includes(a.state)) {
    actions.append(el("button", { class: "secondary", id: "cancel-array", onclick: async () => { await api("/v1/arrays/" + a.id + "/cancel", { method: "POST", body: "{}" }); route(); } }, "Cancel array"));
  } else if (a.failed_indices.length) {
    actions.append(el("button", { class: "secondary", id: "retry-array", onclick: async () => { const r = await api("/v1/arrays/" + a.id + "/retry", { method: "POST", body: JSON.stringify({ failed: true }) }); location.hash = "#/array/" + r.id; } }, "Retry the failed"));
  }
  const children = await api("/v1/tasks?limit=50&array=" + encodeURIComponent(a.id));
  const rows = children.tasks.map((t) => el("tr", {},
    el("td", {}, String(t.array ? t.array.index : "")),
    el("td", { class: "mono" }, el("a", { href: "#/task/" + t.id }, t.id)), el("td", {}, state(t.state)), el("td", {}, t.reason || "")));
  view.replaceChildren(el("h1", { class: "mono" }, "Array " + a.id), el("div", { class: "card" }, kv), actions,
    el("h2", {}, "Children (first 50)"),
    el("table", { id: "children" }, el("thead", {}, el("tr", {}, ["Index", "Task", "State", "Reason"].map((h) => el("th", {}, h)))), el("tbody", {}, rows)),
    el("h2", {}, "Dependencies"), await graph(a.id));
  if (["waiting", "running"].includes(a.state)) {
    const timer = setTimeout(() => route(), 2000);
    stop.push(() => clearTimeout(timer));
  }
}

// The graph around a task or an array: what it waits for on the left,
// what waits for it on the right, drawn as SVG (text nodes only).
async function graph(id) {
  const { edges } = await api("/v1/tasks/" + encodeURIComponent(id) + "/dependencies");
  if (!edges.length) return el("p", { class: "muted", id: "graph" }, "No dependencies either way.");
  const before = edges.filter((e) => e.task === id), after = edges.filter((e) => e.depends_on === id);
  const label = async (node) => {
    try { const t = await api("/v1/tasks/" + node); return t.state; } catch (_) { }
    try { const a = await api("/v1/arrays/" + node); return "array " + a.state; } catch (_) { return "?"; }
  };
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const rows = Math.max(before.length, after.length, 1);
  const height = 40 + rows * 44, width = 960;
  const root = svg("svg", { class: "plot", id: "graph", viewBox: "0 0 " + width + " " + height, role: "img" });
  const box = (x, y, node, st, href) => {
    const g = svg("a", { href: href });
    g.append(svg("rect", { x, y, width: 290, height: 32, rx: 6, class: "node " + st.split(" ").pop() }));
    g.append(svg("text", { x: x + 8, y: y + 20, class: "tick" }, node.slice(-12) + "  " + st));
    root.append(g);
  };
  const mid = { x: 335, y: height / 2 - 16 };
  box(mid.x, mid.y, id, await label(id), "#/task/" + id);
  for (const [i, e] of before.entries()) {
    const y = 20 + i * 44;
    root.append(svg("line", { x1: 300, y1: y + 16, x2: mid.x, y2: mid.y + 16, class: "axis" }));
    root.append(svg("text", { x: 300, y: y + 12, class: "tick" }, e.on));
    box(10, y, e.depends_on, await label(e.depends_on), "#/task/" + e.depends_on);
  }
  for (const [i, e] of after.entries()) {
    const y = 20 + i * 44;
    root.append(svg("line", { x1: mid.x + 290, y1: mid.y + 16, x2: 660, y2: y + 16, class: "axis" }));
    root.append(svg("text", { x: 630, y: y + 12, class: "tick" }, e.on));
    box(660, y, e.task, await label(e.task), "#/task/" + e.task);
  }
  return root;
}

async function nodes(mine) {
  const list = await api("/v1/nodes");
  current(mine);
  const bar = (used, total) => el("div", { class: "bar", title: used + " / " + total }, el("span", { width: Math.min(100, total ? (100 * used) / total : 0) + "%" }));
  const rows = list.nodes.map((n) => el("tr", { "data-node-id": n.id },
    el("td", { class: "mono" }, n.id), el("td", {}, n.hostname), el("td", {}, state(n.state)), el("td", {}, n.driver),
    el("td", {}, bar(n.allocated.cpu_millicores, n.capacity.cpu_millicores), n.allocated.cpu_millicores + " / " + n.capacity.cpu_millicores + " mCPU"),
    el("td", {}, bar(n.allocated.memory_mib, n.capacity.memory_mib), n.allocated.memory_mib + " / " + n.capacity.memory_mib + " MiB"),
    el("td", {}, n.tasks + " / " + n.max_tasks),
    el("td", {}, n.state === "ready" ? el("button", { class: "secondary", onclick: async () => {
      if (confirm("Drain " + n.id + "? Its tasks finish; it takes no new ones.")) { await api("/v1/nodes/" + n.id + "/drain", { method: "POST", body: "{}" }); route(); }
    } }, "Drain") : "")));
  view.replaceChildren(el("h1", {}, "Nodes"), el("table", { id: "nodes" },
    el("thead", {}, el("tr", {}, ["ID", "Host", "State", "Driver", "CPU", "Memory", "Tasks", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

// The cluster's own history replayed under the settings this server runs
// with, beside what happened (GET /v1/history/replay).
async function whatif(params, mine) {
  const hours = Math.max(1, Math.min(24 * 31, Number(params.get("hours")) || 24));
  const form = el("form", { id: "whatif-form" },
    el("label", {}, "Last ", el("input", { name: "hours", type: "number", min: "1", max: String(24 * 31), value: String(hours) }), " hours "),
    el("button", { type: "submit" }, "Replay"));
  form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#/whatif?hours=" + encodeURIComponent(form.hours.value) + "&run=1"; });
  view.replaceChildren(el("h1", {}, "What if"), el("p", {}, "The tasks of a window replayed through this server's scheduler settings on a virtual clock, beside what really happened (shepherd simulate --from-history does the same with other settings)."), form);
  if (!params.get("run")) return;
  const status = el("p", { id: "whatif-status" }, "Replaying…");
  view.append(status);
  const from = new Date(Date.now() - hours * 3600 * 1000).toISOString();
  const r = await api("/v1/history/replay?from=" + encodeURIComponent(from));
  current(mine);
  // The plot is Shepherd's own SVG, shown as an image: nothing in it runs.
  const img = el("img", { id: "whatif-plot", alt: "CPU allocated and tasks waiting, real and replayed", src: "data:image/svg+xml;base64," + btoa(unescape(encodeURIComponent(r.plot))) });
  status.replaceWith(el("pre", { id: "whatif-table" }, r.table), img);
}

async function projects(mine) {
  const [list, usage] = await Promise.all([api("/v1/projects"), api("/v1/usage?by=day")]);
  current(mine);
  const used = {};
  for (const u of usage.usage) {
    const s = (used[u.project] ||= { tasks: 0, cpu: 0, wall: 0 });
    s.tasks += u.tasks; s.cpu += u.cpu_seconds; s.wall += u.wall_seconds;
  }
  const limit = (v) => (v === null || v === undefined ? "—" : String(v));
  const rows = list.projects.map((p) => {
    const u = used[p.name] || { tasks: 0, cpu: 0, wall: 0 };
    return el("tr", { "data-project": p.name }, el("td", {}, p.name),
      el("td", {}, limit(p.limits.max_running)), el("td", {}, limit(p.limits.max_queued)),
      el("td", {}, limit(p.limits.max_cpu_millicores)), el("td", {}, limit(p.limits.max_memory_mib)),
      el("td", {}, String(u.tasks)), el("td", {}, u.cpu.toFixed(1)), el("td", {}, u.wall.toFixed(1)));
  });
  view.replaceChildren(el("h1", {}, "Projects"), el("table", { id: "projects" },
    el("thead", {}, el("tr", {}, ["Project", "Max running", "Max queued", "Max CPU (m)", "Max memory (MiB)", "Tasks (24 h)", "CPU-seconds (24 h)", "Wall-seconds (24 h)"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

async function audit(mine) {
  const list = await api("/v1/audit?limit=200");
  current(mine);
  view.replaceChildren(el("h1", {}, "Audit log"), el("table", { id: "audit" },
    el("thead", {}, el("tr", {}, ["When", "Who", "Project", "Action", "Target"].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.entries.map((e) => el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.actor),
      el("td", {}, e.project || ""), el("td", {}, e.action), el("td", { class: "mono" }, e.target))))));
}

// ---- login and routing ----

function showLogin(message) {
  closePage();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  view.replaceChildren(document.getElementById("login").content.cloneNode(true));
  const error = document.getElementById("login-error");
  if (message) { error.textContent = message; error.hidden = false; }
  document.getElementById("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = document.getElementById("token").value.trim();
    session = { token };
    try {
      const listed = await api("/v1/projects");
      const admin = (await fetch("/v1/nodes", { headers: { authorization: "Bearer " + token } })).status === 200;
      session = { token, admin, project: admin ? null : listed.projects[0]?.name };
      sessionStorage.setItem("shepherd", JSON.stringify(session));
      route();
    } catch (err) {
      session = null;
      showLogin("Could not log in: " + err.message);
    }
  });
}

function logout() {
  sessionStorage.removeItem("shepherd");
  session = null;
  showLogin();
}

async function route() {
  closePage();
  const mine = ++generation;
  if (!session) return showLogin();
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = session.admin ? "admin" : "project " + session.project;
  document.querySelectorAll("[data-admin]").forEach((a) => (a.hidden = !session.admin));
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#" + path));
  try {
    if (path === "/") await overview(mine);
    else if (path === "/tasks") await tasks(params, mine);
    else if (path.startsWith("/task/")) await task(decodeURIComponent(path.slice(6)), mine);
    else if (path === "/arrays") await arrays(params, mine);
    else if (path.startsWith("/array/")) await array(decodeURIComponent(path.slice(7)), mine);
    else if (path === "/nodes") await nodes(mine);
    else if (path === "/whatif") await whatif(params, mine);
    else if (path === "/projects") await projects(mine);
    else if (path === "/audit") await audit(mine);
    else view.replaceChildren(el("p", {}, "No such page."));
    if (mine === generation) view.dataset.page = path;
  } catch (e) {
    // Logged out (the login form shows), or another page took over.
    if (!session || mine !== generation) return;
    view.replaceChildren(el("p", { class: "error", id: "page-error" }, e.message));
  }
}

document.getElementById("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
