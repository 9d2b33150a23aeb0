// vpp operator dashboard. Plain JavaScript, no dependencies, no build step.
//
// Data sources:
// - the live feed, WebSocket /api/v1/stream?token=... (browsers cannot set headers on a
//   WebSocket): order events, positions, capacity, alerts, latency snapshots;
// - REST, polled every POLL_MS as a fallback and for the first paint: /health, /metrics
//   (counters), /api/v1/orders, /api/v1/positions, /api/v1/capacity, /api/v1/latency.
// Everything shown is bounded: at most MAX_ALERTS alerts, MAX_ORDERS rows, HISTORY points per
// latency series.
"use strict";

const POLL_MS = 2000;
const MAX_ALERTS = 100;
const MAX_ORDERS = 200;
const HISTORY = 120;
const TOKEN_KEY = "vpp.token";
const STAGES = ["market_data_decode", "strategy_decision", "risk_check", "oms_to_wire",
  "venue_roundtrip_ack", "telemetry_to_capacity", "journal_commit_lag"];
const QUANTILES = [["p50_us", "#3fb37f"], ["p90_us", "#4aa3df"], ["p99_us", "#e0a43a"], ["p999_us", "#e05252"]];

const state = {
  token: localStorage.getItem(TOKEN_KEY) || "",
  ws: null,
  wsRetryMs: 500,
  streamMsgs: 0,
  orders: new Map(),        // client_order_id -> order summary (open ones only)
  positions: new Map(),     // "agg/market/interval" -> {agg, net}
  capacity: new Map(),      // aggregation id -> capacity
  names: new Map(),         // aggregation id -> name
  alerts: [],
  latency: new Map(),       // "stage/scope" -> [{t, p50_us, ...}]
};

const $ = (id) => document.getElementById(id);

function setText(id, v) {
  const el = $(id);
  if (el && el.textContent !== String(v)) el.textContent = String(v);
}

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function num(v) {
  const n = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(n) ? n : 0;
}

function fmt(v, dp) {
  return num(v).toFixed(dp == null ? 2 : dp);
}

async function api(path, opts) {
  const o = opts || {};
  const headers = Object.assign({ "Accept": "application/json" }, o.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (o.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method: o.method || "GET", headers,
    body: o.body === undefined ? undefined : JSON.stringify(o.body) });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!res.ok) {
    // The API's one error shape: {"error": {"code", "message", "field"?}}.
    const msg = body && body.error && body.error.message ? body.error.message : (res.status + " " + res.statusText);
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return body;
}

// A list endpoint answers {items: [...], ...} (paginated) or a bare array.
function items(body) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body.items)) return body.items;
  return [];
}

// ------------------------------------------------------------------ rendering

function renderConnections(health) {
  const tbody = $("connections").querySelector("tbody");
  const venues = (health && health.venues) || [];
  tbody.innerHTML = venues.length === 0
    ? '<tr><td colspan="2" class="muted">no venue connections</td></tr>'
    : venues.map((v) => {
      const cls = v.connected ? "connected" : "down";
      return `<tr><td>${esc(v.venue)}</td><td class="state-${cls}">${esc(v.state)}</td></tr>`;
    }).join("");
  const degraded = (health && health.degraded_actors) || [];
  $("degraded").innerHTML = degraded.length === 0 ? '<li class="muted">none</li>'
    : degraded.map((a) => `<li class="sev-warning">${esc(a.actor)}: ${esc(a.status)} ${esc(a.reason || "")}</li>`).join("");
  const badge = $("health-badge");
  const ready = health && health.ready;
  badge.textContent = "health: " + (health ? (ready ? health.status : "not ready") : "?");
  badge.className = "badge " + (!health ? "off" : (!ready ? "bad" : (health.status === "healthy" ? "ok" : "warn")));
}

function renderAggregations() {
  const net = new Map();
  for (const p of state.positions.values()) {
    const cur = net.get(p.agg) || { net: 0, intervals: 0 };
    cur.net += p.net; if (p.net !== 0) cur.intervals += 1;
    net.set(p.agg, cur);
  }
  const ids = new Set([...net.keys(), ...state.capacity.keys(), ...state.names.keys()]);
  const rows = [...ids].sort((a, b) => num(a) - num(b)).map((id) => {
    const p = net.get(id) || { net: 0, intervals: 0 };
    const c = state.capacity.get(id) || {};
    const name = state.names.get(id) || ("#" + id);
    return `<tr><td>${esc(name)}</td><td>${fmt(p.net, 3)}</td><td>${p.intervals}</td>` +
      `<td>${c.up_flex_kw == null ? "-" : fmt(c.up_flex_kw, 1)}</td>` +
      `<td>${c.down_flex_kw == null ? "-" : fmt(c.down_flex_kw, 1)}</td>` +
      `<td>${c.energy_kwh == null ? "-" : fmt(c.energy_kwh, 1)}</td></tr>`;
  });
  $("aggregations").querySelector("tbody").innerHTML = rows.length ? rows.join("")
    : '<tr><td colspan="6" class="muted">no aggregations</td></tr>';
}

