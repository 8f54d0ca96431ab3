// The relay's dashboard: follows /v1/ws/stats through the JavaScript client (/sluice.js) and
// draws topics, subscribers, stages and their recent history (uPlot). See docs/dashboard.md.
import { subscribe, watchStats } from "/sluice.js";
import { pageToken } from "/token.js";

const HISTORY_SECONDS = 300;
const PERIOD_MS = 500;
const $ = (id) => document.getElementById(id);

// ---- the token: #token=... in the page's address, or typed in (kept for this tab) ----
const tokenInput = $("token");
pageToken(tokenInput, () => restart());

// ---- state ----
const history = new Map();  // topic -> {t: [], rate: [], mbps: [], queue: [], p99: [], drops: []}
let previous = null;        // the last snapshot, for rates
let selected = null;        // the topic shown in detail
let charts = null;          // that topic's uPlot charts
let watcher = null;

// The history outlives a reload of the page (this tab only, the last HISTORY_SECONDS): kept in
// sessionStorage every few seconds, taken back at load if the relay is the same one.
const KEPT = "sluice.dashboard.history";
function keepHistory(snapshot) {
  try {
    sessionStorage.setItem(KEPT, JSON.stringify({ time_ms: snapshot.time_ms, origin: location.origin,
      topics: [...history.entries()] }));
  } catch { /* (storage full or off: the history is this page's only) */ }
}
function restoreHistory() {
  try {
    const kept = JSON.parse(sessionStorage.getItem(KEPT) || "null");
    if (!kept || kept.origin !== location.origin) return;
    if (Date.now() - kept.time_ms > HISTORY_SECONDS * 1000) return;
    for (const [name, h] of kept.topics) history.set(name, h);
  } catch { /* (a malformed entry: start afresh) */ }
}
restoreHistory();
let keptAt = 0;

function fmtBytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return String(n) + " B";
}
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "–");
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const badge = (text, kind) => el("span", { class: `badge ${kind || text}` }, text);

// Every loss of a topic, by reason: its subscribers' losses, its stage's drops, its producers'
// timed-out frames.
function drops(topic) {
  const by = {};
  const add = (reason, n) => { if (n > 0) by[reason] = (by[reason] || 0) + n; };
  for (const s of topic.subscribers) {
    for (const [r, n] of Object.entries(s.lost_by_reason || {})) add(r, n);
  }
  if (topic.stage) for (const [r, n] of Object.entries(topic.stage.dropped)) add(r, n);
  add("max_wait", topic.timeouts);
  return by;
}
const total = (by) => Object.values(by).reduce((a, b) => a + b, 0);

function record(snapshot) {
  const now = snapshot.time_ms / 1000;
  const before = new Map((previous?.topics || []).map((t) => [t.name, t]));
  const dt = previous ? (snapshot.time_ms - previous.time_ms) / 1000 : 0;
  for (const t of snapshot.topics) {
    const p = before.get(t.name);
    const h = history.get(t.name) ||
      { t: [], rate: [], mbps: [], queue: [], p99: [], drops: [] };
    history.set(t.name, h);
    const rate = p && dt > 0 ? (t.published - p.published) / dt : 0;
    const mbps = p && dt > 0 ? (t.published_bytes - p.published_bytes) / dt / 1e6 : 0;
    const lost = p && dt > 0 ? (total(drops(t)) - total(drops(p))) / dt : 0;
    t.rate = rate;
    t.mbps = mbps;
    h.t.push(now);
    h.rate.push(rate);
    h.mbps.push(mbps);
    h.queue.push(heldBytes(t));
    h.p99.push(t.latency_p99_ms);
    h.drops.push(Math.max(0, lost));
    while (h.t.length && h.t[0] < now - HISTORY_SECONDS) {
      for (const k of Object.keys(h)) h[k].shift();
    }
  }
  for (const name of [...history.keys()]) {
    if (!snapshot.topics.some((t) => t.name === name)) history.delete(name);
  }
  previous = snapshot;
}

// What the topic holds, as its row says: a lossless topic's queue (its slowest subscriber's),
// a real-time topic's retained items.
function heldBytes(t) {
  return t.mode === "lossless" ? t.queue_bytes : (t.retained_bytes || 0);
}

function queueBar(t) {
  const limit = t.mode === "lossless" ? t.max_queue_bytes : 0;
  const frac = limit > 0 ? Math.min(1, t.queue_bytes / limit) : 0;
  const bar = el("span", { class: "bar" + (frac >= 0.999 ? " full" : "") },
    el("span", { style: "" }));
  bar.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
  const cell = el("td", { "data-field": "queue" }, bar, " ",
    limit > 0 ? `${fmtBytes(t.queue_bytes)} / ${fmtBytes(limit)}` : `${t.retained_bytes ? fmtBytes(t.retained_bytes) : "0 B"} held`);
  cell.dataset.fraction = frac.toFixed(3);
  return cell;
}

