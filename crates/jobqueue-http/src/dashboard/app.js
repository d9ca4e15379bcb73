// The jobqueue dashboard: plain JavaScript, no framework, no build step.
//
// - Data comes only from the API (relative URLs, so the page also works
//   mounted under a prefix). Every request carries the token: the
//   `Authorization` header for fetch, `?token=` for EventSource (which
//   cannot set headers). The page is opened as `/?token=<token>` (the
//   server asks for the token on every route but /health); the token is
//   kept in this tab's sessionStorage, and asked for again when refused.
// - Live updates: one EventSource on `/events`, started after the
//   `last_event_seq` of `/stats`, so it replays only what happened since the
//   page read its data. Progress moves bars in place; other events update
//   the job at once and then re-read it from the API (debounced), so the
//   page ends on the server's truth. The server sends `retry: 2000` and
//   `id: <seq>`: EventSource reconnects by itself with `Last-Event-ID` and
//   misses nothing; when it gave up (an error status) the page opens a new
//   one after the last seq it saw. After any reconnection the page re-reads
//   its data.
// - Untrusted text (job input, results, errors, names) only ever reaches the
//   DOM as text: elements are made with createElement and filled with text
//   nodes; no HTML string is ever parsed.
"use strict";

(() => {
  const TOKEN_KEY = "jobqueue.token";
  const STATUSES = ["queued", "running", "completed", "failed", "cancelled", "stale"];
  const FINISHED = new Set(["completed", "failed", "cancelled", "stale"]);
  const EVENT_TYPES = [
    "job.created", "job.started", "job.phase.started", "job.phase.progress",
    "job.phase.completed", "job.phase.failed", "job.completed", "job.failed",
    "job.cancelled", "job.retried", "job.interrupted", "job.stale", "job.deleted",
    "pipeline.paused", "pipeline.resumed",
    "job.snoozed",
  ];
  const PAGE_SIZE = 50;
  const HISTORY_MAX = 500;
  const RECONNECT_MS = 2000;

  const base = new URL(".", location.href);
  const $main = document.getElementById("main");
  const $conn = document.getElementById("conn");
  const $forget = document.getElementById("forget");

  const state = {
    lastSeq: 0,          // the last event seen on the stream of every job
    stats: null,
    // The server's pipelines (`/pipelines`): name -> paused; null until read.
    pipelines: null,
    jobs: new Map(),     // id -> job (as the API answers it), for the jobs on screen
    list: null,          // the jobs view, when it is open
    view: null,          // the job view, when it is open
    es: null,            // the EventSource of every job's events
    streamDown: false,   // the stream failed since it last opened
    notice: null,        // a message to show on the next view
    // The last progress event of each phase, by job id then phase name,
    // also of jobs not on screen yet: a job read from the API while its
    // progress events arrive shows the newest value either way.
    progress: new Map(),
    loading: 0,          // reads of jobs in flight
    missed: new Set(),   // jobs with a state change while a read was in flight
  };

  // ---------------------------------------------------------------- DOM

  // An element with attributes and children; strings become text nodes.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function badge(status, id) {
    return h("span", { class: "badge", id, dataset: { status } }, status);
  }

  function setConn(kind, text) {
    $conn.dataset.state = kind;
    $conn.textContent = text || kind;
  }

  function showAlert(el, error) {
    el.textContent = error.status
      ? `${error.message} (${error.code}, HTTP ${error.status})`
      : error.message;
    el.hidden = false;
  }

  // ---------------------------------------------------------------- format

  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(iso) {
    if (!iso) return "—";
    const t = new Date(iso);
    if (Number.isNaN(t.getTime())) return String(iso);
    return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ` +
      `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`;
  }

  function fmtDuration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "—";
    const s = ms / 1000;
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 60) return `${Math.round(s)}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`;
    const hours = Math.floor(m / 60);
    if (hours < 48) return `${hours}h ${pad(m % 60)}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  function ago(iso) {
    const ms = Date.now() - new Date(iso).getTime();
    if (!Number.isFinite(ms)) return "—";
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  // A time that says how long ago it was, kept current by tick().
  function agoEl(iso) {
    return h("time", { datetime: iso, title: fmtTime(iso), dataset: { ago: iso } }, ago(iso));
  }

  // How long from `from` to `to`, or to now (kept current by tick()).
  function tookEl(from, to) {
    if (!from) return "—";
    if (to) return fmtDuration(new Date(to) - new Date(from));
    return h("span", { dataset: { since: from } }, fmtDuration(Date.now() - new Date(from)));
  }

  function tick() {
    for (const el of document.querySelectorAll("[data-ago]")) el.textContent = ago(el.dataset.ago);
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = fmtDuration(Date.now() - new Date(el.dataset.since));
    }
  }

  const pretty = (value) => JSON.stringify(value, null, 2);

  function compact(value, max) {
    const text = JSON.stringify(value);
    if (text === undefined) return "";
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  // ---------------------------------------------------------------- API

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  // The `?token=` the page was opened with (the server asks for one on
  // every route but /health, the page included) is kept for this tab. It
  // stays in the address bar, so a reload opens the page again.
  function takeTokenFromUrl() {
    const url = new URL(location.href);
    if (!url.searchParams.has("token")) return;
    sessionStorage.setItem(TOKEN_KEY, url.searchParams.get("token"));
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, base), init);
    } catch (e) {
      throw new ApiError(0, "network", `cannot reach the server (${e.message})`);
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error;
      throw new ApiError(
        response.status,
        error ? error.code : "http",
        error ? error.message : `the server answered ${response.status}`,
      );
    }
    return data;
  }

  // An EventSource on `path` (relative) with the token and `after`.
  function eventSource(path, after) {
    const url = new URL(path, base);
    if (after) url.searchParams.set("after", String(after));
    if (token()) url.searchParams.set("token", token());
    return new EventSource(url);
  }

  // What every failed call does first: a 401 asks for the token again.
  function handled(error) {
    if (error.status === 401) {
      askToken(error);
      return true;
    }
    return false;
  }

  // ---------------------------------------------------------------- start

  function boot() {
    takeTokenFromUrl();
    $forget.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
    });
    window.addEventListener("hashchange", route);
    setInterval(tick, 1000);
    start();
  }

  async function start() {
    try {
      await loadStats();
    } catch (e) {
      if (handled(e)) return;
      setConn("offline", "offline");
      $main.replaceChildren(h("div", { class: "alert", role: "alert" },
        `${e.message}. Trying again…`));
      setTimeout(start, RECONNECT_MS);
      return;
    }
    $forget.hidden = !token();
    openStream();
    route();
  }

  function askToken(error) {
    closeStreams();
    setConn("offline", "token needed");
    const input = h("input", {
      id: "token", type: "password", autocomplete: "current-password",
      placeholder: "token", "aria-label": "token", required: true,
    });
    const form = h("form", {
      id: "token-form",
      onsubmit: (e) => {
        e.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        start();
      },
    }, input, h("button", { class: "primary", type: "submit" }, "Open"));
    $main.replaceChildren(h("div", { class: "card login" },
      h("h2", {}, "This server needs a token"),
      token() ? h("div", { class: "alert", role: "alert" }, `The token was refused: ${error.message}`) : null,
      form,
      h("p", { class: "muted" },
        "The token is set in the server's config. The dashboard keeps it in this tab only and sends it with every request.")));
    sessionStorage.removeItem(TOKEN_KEY);
    input.focus();
  }

  function closeStreams() {
    if (state.es) state.es.close();
    state.es = null;
    if (state.view && state.view.es) state.view.es.close();
  }

  // ---------------------------------------------------------------- events

  function openStream() {
    if (state.es) state.es.close();
    const es = eventSource("events", state.lastSeq);
    state.es = es;
    es.onopen = () => {
      if (state.es !== es) return;
      setConn("live", "live");
      if (state.streamDown) {
        state.streamDown = false;
        refreshAll();
      }
    };
    es.onerror = () => {
      if (state.es !== es) return;
      state.streamDown = true;
      setConn("reconnecting", "reconnecting");
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an error answer, not a lost connection):
        // check the token, then start again after the last event seen.
        setTimeout(async () => {
          if (state.es !== es) return;
          try {
            await api("GET", "stats");
            openStream();
          } catch (e) {
            if (!handled(e)) es.onerror();
          }
        }, RECONNECT_MS);
      }
    };
    for (const type of EVENT_TYPES) es.addEventListener(type, onEvent);
  }

  function parseEvent(message) {
    try {
      const event = JSON.parse(message.data);
      return event && typeof event === "object" ? event : null;
    } catch (e) {
      return null;
    }
  }

  function onEvent(message) {
    const event = parseEvent(message);
    if (!event) return;
    if (typeof event.seq === "number") {
      if (event.seq <= state.lastSeq) return;
      state.lastSeq = event.seq;
    }
    if (event.type === "pipeline.paused" || event.type === "pipeline.resumed") {
      // About a pipeline, not a job (its job_id is null).
      if (state.pipelines && state.pipelines.has(event.pipeline)) {
        state.pipelines.set(event.pipeline, event.type === "pipeline.paused");
        if (state.list) renderCounts(state.list);
      }
      return;
    }
    const job = state.jobs.get(event.job_id);
    if (event.type === "job.phase.progress") {
      const d = event.data || {};
      remember(event.job_id, d.phase, { percent: d.percent, message: d.message });
      const phase = job && phaseNamed(job, d.phase);
      if (phase) {
        phase.progress = { percent: d.percent, message: d.message };
        progressChanged(job, phase);
      }
      return;
    }
    if (event.type === "job.phase.started") remember(event.job_id, event.data && event.data.phase, null);
    if (state.loading) state.missed.add(event.job_id);
    if (event.type === "job.created") {
      jobCreated(event);
    } else if (event.type === "job.deleted") {
      jobDeleted(event.job_id);
    } else if (job) {
      apply(job, event);
      jobChanged(job);
      refetch(job.id);
    }
    later("stats", 400, () => loadStats().catch(handled));
  }

  function remember(id, phase, progress) {
    let phases = state.progress.get(id);
    if (!phases) {
      phases = new Map();
      state.progress.set(id, phases);
      if (state.progress.size > 2000) state.progress.delete(state.progress.keys().next().value);
    }
    if (progress) phases.set(phase, progress);
    else phases.delete(phase);
  }

  // A job as read from the API, with the newest progress the stream has
  // brought for its running phases.
  function fresh(job) {
    const phases = state.progress.get(job.id);
    if (phases) {
      for (const phase of job.phases || []) {
        if (phase.status === "running" && phases.has(phase.name)) phase.progress = phases.get(phase.name);
      }
    }
    return job;
  }

  // Reads jobs from the API with `read`; a job whose state changed while it
  // ran is read again after, so an answer older than an event never stays.
  async function reading(read) {
    state.loading += 1;
    try {
      return await read();
    } finally {
      state.loading -= 1;
      const missed = Array.from(state.missed);
      if (!state.loading) state.missed.clear();
      // refetch() looks, when it runs, whether the job is on screen.
      for (const id of missed) refetch(id);
    }
  }

  function phaseNamed(job, name) {
    return (job.phases || []).find((p) => p.name === name);
  }

  // What an event says about a job, applied at once; the job is read again
  // from the API right after (refetch) for the details events do not carry.
  function apply(job, event) {
    const d = event.data || {};
    const phase = typeof d.index === "number" ? (job.phases || [])[d.index] : phaseNamed(job, d.phase);
    switch (event.type) {
      case "job.started":
        Object.assign(job, { status: "running", attempt: d.attempt, started_at: event.at, finished_at: null });
        break;
      case "job.phase.started":
        if (phase) Object.assign(phase, { status: "running", progress: null, error: null, started_at: event.at, finished_at: null });
        break;
      case "job.phase.completed":
        if (phase) Object.assign(phase, { status: "completed", result: d.result, finished_at: event.at });
        break;
      case "job.phase.failed":
        if (phase) Object.assign(phase, { status: "failed", error: d.error, finished_at: event.at });
        if (d.retry_at) Object.assign(job, { status: "queued", run_at: d.retry_at });
        break;
      case "job.completed":
        Object.assign(job, { status: "completed", finished_at: event.at });
        break;
      case "job.failed":
        Object.assign(job, { status: "failed", error: d.error, finished_at: event.at });
        break;
      case "job.cancelled":
        Object.assign(job, { status: "cancelled", finished_at: event.at, cancel_requested: false });
        break;
      case "job.retried":
        Object.assign(job, { status: "queued", error: null, finished_at: null });
        break;
      case "job.interrupted":
        Object.assign(job, { status: "queued", interrupted: { phase: d.phase, at: event.at, progress: d.progress } });
        break;
      case "job.stale":
        Object.assign(job, { status: "stale", stale_at: event.at });
        break;
      case "job.snoozed":
        if (phase) Object.assign(phase, { status: "pending" });
        Object.assign(job, { status: "queued", run_at: d.run_at });
        break;
      default:
        break;
    }
  }

  // Runs `fn` once, `ms` after the last call with this key.
  const timers = new Map();
  function later(key, ms, fn) {
    clearTimeout(timers.get(key));
    timers.set(key, setTimeout(() => {
      timers.delete(key);
      fn();
    }, ms));
  }

  // Reads jobs again, a little after their last event; an answer that an
  // answer to a later request overtook is dropped.
  const generations = new Map();
  function refetch(id) {
    later(`job:${id}`, 250, async () => {
      if (!state.jobs.has(id)) return;
      const generation = (generations.get(id) || 0) + 1;
      generations.set(id, generation);
      try {
        const job = fresh(await api("GET", `jobs/${encodeURIComponent(id)}`));
        if (generations.get(id) !== generation || !state.jobs.has(id)) return;
        state.jobs.set(id, job);
        jobChanged(job);
      } catch (e) {
        if (e.status === 404) jobDeleted(id);
        else handled(e);
      }
    });
  }

  function refreshAll() {
    loadStats().catch(handled);
    if (state.list) loadList(state.list);
    if (state.view) loadJob(state.view);
  }

  function jobCreated(event) {
    const list = state.list;
    if (!list) return;
    const r = list.route;
    if (r.pipeline && r.pipeline !== event.pipeline) return;
    if (r.status && !r.status.split(",").includes("queued")) return;
    if (list.page === 0) {
      later("list", 250, () => loadList(list));
    } else {
      list.newer += 1;
      list.banner.textContent = `${list.newer} new job${list.newer === 1 ? "" : "s"} since this page was read: `;
      list.banner.append(h("a", { href: "#/", onclick: (e) => { e.preventDefault(); list.page = 0; loadList(list); } }, "show the newest"));
      list.banner.hidden = false;
    }
  }

  function jobDeleted(id) {
    state.jobs.delete(id);
    if (state.list) {
      const row = state.list.rows.get(id);
      if (row) row.remove();
      state.list.rows.delete(id);
    }
    if (state.view && state.view.id === id) {
      state.view.deleted = true;
      state.view.alert.className = "alert notice";
      state.view.alert.textContent = "This job was deleted.";
      state.view.alert.hidden = false;
      for (const b of state.view.head.querySelectorAll("button")) b.disabled = true;
    }
  }

  function jobChanged(job) {
    if (state.list) {
      const row = state.list.rows.get(job.id);
      if (row) {
        const fresh = jobRow(job);
        row.replaceWith(fresh);
        state.list.rows.set(job.id, fresh);
      }
    }
    if (state.view && state.view.id === job.id) renderJob(state.view, job);
  }

  function progressChanged(job, phase) {
    for (const el of document.querySelectorAll(".progress")) {
      if (el.jobId === job.id && el.phaseName === phase.name) setProgress(el, phase);
    }
    // A row that showed another phase (or none) now shows this one.
    if (state.list && state.list.rows.has(job.id)) {
      const row = state.list.rows.get(job.id);
      const shown = row.querySelector(".progress");
      if (!shown || shown.phaseName !== phase.name) jobChanged(job);
    }
  }

  // ---------------------------------------------------------------- progress

  function percentOf(phase) {
    if (phase.status === "completed") return 100;
    const p = phase.progress && Number(phase.progress.percent);
    return Number.isFinite(p) ? Math.max(0, Math.min(100, Math.round(p))) : 0;
  }

  function progressEl(job, phase, withName) {
    const fill = h("div", { class: "fill" });
    const bar = h("div", {
      class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    }, fill);
    const el = h("div", { class: "progress", dataset: { phase: phase.name } },
      withName ? h("span", { class: "phase-name" }, phase.name) : null,
      bar, h("span", { class: "pct" }), h("span", { class: "msg" }));
    el.jobId = job.id;
    el.phaseName = phase.name;
    setProgress(el, phase);
    return el;
  }

  function setProgress(el, phase) {
    const percent = percentOf(phase);
    const bar = el.querySelector(".bar");
    bar.setAttribute("aria-valuenow", percent);
    bar.dataset.status = phase.status;
    bar.firstChild.style.width = `${percent}%`;
    el.querySelector(".pct").textContent = `${percent}%`;
    const message = (phase.progress && phase.progress.message) || "";
    const msg = el.querySelector(".msg");
    msg.textContent = message;
    msg.title = message;
  }

  // The phase a job is at: the running one, else the one that failed or
  // was cancelled, else the next pending one.
  function currentPhase(job) {
    const phases = job.phases || [];
    const by = (status) => phases.find((p) => p.status === status);
    return by("running") || by("failed") || by("cancelled") ||
      (job.status === "completed" ? null : by("pending")) || null;
  }

  // ---------------------------------------------------------------- routes

  function parseRoute() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const q = hash.indexOf("?");
    const path = q < 0 ? hash : hash.slice(0, q);
    const params = new URLSearchParams(q < 0 ? "" : hash.slice(q + 1));
    const match = path.match(/^\/jobs\/([^/]+)$/);
    if (match) {
      try {
        return { view: "job", id: decodeURIComponent(match[1]) };
      } catch (e) {
        return { view: "job", id: match[1] };
      }
    }
    return { view: "jobs", status: params.get("status") || "", pipeline: params.get("pipeline") || "" };
  }

  function jobsHash(status, pipeline) {
    const params = new URLSearchParams();
    if (status) params.set("status", status);
    if (pipeline) params.set("pipeline", pipeline);
    const text = params.toString();
    return text ? `#/?${text}` : "#/";
  }

  function route() {
    if (!state.es) return; // not started (asking for the token)
    if (state.view) {
      if (state.view.es) state.view.es.close();
      clearInterval(state.view.timer);
    }
    state.view = null;
    state.list = null;
    state.jobs = new Map();
    const r = parseRoute();
    if (r.view === "job") showJob(r.id);
    else showJobs(r);
    window.scrollTo(0, 0);
  }

  function takeNotice() {
    const notice = state.notice;
    state.notice = null;
    return notice ? h("div", { class: "alert notice", role: "status" }, notice) : null;
  }

  // ---------------------------------------------------------------- counts

  async function loadStats() {
    const [stats, pipelines] = await Promise.all([api("GET", "stats"), api("GET", "pipelines")]);
    state.pipelines = new Map((pipelines.pipelines || []).map((p) => [p.name, p.paused === true]));
    state.stats = stats;
    if (!state.lastSeq) state.lastSeq = stats.last_event_seq || 0;
    if (state.list) renderCounts(state.list);
    return stats;
  }

  function renderCounts(list) {
    const stats = state.stats;
    if (!stats) return;
    const r = list.route;
    const tile = (status, n, label) => h("a", {
      class: `tile${r.status === status ? " selected" : ""}`,
      href: jobsHash(status, r.pipeline),
      dataset: { status: status || "all" },
    }, h("span", { class: "n" }, n), h("span", { class: "label" }, label));
    const tiles = h("div", { class: "tiles", id: "status-counts" },
      tile("", stats.total, "all jobs"),
      STATUSES.map((s) => tile(s, (stats.statuses || {})[s] || 0, s)));
    const pipelines = Object.entries(stats.pipelines || {});
    const table = h("table", { class: "counts-table", id: "pipeline-counts" },
      h("thead", {}, h("tr", {}, h("th", {}, "pipeline"), h("th", { class: "num" }, "total"),
        STATUSES.map((s) => h("th", { class: "num" }, s)), h("th", {}, "claims"))),
      h("tbody", {}, pipelines.length === 0
        ? h("tr", {}, h("td", { class: "empty", colspan: STATUSES.length + 3 }, "no pipelines"))
        : pipelines.map(([name, p]) => h("tr", { dataset: { pipeline: name } },
          h("td", {}, h("a", { href: jobsHash(r.status, name) }, name)),
          h("td", { class: "num" }, p.total),
          STATUSES.map((s) => {
            const n = (p.statuses || {})[s] || 0;
            return h("td", { class: `num${n ? "" : " zero"}` }, n);
          }),
          h("td", { class: "pause" }, pauseControl(list, name))))));
    list.counts.replaceChildren(tiles, h("div", { class: "card" }, h("h2", {}, "By pipeline"), table));
    // The pipeline filter offers every pipeline the server knows.
    const select = list.pipelineSelect;
    const names = pipelines.map(([name]) => name);
    if (r.pipeline && !names.includes(r.pipeline)) names.push(r.pipeline);
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      select.replaceChildren(h("option", { value: "" }, "every pipeline"),
        ...names.map((n) => h("option", { value: n }, n)));
      select.value = r.pipeline;
    }
  }

  // A pipeline's paused state and the button that flips it; nothing for a
  // pipeline the server does not run (it only has jobs left).
  function pauseControl(list, name) {
    if (!state.pipelines || !state.pipelines.has(name)) return "";
    const paused = state.pipelines.get(name);
    const action = paused ? "resume" : "pause";
    const button = h("button", {
      type: "button",
      class: "pause-toggle",
      dataset: { action },
      onclick: () => togglePause(list, name, action, button),
    }, paused ? "Resume" : "Pause");
    return [h("span", { class: `paused-state${paused ? " paused" : ""}`, dataset: { paused: String(paused) } },
      paused ? "paused" : "running"), " ", button];
  }

  async function togglePause(list, name, action, button) {
    button.disabled = true;
    list.alert.hidden = true;
    try {
      const answer = await api("POST", `pipelines/${encodeURIComponent(name)}/${action}`);
      state.pipelines.set(name, answer.paused === true);
    } catch (e) {
      if (handled(e)) return;
      showAlert(list.alert, e);
    }
    if (state.list) renderCounts(state.list);
  }

  // ---------------------------------------------------------------- jobs view

  function showJobs(r) {
    const statusSelect = h("select", { id: "status-filter", "aria-label": "status" },
      h("option", { value: "" }, "every status"),
      STATUSES.map((s) => h("option", { value: s }, s)));
    statusSelect.value = STATUSES.includes(r.status) ? r.status : "";
    const pipelineSelect = h("select", { id: "pipeline-filter", "aria-label": "pipeline" },
      h("option", { value: "" }, "every pipeline"));
    const onFilter = () => { location.hash = jobsHash(statusSelect.value, pipelineSelect.value); };
    statusSelect.addEventListener("change", onFilter);
    pipelineSelect.addEventListener("change", onFilter);
    const tbody = h("tbody");
    const list = {
      route: r,
      page: 0,
      cursors: [""],
      next: null,
      newer: 0,
      request: 0,
      rows: new Map(),
      tbody,
      pipelineSelect,
      counts: h("section", { id: "counts" }),
      alert: h("div", { class: "alert", role: "alert", hidden: true }),
      banner: h("div", { class: "alert notice", id: "new-jobs", hidden: true }),
      pager: h("div", { class: "pager" }),
    };
    $main.replaceChildren(
      takeNotice() || "",
      list.counts,
      list.alert,
      h("div", { class: "card" },
        h("div", { class: "toolbar" }, h("h2", {}, "Jobs, newest first"), h("span", { class: "spacer" }),
          statusSelect, pipelineSelect),
        list.banner,
        h("table", { id: "jobs" },
          h("thead", {}, h("tr", {}, ["status", "pipeline", "id", "age", "phase", "attempts"].map((c) =>
            h("th", { class: c === "attempts" ? "num" : null }, c)))),
          tbody),
        list.pager));
    state.list = list;
    renderCounts(list);
    loadList(list);
  }

  async function loadList(list) {
    const r = list.route;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (r.status) params.set("status", r.status);
    if (r.pipeline) params.set("pipeline", r.pipeline);
    const cursor = list.cursors[list.page];
    if (cursor) params.set("cursor", cursor);
    list.request += 1;
    const request = list.request;
    let page;
    try {
      page = await reading(() => api("GET", `jobs?${params}`));
    } catch (e) {
      if (!handled(e) && state.list === list) showAlert(list.alert, e);
      return;
    }
    if (state.list !== list || list.request !== request) return;
    list.alert.hidden = true;
    list.next = page.next_cursor || null;
    if (list.page === 0) {
      list.newer = 0;
      list.banner.hidden = true;
    }
    state.jobs = new Map(page.jobs.map((job) => [job.id, fresh(job)]));
    list.rows = new Map(page.jobs.map((job) => [job.id, jobRow(job)]));
    list.tbody.replaceChildren(...(list.rows.size
      ? list.rows.values()
      : [h("tr", {}, h("td", { class: "empty", colspan: 6 }, "No jobs here yet."))]));
    renderPager(list);
  }

  function renderPager(list) {
    const go = (page) => () => { list.page = page; loadList(list); };
    const newer = h("button", { type: "button", id: "newer", onclick: go(list.page - 1) }, "← newer");
    const newest = h("button", { type: "button", onclick: go(0) }, "newest");
    const older = h("button", {
      type: "button", id: "older",
      onclick: () => { list.cursors[list.page + 1] = list.next; go(list.page + 1)(); },
    }, "older →");
    newer.disabled = list.page === 0;
    newest.disabled = list.page === 0;
    older.disabled = !list.next;
    list.pager.replaceChildren(h("span", {}, `page ${list.page + 1}`), newest, newer, older);
  }

  function jobRow(job) {
    const phase = currentPhase(job);
    let phaseCell = "—";
    if (phase && phase.status === "running") phaseCell = progressEl(job, phase, true);
    else if (phase) phaseCell = h("span", {}, h("span", { class: "phase-name" }, phase.name), h("span", { class: "muted" }, phase.status));
    return h("tr", { dataset: { jobId: job.id, status: job.status } },
      h("td", {}, badge(job.status)),
      h("td", {}, job.pipeline),
      h("td", { class: "id" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
      h("td", {}, agoEl(job.created_at)),
      h("td", {}, phaseCell),
      h("td", { class: "num" }, `${job.attempt}/${job.max_attempts}`));
  }

  // ---------------------------------------------------------------- job view

  function showJob(id) {
    const view = {
      id,
      job: null,
      lastSeq: 0,
      deleted: false,
      alert: h("div", { class: "alert", id: "action-error", role: "alert", hidden: true }),
      head: h("div", { class: "job-head" }, h("h1", {}, "Job ", h("span", { class: "mono" }, id))),
      body: h("div", { id: "job-body" }),
      deliveries: h("div", {}, h("p", { class: "muted" }, "Loading…")),
      events: h("tbody"),
    };
    $main.replaceChildren(
      h("p", {}, h("a", { href: "#/" }, "← all jobs")),
      takeNotice() || "",
      view.alert,
      h("div", { id: "job-view" },
        view.head,
        view.body,
        h("div", { class: "card" }, h("h2", {}, "Webhook deliveries"), view.deliveries),
        h("div", { class: "card" }, h("h2", {}, "Events"),
          h("table", { class: "events", id: "events" },
            h("thead", {}, h("tr", {}, ["seq", "time", "type", "data"].map((c) => h("th", {}, c)))),
            view.events))));
    state.view = view;
    loadJob(view);
    openJobStream(view);
    view.timer = setInterval(() => loadDeliveries(view), 5000);
  }

  async function loadJob(view) {
    try {
      const job = fresh(await reading(() => api("GET", `jobs/${encodeURIComponent(view.id)}`)));
      if (state.view !== view) return;
      state.jobs = new Map([[job.id, job]]);
      renderJob(view, job);
    } catch (e) {
      if (handled(e) || state.view !== view) return;
      if (e.status === 404 && !view.job) {
        view.body.replaceChildren(h("div", { class: "alert", role: "alert" }, `No job ${view.id}: ${e.message}`));
      } else {
        showAlert(view.alert, e);
      }
    }
    loadDeliveries(view);
  }

  function renderJob(view, job) {
    view.job = job;
    const finished = FINISHED.has(job.status);
    const cancel = h("button", { type: "button", id: "cancel", onclick: () => act(view, "cancel") }, "Cancel");
    const retry = h("button", { type: "button", id: "retry", onclick: () => act(view, "retry") }, "Retry");
    const del = h("button", { type: "button", id: "delete", class: "danger" }, "Delete");
    del.addEventListener("click", () => {
      // The first click arms the button, the second deletes.
      if (!del.classList.contains("armed")) {
        del.classList.add("armed");
        del.textContent = "Delete for good?";
        setTimeout(() => { del.classList.remove("armed"); del.textContent = "Delete"; }, 4000);
        return;
      }
      act(view, "delete");
    });
    cancel.disabled = view.deleted || finished;
    retry.disabled = view.deleted || !["failed", "cancelled"].includes(job.status);
    del.disabled = view.deleted || !finished;
    view.head.replaceChildren(
      h("h1", {}, `${job.pipeline} `, h("span", { class: "mono", id: "job-id" }, job.id)),
      badge(job.status, "job-status"),
      job.cancel_requested ? h("span", { class: "muted" }, "stopping…") : "",
      h("span", { class: "actions" }, cancel, retry, del));

    const fact = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
    const facts = h("dl", { class: "facts" },
      fact("status", job.status),
      fact("attempt", `${job.attempt} of ${job.max_attempts}`),
      fact("priority", job.priority),
      job.unique_key !== null ? fact("unique key", job.unique_key) : null,
      fact("created", fmtTime(job.created_at)),
      fact("run at", fmtTime(job.run_at)),
      fact("started", fmtTime(job.started_at)),
      fact("finished", fmtTime(job.finished_at)),
      fact("took", tookEl(job.started_at, job.finished_at)),
      job.stale_at ? fact("stale since", fmtTime(job.stale_at)) : null);

    const cards = [h("div", { class: "card" }, h("h2", {}, "Job"), facts)];
    if (job.error) {
      const where = job.error.phase ? `in phase ${job.error.phase}` : "outside any phase";
      cards.push(h("div", { class: "card", id: "job-error" },
        h("h2", {}, `Failed ${where}, attempt ${job.error.attempt}`),
        h("pre", { class: "error" }, job.error.message)));
    }
    if (job.interrupted) {
      const i = job.interrupted;
      const at = i.progress ? ` at ${i.progress.percent}%${i.progress.message ? ` (${i.progress.message})` : ""}` : "";
      cards.push(h("div", { class: "card", id: "job-interrupted" },
        h("h2", {}, "Interrupted"),
        h("p", {}, `Phase ${i.phase}${at} was cut short on ${fmtTime(i.at)} (a crash or a shutdown); the job resumed at that phase.`)));
    }
    cards.push(h("div", { class: "card" }, h("h2", {}, "Phases"), phasesTable(job)));
    cards.push(h("div", { class: "card" }, h("h2", {}, "Input"), h("pre", { id: "job-input" }, pretty(job.input))));
    view.body.replaceChildren(...cards);
  }

  function phasesTable(job) {
    const rows = (job.phases || []).map((p, i) => {
      let outcome = h("span", { class: "muted" }, "—");
      if (p.error) outcome = h("pre", { class: "error" }, p.error);
      else if (p.status === "completed") outcome = h("pre", {}, pretty(p.result));
      // What the phase's next run resumes from.
      else if (p.checkpoint !== null && p.checkpoint !== undefined) {
        outcome = h("pre", { class: "checkpoint" }, `checkpoint: ${pretty(p.checkpoint)}`);
      }
      return h("tr", { dataset: { phase: p.name, status: p.status } },
        h("td", { class: "num" }, i + 1),
        h("td", {}, h("span", { class: "phase-name" }, p.name)),
        h("td", {}, badge(p.status)),
        h("td", { class: "num" }, p.attempts),
        h("td", {}, progressEl(job, p, false)),
        h("td", {}, fmtTime(p.started_at)),
        h("td", {}, tookEl(p.started_at, p.finished_at)),
        h("td", { class: "outcome" }, outcome));
    });
    return h("table", { id: "phases" },
      h("thead", {}, h("tr", {}, ["#", "phase", "status", "attempts", "progress", "started", "took", "result"]
        .map((c) => h("th", { class: c === "#" || c === "attempts" ? "num" : null }, c)))),
      h("tbody", {}, rows));
  }

  async function act(view, action) {
    view.alert.hidden = true;
    view.alert.className = "alert";
    for (const b of view.head.querySelectorAll("button")) b.disabled = true;
    try {
      if (action === "delete") {
        await api("DELETE", `jobs/${encodeURIComponent(view.id)}`);
        state.notice = `Job ${view.id} was deleted.`;
        location.hash = "#/";
        return;
      }
      const job = await api("POST", `jobs/${encodeURIComponent(view.id)}/${action}`);
      if (state.view !== view) return;
      state.jobs.set(job.id, job);
      renderJob(view, job);
    } catch (e) {
      if (handled(e) || state.view !== view) return;
      showAlert(view.alert, e);
      if (view.job) renderJob(view, view.job);
      refetch(view.id);
    }
  }

  async function loadDeliveries(view) {
    let answer;
    try {
      answer = await api("GET", `webhooks/deliveries?job=${encodeURIComponent(view.id)}`);
    } catch (e) {
      if (!handled(e) && state.view === view) {
        view.deliveries.replaceChildren(h("p", { class: "alert" }, e.message));
      }
      return;
    }
    if (state.view !== view) return;
    const deliveries = answer.deliveries || [];
    if (deliveries.length === 0) {
      view.deliveries.replaceChildren(h("p", { class: "muted" }, "No webhook deliveries for this job."));
      return;
    }
    view.deliveries.replaceChildren(h("table", { id: "deliveries" },
      h("thead", {}, h("tr", {}, ["event", "url", "status", "attempts", "last answer", "last error", "next attempt"]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, deliveries.map((d) => h("tr", { dataset: { status: d.status } },
        h("td", {}, `${d.type} #${d.event_seq}`),
        h("td", { class: "mono" }, d.url),
        h("td", {}, badge(d.status)),
        h("td", { class: "num" }, d.attempts),
        h("td", {}, d.last_status === null ? "—" : `HTTP ${d.last_status}`),
        h("td", {}, d.last_error || "—"),
        h("td", {}, fmtTime(d.next_attempt_at)))))));
  }

  // The job's own stream: its whole history from the store, then live. It
  // only feeds the history table; the stream of every job keeps the job
  // itself current.
  function openJobStream(view) {
    const es = eventSource(`jobs/${encodeURIComponent(view.id)}/events`, view.lastSeq);
    view.es = es;
    for (const type of EVENT_TYPES) es.addEventListener(type, (m) => historyEvent(view, m));
    es.onerror = () => {
      if (es.readyState !== EventSource.CLOSED) return;
      setTimeout(() => {
        if (state.view === view && view.es === es && !view.deleted) openJobStream(view);
      }, RECONNECT_MS);
    };
  }

  function historyEvent(view, message) {
    const event = parseEvent(message);
    if (!event || state.view !== view) return;
    if (typeof event.seq === "number") {
      if (event.seq <= view.lastSeq) return;
      view.lastSeq = event.seq;
    }
    const data = event.data || {};
    const last = view.events.lastElementChild;
    // Successive progress of one phase is one row that moves on.
    if (event.type === "job.phase.progress" && last && last.dataset.type === event.type &&
        last.phase === data.phase) {
      last.replaceWith(historyRow(event));
      return;
    }
    view.events.append(historyRow(event));
    while (view.events.childElementCount > HISTORY_MAX) view.events.firstElementChild.remove();
  }

  function historyRow(event) {
    const row = h("tr", { dataset: { type: event.type } },
      h("td", { class: "num" }, event.seq),
      h("td", {}, fmtTime(event.at)),
      h("td", {}, event.type),
      h("td", { class: "data" }, compact(event.data, 400)));
    row.phase = event.data && event.data.phase;
    return row;
  }

  boot();
})();
