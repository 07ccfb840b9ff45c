// wgpu dashboard: plain JS, no build step, nothing from a CDN.
// One live feed (GET /events, read with fetch so the API key travels in a header, never in a
// URL); REST calls for job detail, outputs, cancel, retry and submit. The key, when the hub
// needs one, lives in this tab's sessionStorage only.
"use strict";

const KEY_STORE = "wgpu.apiKey";
const state = { workers: [], queue: null, jobs: [], status: "", text: "", detail: null, blobs: [] };
const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------- auth and REST

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

let keyWaiters = [];
function askForKey(message) {
  setFeedState("key needed");
  const dialog = $("#key-dialog");
  const error = $("#key-error");
  error.hidden = !message;
  error.textContent = message || "";
  if (!dialog.open) dialog.showModal();
  $("#key-input").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function keyEntered(event) {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("#key-input").value = "";
  $("#key-dialog").close();
  $("#forget-key").hidden = false;
  const waiters = keyWaiters;
  keyWaiters = [];
  waiters.forEach((resolve) => resolve());
}

async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
    if (response.status !== 401) return response;
    const hadKey = Boolean(apiKey());
    sessionStorage.removeItem(KEY_STORE);
    await askForKey(hadKey ? "that key was refused" : "");
  }
}

async function apiJson(path, options = {}) {
  const response = await api(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (!response.ok) {
    const error = new Error((body && body.error) || `HTTP ${response.status}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

// ---------------------------------------------------------------- the live feed

function setFeedState(text) {
  const pill = $("#feed-state");
  pill.textContent = text;
  pill.dataset.state = text;
}

function parseEvents(buffer, onEvent) {
  // Server-sent events: blocks separated by a blank line; returns the unparsed tail.
  const blocks = buffer.split(/\r?\n\r?\n/);
  const tail = blocks.pop();
  for (const block of blocks) {
    let kind = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "event") kind = value;
      else if (name === "data") data.push(value);
    }
    if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
  }
  return tail;
}

let feedAbort = null;
async function followFeed() {
  let delay = 500;
  for (;;) {
    feedAbort = new AbortController();
    const query = new URLSearchParams({ topics: "workers,queue,jobs", limit: String(JOB_LIST_LIMIT) });
    if (state.status) query.set("status", state.status);
    try {
      const response = await api(`/events?${query}`, {
        headers: { Accept: "text/event-stream" },
        signal: feedAbort.signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setFeedState("live");
      delay = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), onFeedEvent);
      }
    } catch (error) {
      if (error.name !== "AbortError") console.warn("feed:", error);
    }
    setFeedState("reconnecting");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

function refollow() {
  if (feedAbort) feedAbort.abort(); // the loop reconnects with the new filter at once
}

function onFeedEvent(kind, data) {
  if (kind === "workers") { state.workers = data.workers; renderWorkers(); }
  else if (kind === "queue") { state.queue = data; renderQueue(); }
  else if (kind === "jobs") {
    if ((data.status || "") !== state.status) return; // from before a filter change
    state.jobs = data.jobs;
    renderJobs();
    const open = state.detail && data.jobs.find((job) => job.id === state.detail.id);
    if (open) refreshDetail(open);
  } else if (kind === "job") {
    upsertJob(data.job);
    renderJobs();
    if (state.detail && data.job.id === state.detail.id) refreshDetail(data.job);
  }
}

function refreshDetail(job) {
  if (job.status !== state.detail.status || changed(job, state.detail)) openJob(job.id, false);
}

// The list as GET /jobs orders it: queued (priority, then age), running, then finished
// newest first; a changed job moves into, within or out of the filtered list.
const JOB_LIST_LIMIT = 200;
const ACTIVE_RANK = { queued: 0, assigned: 1, running: 1 };
function jobOrder(a, b) {
  const ra = ACTIVE_RANK[a.status] ?? 2;
  const rb = ACTIVE_RANK[b.status] ?? 2;
  if (ra !== rb) return ra - rb;
  if (ra === 0) return (b.priority - a.priority) || (a.created_at - b.created_at);
  if (ra === 1) return (a.started_at || 0) - (b.started_at || 0);
  return (b.finished_at || 0) - (a.finished_at || 0);
}

function upsertJob(job) {
  const at = state.jobs.findIndex((other) => other.id === job.id);
  if (at >= 0) state.jobs.splice(at, 1);
  if (state.status && job.status !== state.status) return;
  const before = state.jobs.findIndex((other) => jobOrder(job, other) < 0);
  state.jobs.splice(before < 0 ? state.jobs.length : before, 0, job);
  state.jobs.length = Math.min(state.jobs.length, JOB_LIST_LIMIT);
}

function changed(a, b) {
  return (a.outputs || []).length !== (b.outputs || []).length || a.attempts !== b.attempts;
}

// ---------------------------------------------------------------- rendering helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const shortId = (id) => (id || "").slice(0, 12);
const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleTimeString() : "");
function took(job) {
  if (!job.started_at) return "";
  const end = job.finished_at || Date.now() / 1000;
  return `${(end - job.started_at).toFixed(1)}s`;
}
function gib(mb) { return mb === null || mb === undefined ? "?" : (mb / 1024).toFixed(1); }
function vram(used, total) { return total ? `${gib(used)}/${gib(total)}` : "–"; }
function percentOf(progress) {
  if (!progress) return null;
  if (typeof progress.percent === "number") return progress.percent;
  if (progress.max) return (100 * progress.value) / progress.max;
  return null;
}
function statusBadge(status) { return el("span", { class: "status", dataset: { status } }, status); }

// ---------------------------------------------------------------- workers

function renderWorkers() {
  const machines = new Map();
  for (const worker of state.workers) {
    const machine = worker.machine_id || "?";
    if (!machines.has(machine)) machines.set(machine, []);
    machines.get(machine).push(worker);
  }
  const root = $("#machines");
  root.replaceChildren();
  if (!state.workers.length) root.append(el("p", { class: "dim" }, "no workers registered"));
  for (const [machine, workers] of [...machines].sort()) {
    workers.sort((a, b) => (a.gpu.index ?? 0) - (b.gpu.index ?? 0));
    root.append(el("div", { class: "machine", dataset: { machine } },
      el("h3", {}, machine, " ", el("span", { class: "dim" }, `${workers.length} GPU(s)`)),
      el("div", { class: "tiles" }, workers.map(workerTile))));
  }
  const busy = state.workers.filter((w) => w.status === "busy").length;
  const online = state.workers.filter((w) => w.connected).length;
  $("#workers-summary").textContent = `${online} connected, ${busy} busy`;
}

function vramBar(used, total) {
  const fill = el("i");
  fill.style.width = `${((100 * used) / total).toFixed(1)}%`; // CSSOM: allowed by the page's CSP
  return el("div", { class: "bar", title: "VRAM used" }, fill);
}

function workerTile(worker) {
  const stats = worker.gpu_stats || {};
  const total = stats.vram_total_mb || worker.gpu.vram_total_mb;
  const percent = percentOf(worker.progress);
  const drain = worker.drain ? worker.drain.state : null;
  const status = drain || worker.status;
  const warm = worker.warm ? Object.values(worker.warm).flat() : [];
  // `assigned`: the worker took it, but it waits in its ComfyUI's queue (not executing yet).
  const assigned = worker.current_job_status === "assigned";
  const job = worker.current_job
    ? el("div", { class: "job", dataset: { jobStatus: worker.current_job_status || "" } },
        el("a", { href: `#job=${worker.current_job}`, dataset: { jobId: worker.current_job } },
          shortId(worker.current_job)),
        assigned ? el("span", { class: "dim" }, " assigned, in ComfyUI's queue") : "",
        worker.progress && worker.progress.node ? ` node ${worker.progress.node}` : "",
        percent === null ? "" : ` ${percent.toFixed(0)}%`,
        el("progress", { max: "100", value: String(percent ?? 0) }))
    : el("div", { class: "job dim" }, worker.status === "idle" ? "waiting for work" : "");
  // Pipelining: a job done in ComfyUI whose outputs this worker still relays (it holds it).
  const relay = worker.relaying_job
    ? el("div", { class: "relay dim" }, "relaying outputs of ",
        el("a", { href: `#job=${worker.relaying_job}`, dataset: { jobId: worker.relaying_job } },
          shortId(worker.relaying_job)))
    : null;
  return el("div", { class: "tile", dataset: { worker: worker.id, status: worker.status } },
    el("div", { class: "title" }, el("span", {}, `gpu${worker.gpu.index ?? "?"}`), statusBadge(status)),
    el("div", { class: "gpu-name", title: worker.gpu.uuid || "" }, worker.gpu.name || "no GPU reported (simulated?)"),
    el("div", { class: "stats" },
      el("span", {}, "util", el("b", {}, stats.util_percent == null ? "–" : `${Math.round(stats.util_percent)}%`)),
      el("span", {}, "VRAM GiB", el("b", {}, vram(stats.vram_used_mb, total))),
      el("span", {}, "temp", el("b", {}, stats.temperature_c == null ? "–" : `${Math.round(stats.temperature_c)}°C`))),
    total && stats.vram_used_mb != null ? vramBar(stats.vram_used_mb, total) : null,
    job,
    relay,
    worker.quarantined ? el("div", { class: "error" }, `quarantined: ${worker.quarantined.reason}`) : null,
    warm.length ? el("div", { class: "meta", title: warm.join("\n") }, `warm: ${warm.join(", ")}`) : null,
    el("div", { class: "meta" },
      `${worker.id} · ${worker.jobs_done} done / ${worker.jobs_failed} failed`,
      worker.version ? ` · v ${String(worker.version).slice(0, 12)}` : "",
      worker.comfyui_ok === false ? " · ComfyUI down" : ""));
}

// ---------------------------------------------------------------- queue

function countRows(table, entries) {
  const body = $("tbody", table);
  body.replaceChildren(...entries.map(([name, n]) => el("tr", { dataset: { key: name } },
    el("td", {}, name), el("td", { class: "n" }, String(n)))));
  if (!entries.length) body.append(el("tr", {}, el("td", { class: "dim" }, "none")));
}

function renderQueue() {
  const queue = state.queue || {};
  countRows($("#counts-by-state"), Object.entries(queue.counts || {}));
  countRows($("#counts-by-priority"), Object.entries(queue.queued_by_priority || {})
    .sort((a, b) => Number(b[0]) - Number(a[0])));
  countRows($("#counts-by-tenant"), Object.entries(queue.queued_by_tenant || {})
    .map(([tenant, n]) => [tenant || "(no key)", n]));
}

// ---------------------------------------------------------------- jobs

function renderJobs() {
  const text = state.text.toLowerCase();
  const rows = state.jobs.filter((job) => !text || [job.id, job.worker_id, job.error && job.error.message,
    job.waiting_reason, job.owner].some((v) => v && String(v).toLowerCase().includes(text)));
  $("#jobs tbody").replaceChildren(...rows.map((job) => {
    const percent = percentOf(job.progress);
    const why = job.status === "queued" ? job.waiting_reason : job.error && `${job.error.type}: ${job.error.message}`;
    return el("tr", { dataset: { jobId: job.id, status: job.status }, onclick: () => openJob(job.id) },
      el("td", {}, el("code", {}, shortId(job.id))),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, String(job.priority)),
      el("td", {}, job.worker_id || ""),
      el("td", {}, percent === null ? "" : `${percent.toFixed(0)}%`),
      el("td", {}, when(job.created_at)),
      el("td", {}, took(job)),
      el("td", { class: "why" }, why || ""));
  }));
  if (!rows.length) $("#jobs tbody").append(el("tr", {}, el("td", { class: "dim", colspan: "8" }, "no jobs")));
}