function renderOrders() {
  const list = [...state.orders.values()].slice(-MAX_ORDERS).reverse();
  $("orders").querySelector("tbody").innerHTML = list.length === 0
    ? '<tr><td colspan="7" class="muted">no open orders</td></tr>'
    : list.map((o) => `<tr><td>${esc(o.id)}</td><td>${esc(o.side)}</td><td>${fmt(o.qty, 3)}</td>` +
      `<td>${fmt(o.price, 2)}</td><td>${fmt(o.filled, 3)}</td><td>${esc(o.status)}</td>` +
      `<td>${esc(o.interval || "")}</td></tr>`).join("");
  setText("m-open-orders", state.orders.size);
}

function renderAlerts() {
  $("alerts").innerHTML = state.alerts.length === 0 ? '<li class="muted">no alerts</li>'
    : state.alerts.map((a) => `<li class="sev-${esc(a.severity)}">${esc(a.at || "")} ` +
      `<b>${esc(a.severity)}</b> ${esc(a.source || "")}: ${esc(a.message)}</li>`).join("");
}

function addAlert(a) {
  a.severity = a.severity || a.level || "info";
  a.at = a.at || new Date().toLocaleTimeString();
  state.alerts.unshift(a);
  if (state.alerts.length > MAX_ALERTS) state.alerts.length = MAX_ALERTS;
  renderAlerts();
}

// Latency: one canvas per stage/scope, four quantile lines over the last HISTORY snapshots.
function recordLatency(stats) {
  const t = Date.now();
  for (const s of stats || []) {
    const key = s.stage + "/" + s.scope;
    let series = state.latency.get(key);
    if (!series) { series = []; state.latency.set(key, series); }
    series.push({ t, p50_us: num(s.p50_us), p90_us: num(s.p90_us), p99_us: num(s.p99_us),
      p999_us: num(s.p999_us), count: num(s.count) });
    if (series.length > HISTORY) series.shift();
    if (s.stage === "oms_to_wire" && s.scope === "tick_to_order") setText("m-t2o-p99", fmt(s.p99_us, 0));
  }
  drawLatency();
}

function canvasFor(key) {
  const id = "lat-" + key.replace(/[^a-zA-Z0-9_-]/g, "_");
  let c = document.getElementById(id);
  if (!c) {
    const fig = document.createElement("figure");
    fig.innerHTML = `<figcaption id="${id}-cap">${esc(key)}</figcaption><canvas id="${id}" width="480" height="140"></canvas>`;
    const stage = key.split("/")[0];
    fig.dataset.order = String(STAGES.indexOf(stage) + 1 || 99);
    const grid = $("latency");
    const after = [...grid.children].find((f) => num(f.dataset.order) > num(fig.dataset.order));
    grid.insertBefore(fig, after || null);
    c = document.getElementById(id);
  }
  return c;
}

function drawLatency() {
  for (const [key, series] of state.latency) {
    const c = canvasFor(key);
    const ctx = c.getContext("2d");
    const w = c.width, h = c.height, padL = 44, padB = 14;
    ctx.clearRect(0, 0, w, h);
    let lo = Infinity, hi = 0;
    for (const p of series) for (const [q] of QUANTILES) {
      if (p[q] > 0) { lo = Math.min(lo, p[q]); hi = Math.max(hi, p[q]); }
    }
    if (!(hi > 0)) { lo = 1; hi = 10; }
    const l0 = Math.floor(Math.log10(Math.max(lo, 0.1))), l1 = Math.max(l0 + 1, Math.ceil(Math.log10(hi)));
    const y = (v) => h - padB - (Math.log10(Math.max(v, Math.pow(10, l0))) - l0) / (l1 - l0) * (h - padB - 6);
    const x = (i) => padL + i * (w - padL - 6) / Math.max(1, HISTORY - 1);
    ctx.strokeStyle = "#2a3440"; ctx.fillStyle = "#8a97a6"; ctx.font = "10px sans-serif"; ctx.lineWidth = 1;
    for (let d = l0; d <= l1; d++) {
      const yy = y(Math.pow(10, d));
      ctx.beginPath(); ctx.moveTo(padL, yy); ctx.lineTo(w, yy); ctx.stroke();
      ctx.fillText(Math.pow(10, d) >= 1000 ? (Math.pow(10, d) / 1000) + "ms" : Math.pow(10, d) + "us", 2, yy + 3);
    }
    const offset = HISTORY - series.length;
    for (const [q, color] of QUANTILES) {
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
      series.forEach((p, i) => { const xx = x(i + offset), yy = y(p[q]); if (i === 0) ctx.moveTo(xx, yy); else ctx.lineTo(xx, yy); });
      ctx.stroke();
    }
    const last = series[series.length - 1];
    const cap = document.getElementById(c.id + "-cap");
    if (cap && last) {
      cap.textContent = `${key}  n=${last.count}  p50 ${fmt(last.p50_us, 1)}  p99 ${fmt(last.p99_us, 1)}  p99.9 ${fmt(last.p999_us, 1)} us`;
    }
  }
}