function renderTopics(snapshot) {
  const body = $("topics").tBodies[0];
  body.replaceChildren();
  $("empty").hidden = snapshot.topics.length > 0;
  for (const t of snapshot.topics) {
    const by = drops(t);
    const dropText = Object.entries(by).map(([r, n]) => `${r} ${n}`).join(" · ") || "none";
    // Held back by the topic (lossless, full), or by its stage (a gate past its slow-down
    // threshold tells the producers to slow down).
    const stageSlowed = t.stage && t.stage.gate && t.stage.gate.state === "critical";
    const throttled = t.throttled_publishers > 0 || stageSlowed;
    const slowDowns = t.throttled_total + (t.stage?.gate?.slow_downs ?? 0);
    const row = el("tr", { class: "topic" + (t.name === selected ? " selected" : ""),
      "data-topic": t.name },
      el("td", {}, t.name),
      el("td", {}, t.mode, t.bridge ? el("span", { class: "muted", "data-field": "relays" },
        ` · ${t.bridge.relays.length} relays`) : ""),
      el("td", { "data-field": "rate" }, fmt(t.rate)),
      el("td", {}, fmt(t.mbps, 2)),
      queueBar(t),
      el("td", { "data-field": "throttle" },
        throttled ? badge(stageSlowed ? "slowed by its stage" : "throttled")
          : badge("flowing", "ok"),
        ` ${slowDowns} slow-downs`),
      el("td", { "data-field": "drops", "data-total": String(total(by)) }, dropText),
      el("td", {}, String(t.subscribers.length)),
      el("td", {}, t.latency_p99_ms > 0 ? `${fmt(t.latency_p99_ms, 2)} ms` : "–"));
    row.addEventListener("click", () => select(t.name));
    body.append(row);
  }
}

function renderDetail(snapshot) {
  const t = snapshot.topics.find((x) => x.name === selected);
  $("detail").hidden = !t;
  if (!t) return;
  $("detail-name").textContent = t.name;
  $("detail-type").textContent = t.content_type ? `(${t.content_type})` : "(bytes)";
  // Video (a video/* type, or bytes that may be): the viewer page plays it over WebRTC.
  const video = !t.content_type || t.content_type.startsWith("video/");
  $("detail-watch").hidden = !video;
  $("detail-watch").href = `/view/${encodeURIComponent(t.name)}`;
  // A cluster topic: the relays that serve it (this one marked), with their subscribers.
  $("relays").hidden = !t.bridge;
  if (t.bridge) {
    $("relay-list").replaceChildren(...t.bridge.relays.map((r, i) => el("span",
      { "data-relay": r.name }, i ? ", " : "", r.self ? el("b", {}, r.name) : r.name,
      ` (${r.subscribers} subscriber${r.subscribers === 1 ? "" : "s"})`)));
  }
  const body = $("subscribers").tBodies[0];
  body.replaceChildren();
  const before = new Map(((previous && previous.topics.find((x) => x.name === selected)) ||
    { subscribers: [] }).subscribers.map((s) => [s.name, s]));
  for (const s of t.subscribers) {
    const reasons = Object.entries(s.lost_by_reason || {}).map(([r, n]) => `${r} ${n}`);
    if (s.until_keyframe) reasons.push(`skipped to a keyframe ${s.until_keyframe}`);
    const lostText = reasons.join(" · ") || "0";
    const state = s.evicted ? "evicted" : s.sends || "ok";
    body.append(el("tr", { "data-subscriber": s.name },
      el("td", {}, s.name), el("td", {}, String(s.received)), el("td", {}, String(s.lag)),
      el("td", {}, fmtBytes(s.lag_bytes)), el("td", {}, s.depth ? String(s.depth) : "–"),
      el("td", { "data-field": "lost", "data-total": String(s.lost) }, lostText),
      el("td", { "data-field": "sends" }, badge(state, state === "late" ? "slow" : state)),
      el("td", {}, s.kernel_unsent_bytes === undefined ? "–" : fmtBytes(s.kernel_unsent_bytes))));
    before.delete(s.name);
  }
  const st = t.stage;
  $("stage").hidden = !st;
  if (st) {
    $("stage-results").textContent = st.results_topic;
    $("gate-state").textContent = st.gate.state;
    $("gate-state").className = `badge ${st.gate.state}`;
    $("gate-rate").textContent = `${(st.gate.drop_rate * 100).toFixed(1)}%`;
    $("gate-slowdown").textContent = `${(st.slowdown_threshold * 100).toFixed(0)}%`;
    $("gate-drop").textContent = `${(st.drop_threshold * 100).toFixed(0)}%`;
    $("stage-dropped").textContent =
      Object.entries(st.dropped).map(([r, n]) => `${r} ${n}`).join(" · ") || "none";
    const wb = $("workers").tBodies[0];
    wb.replaceChildren();
    for (const w of st.workers) {
      wb.append(el("tr", { "data-worker": w.name },
        el("td", {}, w.name), el("td", {}, badge(w.health)),
        el("td", {}, `${w.in_flight} / ${w.max_concurrent}`), el("td", {}, String(w.completed)),
        el("td", {}, String(w.errors)), el("td", {}, String(w.timeouts)),
        el("td", {}, `${fmt(w.smoothed_latency_ms, 1)} ms`)));
    }
  }
  drawCharts();
}