function freeBlobs() {
  state.blobs.forEach((url) => URL.revokeObjectURL(url));
  state.blobs = [];
}

async function openJob(jobId, scroll = true) {
  let job;
  try {
    job = await apiJson(`/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    $("#job-detail").hidden = false;
    $("#detail-message").textContent = `cannot load job ${jobId}: ${error.message}`;
    return;
  }
  const sameOutputs = state.detail && state.detail.id === job.id &&
    JSON.stringify(state.detail.outputs) === JSON.stringify(job.outputs);
  state.detail = job;
  const section = $("#job-detail");
  section.hidden = false;
  section.dataset.jobId = job.id;
  section.dataset.status = job.status;
  $("#detail-id").textContent = job.id;
  const badge = $("#detail-status");
  badge.textContent = job.status;
  badge.dataset.status = job.status;
  const active = ["queued", "assigned", "running"].includes(job.status);
  $("#detail-cancel").disabled = !active;
  $("#detail-retry").disabled = active;
  $("#detail-message").textContent = job.waiting_reason ? `waiting: ${job.waiting_reason}` : "";
  const error = $("#detail-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.type}: ${job.error.message}${job.error.node_id ? ` (node ${job.error.node_id})` : ""}` : "";
  $("#detail-history tbody").replaceChildren(...(job.history || []).map((attempt) => el("tr", {},
    el("td", {}, String(attempt.attempt)), el("td", {}, attempt.worker_id || ""),
    el("td", {}, attempt.outcome), el("td", {}, attempt.error ? attempt.error.message : ""))));
  const { workflow, ...rest } = job;
  $("#detail-json").textContent = JSON.stringify(rest, null, 2);
  $("#detail-workflow").textContent = JSON.stringify(workflow, null, 2);
  if (!sameOutputs) await renderOutputs(job);
  if (scroll) section.scrollIntoView({ behavior: "instant", block: "start" });
}

async function renderOutputs(job) {
  freeBlobs();
  const root = $("#detail-outputs");
  root.replaceChildren();
  const outputs = job.outputs || [];
  if (!outputs.length) root.append(el("p", { class: "dim" }, job.status === "succeeded" ? "no outputs" : "none yet"));
  for (const output of outputs) {
    const box = el("div", { class: "output", dataset: { name: output.name } });
    root.append(box);
    try {
      // Outputs need the key too: fetched, then shown and offered through a blob: URL.
      const response = await api(output.url);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      state.blobs.push(url);
      const type = output.content_type || blob.type || "";
      if (type.startsWith("image/")) box.append(el("img", { src: url, alt: output.name }));
      else if (type.startsWith("video/")) box.append(el("video", { src: url, controls: true, loop: true, muted: true, autoplay: true }));
      else if (type.startsWith("audio/")) box.append(el("audio", { src: url, controls: true }));
      else if (type.startsWith("text/") || type === "application/json") box.append(el("pre", {}, (await blob.text()).slice(0, 4000)));
      box.append(el("div", { class: "caption" },
        el("span", {}, `${output.name} · ${type} · ${output.size ?? blob.size} B`),
        el("a", { href: url, download: output.name.split("/").pop() }, "download")));
    } catch (error) {
      box.append(el("div", { class: "error" }, `${output.name}: ${error.message}`));
    }
  }
  if (job.results && Object.keys(job.results).length) {
    root.append(el("pre", { class: "output" }, JSON.stringify(job.results, null, 2)));
  }
}

async function cancelJob() {
  if (!state.detail) return;
  try {
    await apiJson(`/jobs/${encodeURIComponent(state.detail.id)}`, { method: "DELETE" });
  } catch (error) {
    $("#detail-message").textContent = `cancel: ${error.message}`;
  }
  await openJob(state.detail.id, false);
}

async function retryJob() {
  // A new job with the same workflow and settings (the old one keeps its history).
  const job = state.detail;
  if (!job) return;
  const body = { workflow: job.workflow, priority: job.priority, timeout_s: job.timeout_s,
    max_attempts: job.max_attempts };
  for (const name of ["constraints", "webhook_url", "requires"]) {
    if (job[name] && Object.keys(job[name]).length !== 0) body[name] = job[name];
  }
  try {
    const created = await apiJson("/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    $("#detail-message").textContent = `retried as ${created.id}`;
    await openJob(created.id, false);
  } catch (error) {
    $("#detail-message").textContent = `retry: ${error.message}`;
  }
}

// ---------------------------------------------------------------- submit

const pending = { workflow: null, name: "", inputs: {} };

async function takeFiles(files) {
  const result = $("#submit-result");
  for (const file of files) {
    if (file.name.toLowerCase().endsWith(".json") && !pending.workflow) {
      try {
        const parsed = JSON.parse(await file.text());
        pending.workflow = parsed.prompt && typeof parsed.prompt === "object" ? parsed.prompt : parsed;
        pending.name = file.name;
      } catch (error) {
        result.textContent = `${file.name} is not JSON: ${error.message}`;
        return;
      }
    } else {
      pending.inputs[file.name] = file; // uploaded at submit (POST /uploads), not inlined
    }
  }
  $("#submit-form").hidden = !pending.workflow;
  $("#submit-workflow-name").textContent = pending.name;
  const names = Object.keys(pending.inputs);
  $("#submit-inputs").textContent = names.length ? `inputs: ${names.join(", ")}` : "";
  result.textContent = pending.workflow ? "" : "drop a workflow .json (API format) too";
}

function clearSubmit() {
  pending.workflow = null;
  pending.name = "";
  pending.inputs = {};
  $("#submit-form").hidden = true;
  $("#file-input").value = "";
}

async function submitJob() {
  const result = $("#submit-result");
  const body = { workflow: pending.workflow, priority: Number($("#submit-priority").value || 0) };
  $("#submit-button").disabled = true;
  try {
    // Each input goes up once, streamed (no size limit of a JSON body), and the job names it
    // by its content address.
    const inputs = {};
    for (const [name, file] of Object.entries(pending.inputs)) {
      result.textContent = `uploading ${name}`;
      const uploaded = await apiJson(`/uploads?name=${encodeURIComponent(name)}`, {
        method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file });
      inputs[name] = { ref: uploaded.ref };
    }
    if (Object.keys(inputs).length) body.inputs = inputs;
    const job = await apiJson("/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    result.textContent = `submitted ${job.id}`;
    result.dataset.jobId = job.id;
    clearSubmit();
    await openJob(job.id, false);
  } catch (error) {
    result.textContent = `the hub refused: ${error.message}`;
  } finally {
    $("#submit-button").disabled = false;
  }
}

// ---------------------------------------------------------------- start

function hashJob() {
  const match = /^#job=([0-9a-zA-Z_.:-]+)$/.exec(location.hash);
  if (match) openJob(match[1]);
}

async function start() {
  $("#key-form").addEventListener("submit", keyEntered);
  $("#forget-key").hidden = !apiKey();
  $("#forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); location.reload(); });
  $("#job-filter-status").addEventListener("change", (event) => { state.status = event.target.value; state.jobs = []; renderJobs(); refollow(); });
  $("#job-filter-text").addEventListener("input", (event) => { state.text = event.target.value; renderJobs(); });
  $("#detail-cancel").addEventListener("click", cancelJob);
  $("#detail-retry").addEventListener("click", retryJob);
  $("#detail-close").addEventListener("click", () => { $("#job-detail").hidden = true; state.detail = null; freeBlobs(); history.replaceState(null, "", "#"); });
  $("#submit-button").addEventListener("click", submitJob);
  $("#submit-clear").addEventListener("click", clearSubmit);
  $("#file-input").addEventListener("change", (event) => takeFiles([...event.target.files]));
  const zone = $("#drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); zone.classList.remove("over"); takeFiles([...event.dataTransfer.files]); });
  window.addEventListener("hashchange", hashJob);
  try {
    const health = await (await fetch("/health")).json();
    $("#hub-version").textContent = health.version ? `hub ${health.version}` : "";
  } catch { /* the feed says whether the hub is there */ }
  hashJob();
  followFeed();
}

document.addEventListener("DOMContentLoaded", start);