// ------------------------------------------------------------------ data

function orderSummary(o) {
  // Accepts the engine's Order (request + state) or a flat summary.
  const req = o.request || o;
  return {
    id: o.client_order_id || req.client_order_id || o.id,
    side: req.side, qty: req.quantity_mw, price: req.price_cny_per_mwh,
    filled: o.filled_mw != null ? o.filled_mw : (o.filled_quantity_mw != null ? o.filled_quantity_mw : 0),
    status: o.status, interval: (req.key && req.key.interval) || req.interval || "",
  };
}

const TERMINAL = new Set(["filled", "cancelled", "rejected", "expired"]);

function applyOrder(o) {
  const s = orderSummary(o);
  if (!s.id) return;
  if (TERMINAL.has(String(s.status))) state.orders.delete(s.id);
  else state.orders.set(s.id, s);
}

// Positions are kept per (aggregation, market, interval) and summed per aggregation.
function applyPosition(p) {
  const key = `${p.aggregation_id}/${p.market_id}/${p.interval_start}`;
  state.positions.set(key, { agg: String(p.aggregation_id), net: num(p.net_sold_mw) });
}

function applyPositions(list) {
  state.positions.clear();
  for (const p of list || []) applyPosition(p);
  renderAggregations();
}

function applyCapacity(list) {
  for (const c of list || []) {
    const id = String(c.aggregation_id);
    const view = Object.assign({}, state.capacity.get(id) || {});
    if (c.up_flex_kw != null) view.up_flex_kw = num(c.up_flex_kw);
    if (c.down_flex_kw != null) view.down_flex_kw = num(c.down_flex_kw);
    if (c.up_flex_mw != null) view.up_flex_kw = num(c.up_flex_mw) * 1000;
    if (c.down_flex_mw != null) view.down_flex_kw = num(c.down_flex_mw) * 1000;
    if (c.energy_kwh != null) view.energy_kwh = num(c.energy_kwh);
    state.capacity.set(id, view);
    if (c.name) state.names.set(id, c.name);
  }
  renderAggregations();
}

// Prometheus text: sums every series of a family.
function promSum(text, name) {
  let total = 0, seen = false;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== "{" && rest[0] !== " ") continue;
    total += num(line.slice(line.lastIndexOf(" ") + 1)); seen = true;
  }
  return seen ? total : null;
}

async function pollMetrics() {
  try {
    const res = await fetch("/metrics");
    const text = await res.text();
    const orders = promSum(text, "vpp_orders_total");
    const fills = promSum(text, "vpp_fills_total");
    const tel = promSum(text, "vpp_telemetry_samples_total");
    if (orders != null) setText("m-orders", orders);
    if (fills != null) setText("m-fills", fills);
    if (tel != null) setText("m-telemetry", tel);
  } catch (_) { /* shown as stale numbers; the health badge says why */ }
}

async function poll() {
  try { renderConnections(await api("/health")); } catch (e) {
    renderConnections(e.status === 503 ? { ready: false, status: "not ready", venues: [] } : null);
  }
  await pollMetrics();
  if (!state.token) return;
  try {
    const [orders, positions, capacity] = await Promise.all([
      api("/api/v1/orders?status=open&limit=" + MAX_ORDERS),
      api("/api/v1/positions?limit=500&nonzero=true"),
      api("/api/v1/capacity"),
    ]);
    state.orders.clear();
    for (const o of items(orders)) applyOrder(o);
    renderOrders();
    applyPositions(items(positions));
    applyCapacity(items(capacity));
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      recordLatency(items(await api("/api/v1/latency")));
    }
    refreshKill();
    setText("m-updated", new Date().toLocaleTimeString());
  } catch (e) {
    if (e.status === 401) addAlert({ severity: "warning", source: "dashboard", message: "token refused: " + e.message });
  }
}

