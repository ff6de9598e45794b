// Dashboard of the email worker: plain JS against the /v1 API (no build step).
// Every value from the server is rendered with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "worker.adminToken";
const STATES = ["waiting", "delayed", "active", "completed", "retrying", "dead"];
const CARDS = [
  ["waiting", "Waiting"], ["delayed", "Delayed"], ["active", "Active"], ["completed", "Completed"],
  ["failed", "Failed attempts"], ["dead", "Dead"], ["throughput", "Jobs / min"],
];
const MAX_EVENTS = 60;

const ui = { queue: null, state: "waiting", view: "queue", overview: null, eventsAbort: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function token() { return localStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  if (res.status === 401 || res.status === 403) {
    showLogin("That token was refused (the dashboard needs the admin token).");
    throw new Error("unauthorized");
  }
  const body = res.status === 204 ? null : await res.json();
  if (!res.ok) throw new Error(body && body.message ? body.message : `HTTP ${res.status}`);
  return body;
}

function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (ok ? "ok" : "bad");
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (Math.abs(s) < 60) return s >= 0 ? `${s}s ago` : `in ${-s}s`;
  if (Math.abs(s) < 3600) return s >= 0 ? `${Math.round(s / 60)}m ago` : `in ${Math.round(-s / 60)}m`;
  return new Date(iso).toLocaleString();
}

function progressBar(p, state) {
  if (state === "complete") p = 100;
  if (p === null || p === undefined) return "";
  if (typeof p === "number") {
    const bar = el("span", { class: "bar" }, el("span", { class: "fill", style: `width:${p}%` }));
    return el("span", { class: "progress" }, bar, ` ${Math.round(p)}%`);
  }
  return JSON.stringify(p);
}

// -- queues -------------------------------------------------------------------------------------

async function refreshQueues() {
  const ov = await api("/v1/queues");
  ui.overview = ov;
  if (!ui.queue || !ov.queues.some((q) => q.name === ui.queue)) {
    const busiest = ov.queues.find((q) => q.waiting + q.active + q.completed + q.dead > 0);
    ui.queue = (busiest || ov.queues[0]).name;
  }
  const list = $("queues");
  list.replaceChildren(...ov.queues.map((q) => el("li", {},
    el("a", {
      href: "#", class: "queue-link" + (q.name === ui.queue && ui.view === "queue" ? " selected" : ""),
      dataset: { queue: q.name }, onclick: (e) => { e.preventDefault(); selectQueue(q.name); },
    },
    el("span", { class: "qname" }, q.name),
    q.paused ? el("span", { class: "badge paused" }, "paused") : "",
    el("span", { class: "badges" },
      el("span", { class: "badge waiting", title: "waiting" }, String(q.waiting)),
      el("span", { class: "badge active", title: "active" }, String(q.active)),
      el("span", { class: "badge dead", title: "dead" }, String(q.dead)))))));
  $("dlq-count").textContent = String(ov.dead_letters);
  const done = ov.queues.reduce((n, q) => n + q.completed, 0);
  $("totals").textContent = `${done} completed · ${ov.dead_letters} dead letters`;
  renderQueue();
}

