// inferq's operator's page: polls GET /v1/stats and draws it. Plain JavaScript, inline SVG,
// nothing from outside this origin. Every number shown in a [data-stat] element is the
// value at that path of the stats document, formatted by its data-format.
"use strict";

const POLL_MS = 5000;
const KEY_STORE = "inferq.dashboard.key";
const QUEUE_HISTORY = 120;
const COLORS = ["#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed", "#0891b2"];
const SVG_NS = "http://www.w3.org/2000/svg";

const queueHistory = [];
let timer = null;

function $(id) { return document.getElementById(id); }

function takeKeyFromFragment() {
  const match = /(?:^#|&)key=([^&]+)/.exec(window.location.hash);
  if (!match) return;
  sessionStorage.setItem(KEY_STORE, decodeURIComponent(match[1]));
  history.replaceState(null, "", window.location.pathname + window.location.search);
}

function apiKey() { return sessionStorage.getItem(KEY_STORE); }

function showKeyForm(message) {
  $("main").hidden = true;
  $("key-form").hidden = false;
  showError(message);
  document.body.dataset.state = "needs-key";
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// The formats, one per kind of number; the tests parse what these print.
const FORMATS = {
  int: (v) => String(Math.round(v)),
  rate: (v) => v.toFixed(2),
  ms: (v) => v.toFixed(1) + " ms",
  pct: (v) => (v * 100).toFixed(2) + " %",
};

function format(value, kind) {
  if (value === null || value === undefined) return "—";
  return (FORMATS[kind] || String)(value);
}

function at(doc, path) {
  return path.split(".").reduce((node, part) => (node == null ? undefined : node[part]), doc);
}

function fillStats(doc) {
  for (const el of document.querySelectorAll("[data-stat]")) {
    el.textContent = format(at(doc, el.dataset.stat), el.dataset.format);
  }
}

function fillTable(id, rows, cells) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const value of cells(row)) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A line chart of several series over the same x positions; null values leave gaps.
function lineChart(svg, labels, series) {
  const W = 600, H = 200, left = 48, right = 10, top = 10, bottom = 34;
  svg.replaceChildren();
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const max = Math.max(1e-9, ...values) * 1.1;
  const x = (i) => left + (labels.length > 1 ? (i * (W - left - right)) / (labels.length - 1) : 0);
  const y = (v) => H - bottom - (v / max) * (H - top - bottom);
  svg.appendChild(svgEl("line", { class: "axis", x1: left, y1: H - bottom, x2: W - right, y2: H - bottom }));
  svg.appendChild(svgEl("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }));
  for (const frac of [0, 0.5, 1]) {
    const v = (max / 1.1) * frac;
    svg.appendChild(svgEl("text", { class: "tick", x: left - 4, y: y(v) + 3, "text-anchor": "end" },
      v >= 100 ? v.toFixed(0) : v.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil(labels.length / 6));
  labels.forEach((label, i) => {
    if (i % step === 0) {
      svg.appendChild(svgEl("text", { class: "tick", x: x(i), y: H - bottom + 14, "text-anchor": "middle" }, label));
    }
  });
  series.forEach((s, n) => {
    const color = COLORS[n % COLORS.length];
    let d = "";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      d += (d && s.values[i - 1] !== null && s.values[i - 1] !== undefined ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1) + " ";
    });
    if (d) svg.appendChild(svgEl("path", { class: "series", d: d.trim(), stroke: color, "data-series": s.name }));
    // Dots too: a point between two empty buckets has no line to show it.
    s.values.forEach((v, i) => {
      if (v !== null && v !== undefined) svg.appendChild(svgEl("circle", { cx: x(i), cy: y(v), r: 2.5, fill: color }));
    });
    svg.appendChild(svgEl("text", { class: "legend", x: left + 8 + n * 110, y: H - 4, fill: color }, s.name));
  });
}

function clock(iso) {
  const d = new Date(iso);
  return d.toTimeString().slice(0, 8);
}

function drawCharts(doc) {
  const points = doc.timeline.points;
  const labels = points.map((p) => clock(p.t));
  lineChart($("chart-throughput"), labels, [{ name: "jobs/s", values: points.map((p) => p.per_s) }]);
  lineChart($("chart-latency"), labels, ["p50", "p95", "p99"].map((q) => ({ name: q, values: points.map((p) => p[q]) })));
  lineChart($("chart-errors"), labels, [
    { name: "failed", values: points.map((p) => p.failed) },
    { name: "cached", values: points.map((p) => p.cached) },
  ]);
  queueHistory.push({
    t: clock(doc.generated_at),
    lanes: Object.fromEntries(doc.lanes.map((l) => [l.lane, l.queued])),
    workers: doc.workers,
  });
  if (queueHistory.length > QUEUE_HISTORY) queueHistory.shift();
  const shown = doc.lanes.filter((l) => l.lane === "online" || queueHistory.some((h) => h.lanes[l.lane] > 0));
  lineChart($("chart-queue"), queueHistory.map((h) => h.t),
    shown.map((l) => ({ name: l.lane, values: queueHistory.map((h) => h.lanes[l.lane] ?? 0) })));
  lineChart($("chart-workers"), queueHistory.map((h) => h.t), [
    { name: "consuming", values: queueHistory.map((h) => h.workers.consuming) },
    { name: "live", values: queueHistory.map((h) => h.workers.live) },
    { name: "desired", values: queueHistory.map((h) => h.workers.desired) },
  ]);
}

function drawTables(doc) {
  fillTable("lanes", doc.lanes, (l) => [l.lane, l.queued, l.running, l.oldest_queued_s, l.workers, l.workers_stalled]);
  fillTable("workers", doc.workers.list, (w) => [w.name, w.lanes.join(", "), w.consuming ? "yes" : "no", format(w.uptime_s, "int")]);
  fillTable("quality", doc.quality, (q) => [q.model, q.version, format(q.holdout_accuracy, "pct"), format(q.accuracy, "pct"), q.judged]);
  fillTable("versions", doc.recent_versions, (v) => [
    v.model, v.version, v.status, format(v.metrics && v.metrics.holdout_accuracy, "pct"), v.created_by, new Date(v.created_at).toLocaleString(),
  ]);
  fillTable("training", doc.training_runs, (r) => [
    r.model, r.status, r.trigger, r.stage ?? "—", format(r.progress, "pct"),
    format(r.metrics && r.metrics.holdout_accuracy, "pct"), r.rollout ?? "—", new Date(r.created_at).toLocaleString(),
  ]);
  drawExperiments(doc.experiments);
}

function drawExperiments(experiments) {
  const box = $("experiments");
  box.replaceChildren();
  if (!experiments.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "No experiments yet.";
    box.appendChild(p);
  }
  for (const e of experiments) {
    const card = document.createElement("div");
    card.className = "experiment";
    const title = document.createElement("h3");
    const decision = e.decision ? ` — ${e.decision.decision}${e.decision.winner ? " (" + e.decision.winner + ")" : ""}` : "";
    title.textContent = `${e.name || e.id} · ${e.model} · ${e.mode} · ${e.status}${decision}`;
    card.appendChild(title);
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const h of ["arm", "version", "weight", "jobs", "error rate", "accuracy", "feedback", "p50 ms"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const a of e.arms) {
      const row = body.insertRow();
      const lat = a.latency_ms || {};
      for (const v of [a.name, a.version, a.weight ?? "—", a.jobs ?? "—", format(a.error_rate, "pct"),
        format(a.accuracy, "pct"), a.feedback ?? "—", format(lat.p50, "ms")]) {
        row.insertCell().textContent = v;
      }
    }
    card.appendChild(table);
    box.appendChild(card);
  }
}

async function refresh() {
  const key = apiKey();
  if (!key) { showKeyForm(""); return; }
  const windowS = $("window").value;
  let response;
  try {
    response = await fetch(`/v1/stats?window=${encodeURIComponent(windowS)}`, {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
    });
  } catch (err) {
    showError(`The API does not answer (${err.message}); retrying.`);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(KEY_STORE);
    showKeyForm("That key was refused: the page needs a valid key with the operator scope.");
    return;
  }
  if (!response.ok) {
    showError(`GET /v1/stats answered ${response.status}; retrying.`);
    return;
  }
  const doc = await response.json();
  showError("");
  $("key-form").hidden = true;
  $("main").hidden = false;
  fillStats(doc);
  drawCharts(doc);
  drawTables(doc);
  $("updated").textContent = "updated " + clock(doc.generated_at);
  document.body.dataset.generatedAt = doc.generated_at;
  document.body.dataset.state = "ready";
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = setInterval(refresh, POLL_MS);
  return refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromFragment();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    $("key").value = "";
    schedule();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showKeyForm("");
  });
  $("window").addEventListener("change", () => {
    queueHistory.length = 0;
    schedule();
  });
  schedule();
});