// The stream's messages are {"type": ..., fields...}; unknown types are counted and ignored.
function onStream(msg) {
  state.streamMsgs += 1;
  setText("m-stream-msgs", state.streamMsgs);
  setText("m-updated", new Date().toLocaleTimeString());
  switch (msg.type) {
    case "order": {
      const o = Object.assign({}, msg.detail || {});
      o.status = msg.status;
      if (!o.request) o.client_order_id = msg.client_order_id;
      applyOrder(o);
      renderOrders();
      break;
    }
    case "position": applyPosition(msg); renderAggregations(); break;
    case "capacity": applyCapacity([msg]); break;
    case "alert": addAlert({ level: msg.level, source: "engine", message: msg.message }); break;
    case "latency": {
      const snap = msg.snapshot || {};
      recordLatency(snap.latencies || []);
      const c = snap.counters || {};
      if (c.orders_total != null) setText("m-orders", c.orders_total);
      if (c.fills_total != null) setText("m-fills", c.fills_total);
      if (c.telemetry_samples_total != null) setText("m-telemetry", c.telemetry_samples_total);
      break;
    }
    case "lagged":
      addAlert({ level: "warning", source: "stream", message: `this client fell behind; ${msg.skipped} messages skipped` });
      break;
    default: break;
  }
}

function connectStream() {
  if (!state.token) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/v1/stream?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  const badge = $("conn-badge");
  ws.onopen = () => { badge.textContent = "stream: live"; badge.className = "badge ok"; state.wsRetryMs = 500; };
  ws.onmessage = (ev) => { try { onStream(JSON.parse(ev.data)); } catch (_) { /* not JSON: ignored */ } };
  ws.onclose = () => {
    badge.textContent = "stream: offline"; badge.className = "badge off";
    if (state.ws === ws) {
      setTimeout(connectStream, state.wsRetryMs);
      state.wsRetryMs = Math.min(state.wsRetryMs * 2, 10000);
    }
  };
}

// ------------------------------------------------------------------ kill switch

// GET /api/v1/risk/kill-switch lists the engaged switches; the dashboard works the global one.
function renderKill(rows) {
  if (!Array.isArray(rows)) return;
  const global = rows.find((r) => JSON.stringify(r.scope).toLowerCase().includes("global"));
  $("kill-state").textContent = "state: " + (global ? "ENGAGED" : "released") +
    (rows.length > (global ? 1 : 0) ? ` (${rows.length - (global ? 1 : 0)} narrower switch(es) engaged)` : "");
  $("kill-state").className = global ? "sev-critical" : "muted";
}

async function refreshKill() {
  try { renderKill(await api("/api/v1/risk/kill-switch")); } catch (_) { /* engine not running */ }
}

async function kill(engage) {
  const reason = $("kill-reason").value.trim();
  if (engage && !reason) { $("kill-result").textContent = "a reason is required"; return; }
  try {
    const body = await api("/api/v1/risk/kill-switch/" + (engage ? "engage" : "release"), {
      method: "POST", body: { scope: "global", reason: reason || "released from the dashboard" } });
    $("kill-result").textContent = body && body.message ? body.message : (engage ? "engaged" : "released");
  } catch (e) {
    $("kill-result").textContent = "refused: " + e.message;
  }
  refreshKill();
}

async function whoami() {
  // Only admins see the kill switch; the API checks the role again on every call.
  try {
    const me = await api("/api/v1/session");
    $("kill-panel").style.display = me && me.role === "admin" ? "" : "none";
  } catch (_) { $("kill-panel").style.display = "none"; }
  refreshKill();
}

// ------------------------------------------------------------------ boot

function boot() {
  $("token-input").value = state.token ? "********" : "";
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("token-input").value.trim();
    if (!v || v === "********") return;
    state.token = v;
    localStorage.setItem(TOKEN_KEY, v);
    $("token-input").value = "********";
    if (state.ws) { const old = state.ws; state.ws = null; old.close(); }
    connectStream(); whoami(); poll();
  });
  $("token-clear").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY); state.token = ""; $("token-input").value = "";
    if (state.ws) { const old = state.ws; state.ws = null; old.close(); }
  });
  $("kill-engage").addEventListener("click", () => kill(true));
  $("kill-release").addEventListener("click", () => kill(false));
  renderOrders(); renderAggregations(); renderAlerts();
  connectStream(); whoami(); poll();
  setInterval(poll, POLL_MS);
}

boot();