// ---- charts (uPlot) ----
function chart(target, title, label, stroke) {
  const width = Math.max(380, $(target).clientWidth - 10);
  return new uPlot({
    title, width, height: 180,
    scales: { x: { time: true } },
    series: [{}, { label, stroke, width: 1.5, fill: stroke + "22" }],
    axes: [{}, { size: 60 }],
  }, [[], []], $(target));
}
function drawCharts() {
  const h = history.get(selected);
  if (!h) return;
  if (!charts) {
    for (const id of ["chart-rate", "chart-queue", "chart-latency", "chart-drops"]) {
      $(id).replaceChildren();
    }
    charts = {
      rate: chart("chart-rate", "published items/s", "items/s", "#3b82f6"),
      queue: chart("chart-queue", "bytes held (lossless: slowest subscriber's queue; real-time: retained)",
        "bytes", "#8b5cf6"),
      latency: chart("chart-latency", "p99 publish → receive (ms)", "ms", "#0d9488"),
      drops: chart("chart-drops", "frames lost /s (every reason)", "lost/s", "#dc2626"),
    };
  }
  charts.rate.setData([h.t, h.rate]);
  charts.queue.setData([h.t, h.queue]);
  charts.latency.setData([h.t, h.p99]);
  charts.drops.setData([h.t, h.drops]);
}

function select(name) {
  if (selected === name) return;
  stopPreview();
  selected = name;
  if (charts) for (const c of Object.values(charts)) c.destroy();
  charts = null;
  if (previous) {
    renderTopics(previous);
    renderDetail(previous);
  }
}

// ---- preview: the topic's latest frame (an image if its content type says so) ----
let preview = null;
let shownAt = 0;
let lastUrl = null;
async function startPreview() {
  const t = previous?.topics.find((x) => x.name === selected);
  if (!t) return;
  $("preview-toggle").textContent = "stop";
  try {
    preview = await subscribe(t.name, { depth: 1, name: "dashboard-preview",
      token: tokenInput.value || undefined });
  } catch (e) {
    $("preview-info").textContent = String(e.message);
    $("preview-toggle").textContent = "start";
    return;
  }
  const image = (t.content_type || "").startsWith("image/");
  preview.addEventListener("frame", (e) => {
    const f = e.detail;
    const now = performance.now();
    if (now - shownAt < 100) return;  // at most 10 a second
    shownAt = now;
    $("preview-info").textContent = `frame ${f.index}, ${f.payload.byteLength} bytes`;
    if (image) {
      if (lastUrl) URL.revokeObjectURL(lastUrl);
      lastUrl = URL.createObjectURL(new Blob([f.payload.slice()], { type: t.content_type }));
      $("preview-image").src = lastUrl;
      $("preview-image").dataset.index = String(f.index);
      $("preview-image").hidden = false;
    } else {
      const head = f.payload.subarray(0, 256);
      const text = new TextDecoder("utf-8", { fatal: false }).decode(head);
      const printable = /^[\x09\x0a\x0d\x20-\x7e\u00a0-\uffff]*$/.test(text);
      $("preview-bytes").textContent = printable ? text
        : [...head].map((b) => b.toString(16).padStart(2, "0")).join(" ");
      $("preview-bytes").hidden = false;
    }
  });
  preview.addEventListener("close", (e) => {
    $("preview-info").textContent = `ended: ${e.detail.code} ${e.detail.reason}`;
    $("preview-toggle").textContent = "start";
    preview = null;
  });
}
function stopPreview() {
  if (preview) preview.close();
  preview = null;
  $("preview-toggle").textContent = "start";
  $("preview-image").hidden = true;
  $("preview-bytes").hidden = true;
  $("preview-info").textContent = "";
}
$("preview-toggle").addEventListener("click", () => (preview ? stopPreview() : startPreview()));

// ---- the stats stream ----
function onStats(snapshot) {
  record(snapshot);
  if (snapshot.time_ms - keptAt >= 5000) {
    keptAt = snapshot.time_ms;
    keepHistory(snapshot);
  }
  if (!selected && snapshot.topics.length) selected = snapshot.topics[0].name;
  renderTopics(snapshot);
  renderDetail(snapshot);
  $("clock").textContent = new Date(snapshot.time_ms).toLocaleTimeString();
}
function onState(state, detail) {
  const s = $("state");
  s.dataset.state = state;
  s.className = `state ${state}`;
  s.textContent = state === "up" ? "live"
    : `relay unreachable (${detail.code || "no answer"}), retrying in ${detail.retryMs} ms`;
}
function restart() {
  if (watcher) watcher.stop();
  previous = null;
  watcher = watchStats(onStats, { periodMs: PERIOD_MS, token: tokenInput.value || undefined,
    onState });
}
restart();