function renderQueue() {
  const q = ui.overview && ui.overview.queues.find((x) => x.name === ui.queue);
  if (!q) return;
  $("queue-title").textContent = q.name;
  $("paused-flag").hidden = !q.paused;
  $("pause").textContent = q.paused ? "Resume" : "Pause";
  $("cards").replaceChildren(...CARDS.map(([key, label]) => {
    const value = key === "throughput" ? (q.throughput === null ? "–" : String(q.throughput)) : String(q[key]);
    return el("div", { class: `card count ${key}`, dataset: { count: key } },
      el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  }));
  $("tabs").replaceChildren(...STATES.map((s) => el("button", {
    class: "tab" + (s === ui.state ? " selected" : ""), dataset: { state: s },
    onclick: () => { ui.state = s; renderQueue(); refreshJobs().catch(report); },
  }, s)));
}

async function refreshJobs() {
  if (ui.view !== "queue" || !ui.queue) return;
  const jobs = await api(`/v1/queues/${encodeURIComponent(ui.queue)}/jobs?state=${ui.state}&limit=50`);
  $("jobs").replaceChildren(...jobs.map((j) => el("tr", { dataset: { job: j.job_id }, onclick: () => openJob(j.job_id).catch(report) },
    el("td", { class: "mono" }, j.job_id),
    el("td", {}, j.function || ""),
    el("td", {}, j.tenant_id || ""),
    el("td", {}, el("span", { class: `state ${j.state}` }, j.state)),
    el("td", {}, String(j.attempts)),
    el("td", {}, progressBar(j.progress, j.state)),
    el("td", { title: j.enqueued_at || "" }, ago(j.enqueued_at)),
    el("td", { class: "error" }, j.error || ""))));
  $("jobs-empty").hidden = jobs.length > 0;
}

// Job groups of the selected queue (fair share between tenants): counts and pause/resume per group.
async function refreshGroups() {
  if (ui.view !== "queue" || !ui.queue) return;
  const page = await api(`/v1/queues/${encodeURIComponent(ui.queue)}/groups?limit=20`);
  $("groups-block").hidden = page.items.length === 0;
  $("groups-count").textContent = `(${page.groups} with work, the busiest ${page.items.length})`;
  $("groups").replaceChildren(...page.items.map((g) => el("tr", { dataset: { group: g.group } },
    el("td", {}, g.group, g.paused ? el("span", { class: "badge paused" }, "paused") : ""),
    el("td", {}, String(g.waiting)), el("td", {}, String(g.delayed)), el("td", {}, String(g.active)),
    el("td", {}, el("button", { class: "link", onclick: () => toggleGroup(g).catch(report) },
      g.paused ? "resume" : "pause")))));
}

async function toggleGroup(g) {
  const path = `/v1/queues/${encodeURIComponent(ui.queue)}/groups/${encodeURIComponent(g.group)}`;
  await api(`${path}/${g.paused ? "resume" : "pause"}`, { method: "POST" });
  await refreshGroups();
}

function selectQueue(name) {
  ui.queue = name;
  ui.view = "queue";
  $("queue-view").hidden = false;
  $("dlq-view").hidden = true;
  $("quarantine-view").hidden = true;
  $("accounts-view").hidden = true;
  $("outbox-view").hidden = true;
  refreshQueues().then(refreshJobs).then(refreshGroups).catch(report);
}

async function togglePause() {
  const q = ui.overview.queues.find((x) => x.name === ui.queue);
  await api(`/v1/queues/${encodeURIComponent(q.name)}/${q.paused ? "resume" : "pause"}`, { method: "POST" });
  await refreshQueues();
}

// -- job detail ---------------------------------------------------------------------------------

async function openJob(jobId) {
  const j = await api(`/v1/jobs/${encodeURIComponent(jobId)}?detail=true`);
  $("detail-title").textContent = `${j.function || "job"} · ${j.job_id}`;
  const fields = [["State", j.state], ["Queue", j.queue], ["Tenant", j.tenant_id], ["Attempts", j.attempts],
    ["Progress", j.progress === undefined ? "" : JSON.stringify(j.progress)],
    ["Enqueued", j.enqueued_at], ["Run at", j.run_at], ["Finished", j.finished_at]];
  $("detail-fields").replaceChildren(...fields.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  $("detail-payload").textContent = JSON.stringify(j.payload ?? null, null, 2);
  $("detail-result-block").hidden = j.result === undefined;
  $("detail-result").textContent = JSON.stringify(j.result ?? null, null, 2);
  $("detail-error-block").hidden = !j.error;
  $("detail-error").textContent = j.error || "";
  $("detail-tb-block").hidden = !j.traceback;
  $("detail-traceback").textContent = j.traceback || "";
  $("detail-events").replaceChildren(...(j.events || []).map((e) => el("li", {},
    el("span", { class: `state ${e.type}` }, e.type), " ", el("span", { class: "muted" }, new Date(e.at).toLocaleTimeString()),
    " ", Object.keys(e.fields || {}).length ? JSON.stringify(e.fields) : "")));
  $("detail").showModal();
}

// -- dead letters -------------------------------------------------------------------------------

function showDeadLetters() {
  ui.view = "dlq";
  $("queue-view").hidden = true;
  $("quarantine-view").hidden = true;
  $("outbox-view").hidden = true;
  $("dlq-view").hidden = false;
  $("accounts-view").hidden = true;
  refreshQueues().then(refreshDead).catch(report);
}

// -- mail accounts (auth type and state; an account in auth_error needs new credentials) ---------------

const TENANT_KEY = "worker.accountsTenant";

function showAccounts() {
  ui.view = "accounts";
  $("queue-view").hidden = true;
  $("dlq-view").hidden = true;
  $("quarantine-view").hidden = true;
  $("outbox-view").hidden = true;
  $("accounts-view").hidden = false;
  $("accounts-tenant").value = localStorage.getItem(TENANT_KEY) || "";
  refreshAccounts().catch(report);
}

async function refreshAccounts() {
  const tenant = localStorage.getItem(TENANT_KEY);
  if (ui.view !== "accounts" || !tenant) return;
  const accounts = await api(`/v1/tenants/${encodeURIComponent(tenant)}/accounts`);
  $("accounts").replaceChildren(...accounts.map((a) => el("tr", { dataset: { account: a.id } },
    el("td", { class: "mono" }, a.id),
    el("td", {}, a.email),
    el("td", { dataset: { field: "auth_type" } }, a.auth_type),
    el("td", { dataset: { field: "auth_state" } },
      el("span", { class: `state ${a.auth_state === "ok" ? "completed" : "dead"}` }, a.auth_state)),
    el("td", { class: "error" }, a.auth_error || ""),
    el("td", {}, a.active ? "on" : "off"))));
  $("accounts-empty").hidden = accounts.length > 0;
}

async function refreshDead() {
  if (ui.view !== "dlq") return;
  const page = await api("/v1/dead-letters?limit=100");
  $("dead").replaceChildren(...page.items.map((d) => el("tr", { dataset: { job: d.job_id } },
    el("td", { class: "mono link", onclick: () => openJob(d.job_id).catch(report) }, d.job_id),
    el("td", {}, d.function),
    el("td", {}, d.queue),
    el("td", {}, String(d.attempts)),
    el("td", { title: d.failed_at }, ago(d.failed_at)),
    el("td", { class: "error" }, d.error),
    el("td", { class: "actions" },
      el("button", { dataset: { action: "retry" }, onclick: () => retryDead(d.job_id).catch(report) }, "Retry"),
      el("button", { class: "danger", dataset: { action: "purge" }, onclick: () => purgeDead([d.job_id]).catch(report) }, "Purge")))));
  $("dead-empty").hidden = page.items.length > 0;
}

async function retryDead(jobId) {
  const r = await api(`/v1/dead-letters/${encodeURIComponent(jobId)}/retry`, {
    method: "POST", headers: { "Idempotency-Key": `dashboard-retry-${jobId}` },
  });
  flash(`Retried ${jobId} as ${r.job_id}`);
  await refreshQueues();
  await refreshDead();
}

async function purgeDead(ids) {
  const body = ids ? { job_ids: ids } : { all: true };
  if (!ids && !confirm("Delete every dead letter? This cannot be undone.")) return;
  const r = await api("/v1/dead-letters/purge", { method: "POST", body: JSON.stringify(body) });
  flash(`Purged ${r.purged} dead letter(s)`);
  await refreshQueues();
  await refreshDead();
}

// -- quarantined messages (per tenant) ---------------------------------------------------------------

function showQuarantine() {
  ui.view = "quarantine";
  for (const id of ["queue-view", "dlq-view", "outbox-view", "accounts-view"]) $(id).hidden = true;
  $("quarantine-view").hidden = false;
  refreshQuarantine().catch(report);
}

async function refreshQuarantine() {
  const tenant = $("quarantine-tenant").value.trim();
  if (ui.view !== "quarantine" || !tenant) return;
  const items = await api(`/v1/tenants/${encodeURIComponent(tenant)}/quarantine`);
  $("quarantined").replaceChildren(...items.map((q) => el("tr", { dataset: { quarantine: q.id } },
    el("td", { class: "mono" }, q.account_id),
    el("td", {}, q.mailbox),
    el("td", {}, String(q.uid)),
    el("td", {}, q.size == null ? "" : String(q.size)),
    el("td", {}, String(q.attempts)),
    el("td", { title: q.last_seen }, ago(q.last_seen)),
    el("td", { class: "error" }, q.error),
    el("td", { class: "actions" },
      el("button", { dataset: { action: "retry" }, onclick: () => retryQuarantined(tenant, q.id).catch(report) }, "Retry")))));
  $("quarantine-empty").hidden = items.length > 0;
}

async function retryQuarantined(tenant, id) {
  const r = await api(`/v1/tenants/${encodeURIComponent(tenant)}/quarantine/${encodeURIComponent(id)}/retry`, {
    method: "POST", headers: { "Idempotency-Key": `dashboard-quarantine-${id}-${Date.now()}` },
  });
  flash(`Retrying ${id} as job ${r.job_id}`);
}

// -- watches: IMAP IDLE watchers of the fleet ---------------------------------------------------------

function showWatches() {
  ui.view = "watches";
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "watches-view";
  refreshWatches().catch(report);
}

const WATCH_STATE_CLASS = { connected: "completed", backing_off: "retrying", auth_error: "dead" };

async function refreshWatches() {
  const fleet = await api("/v1/watches?limit=2000");
  const s = fleet.summary;
  $("watches-count").textContent = `${s.connected}/${s.watched}`;
  if (ui.view !== "watches") return;
  $("watches-summary").textContent = `${s.processes} process(es): ${s.watched} watched, ${s.connected} connected, ` +
    `${s.backing_off} backing off, ${s.auth_error} in auth_error`;
  $("watches").replaceChildren(...fleet.watches.map((w) => el("tr", { dataset: { account: w.account_id, mailbox: w.mailbox } },
    el("td", {}, w.tenant_id),
    el("td", { class: "mono" }, w.account_id),
    el("td", {}, w.mailbox),
    el("td", { dataset: { field: "state" } }, el("span", { class: `state ${WATCH_STATE_CLASS[w.state] || ""}` }, w.state)),
    el("td", {}, w.mode || ""),
    el("td", { class: "mono" }, w.owner || ""),
    el("td", { title: w.connected_since || "" }, w.connected_since ? ago(w.connected_since) : ""),
    el("td", { title: w.last_event || "" }, w.last_event ? ago(w.last_event) : ""),
    el("td", { class: "error" }, w.last_error || ""))));
  $("watches-empty").hidden = fleet.watches.length > 0;
}

// -- outbox: ambiguous sends -------------------------------------------------------------------------

function showOutbox() {
  ui.view = "outbox";
  $("queue-view").hidden = true;
  $("dlq-view").hidden = true;
  $("quarantine-view").hidden = true;
  $("accounts-view").hidden = true;
  $("outbox-view").hidden = false;
  refreshOutbox().catch(report);
}

async function refreshOutbox() {
  const items = await api("/v1/outbox/ambiguous?limit=500");
  $("outbox-count").textContent = String(items.length);
  if (ui.view !== "outbox") return;
  const action = (i, name, label, cls) => el("button", {
    class: cls || "", dataset: { action: name }, onclick: () => decide(i, name).catch(report),
  }, label);
  $("outbox").replaceChildren(...items.map((i) => el("tr", { dataset: { outbox: i.id } },
    el("td", {}, i.tenant_id),
    el("td", { class: "mono", title: i.message_id }, i.id),
    el("td", {}, i.to.join(", ")),
    el("td", {}, i.subject),
    el("td", { title: i.updated_at }, ago(i.updated_at)),
    el("td", { class: "error" }, i.last_error || ""),
    el("td", { class: "actions" },
      action(i, "mark_sent", "Mark sent"), action(i, "resend", "Resend"), action(i, "fail", "Fail", "danger")))));
  $("outbox-empty").hidden = items.length > 0;
}

async function decide(item, action) {
  if (action !== "mark_sent" && !confirm(`${action === "resend" ? "Send it again" : "Give up on it"}? (${item.id})`)) return;
  const r = await api(`/v1/tenants/${encodeURIComponent(item.tenant_id)}/outbox/${encodeURIComponent(item.id)}/resolve`, {
    method: "POST", body: JSON.stringify({ action, note: "dashboard" }),
  });
  flash(`${item.id}: ${r.status}`);
  await refreshOutbox();
}

// -- outcome journal: the fleet's totals of replayed journals of dead workers ----------------------

const JOURNAL_FIELDS = [
  ["journals", "Journals replayed"], ["recorded", "Outcomes recorded"], ["discarded", "Discarded (fenced out)"],
  ["expired", "Expired (lost)"], ["expired_batches", "Batches dropped"],
];

async function refreshJournal() {
  const t = await api("/v1/journal");
  const last = t.last_replay_at ? `${ago(t.last_replay_at)} on ${t.last_replay_host}` : "never";
  $("journal").replaceChildren(
    ...JOURNAL_FIELDS.flatMap(([key, label]) => [el("dt", {}, label),
      el("dd", { dataset: { field: key }, class: key.startsWith("expired") && t[key] ? "error" : "" }, String(t[key]))]),
    el("dt", {}, "Last replay"), el("dd", { dataset: { field: "last" }, title: t.last_replay_at || "" }, last));
}

// -- live events (SSE over fetch, so the token travels in a header) --------------------------------

async function followEvents() {
  if (ui.eventsAbort) ui.eventsAbort.abort();
  const ctl = new AbortController();
  ui.eventsAbort = ctl;
  for (;;) {
    try {
      const res = await fetch("/v1/events", { headers: { Authorization: `Bearer ${token()}` }, signal: ctl.signal });
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").find((l) => l.startsWith("data: "));
          if (data) addEvent(JSON.parse(data.slice(6)));
        }
      }
    } catch (err) {
      if (ctl.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function addEvent(e) {
  const list = $("events");
  const detail = e.fields && e.fields.progress !== undefined ? ` ${JSON.stringify(e.fields.progress)}`
    : e.fields && e.fields.error ? ` ${e.fields.error}` : "";
  list.prepend(el("li", { onclick: () => e.job_id && openJob(e.job_id).catch(report) },
    el("span", { class: `state ${e.type}` }, e.type), " ",
    el("span", { class: "mono" }, e.job_id || ""), " ",
    el("span", { class: "muted" }, `${e.function || ""} ${e.queue || ""}${detail}`)));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// -- plumbing -----------------------------------------------------------------------------------

function flash(text) { setStatus(text, true); }

function report(err) {
  if (err && err.message !== "unauthorized") setStatus(String(err.message || err), false);
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("login-error").textContent = message || "";
}

let timer = null;
async function tick() {
  try {
    await refreshQueues();
    if (ui.view === "queue") await refreshJobs().then(refreshGroups);
    else if (ui.view === "dlq") await refreshDead();
    else if (ui.view === "quarantine") await refreshQuarantine();
    else if (ui.view === "accounts") await refreshAccounts();
    await refreshOutbox();
    await refreshWatches();
    await refreshJournal();
    setStatus(`live · ${new Date().toLocaleTimeString()}`, true);
  } catch (err) {
    report(err);
  }
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  tick();
  clearInterval(timer);
  timer = setInterval(tick, 1500);
  followEvents();
}

document.addEventListener("DOMContentLoaded", () => {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    localStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname);
  }
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value);
    start();
  });
  $("logout").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); clearInterval(timer); showLogin(); });
  $("pause").addEventListener("click", () => togglePause().catch(report));
  $("dlq-link").addEventListener("click", (e) => { e.preventDefault(); showDeadLetters(); });
  $("quarantine-link").addEventListener("click", (e) => { e.preventDefault(); showQuarantine(); });
  $("quarantine-form").addEventListener("submit", (e) => { e.preventDefault(); refreshQuarantine().catch(report); });
  $("outbox-link").addEventListener("click", (e) => { e.preventDefault(); showOutbox(); });
  $("watches-link").addEventListener("click", (e) => { e.preventDefault(); showWatches(); });
  document.querySelector("nav").addEventListener("click", (e) => {  // any other view hides the watches
    if (e.target.closest("a") && !e.target.closest("#watches-link")) $("watches-view").hidden = true;
  });
  $("purge-all").addEventListener("click", () => purgeDead(null).catch(report));
  $("accounts-link").addEventListener("click", (e) => { e.preventDefault(); showAccounts(); });
  $("accounts-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TENANT_KEY, $("accounts-tenant").value.trim());
    refreshAccounts().catch(report);
  });
  $("detail-close").addEventListener("click", () => $("detail").close());
  if (token()) start(); else showLogin();
});
