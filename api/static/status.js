// tlstrace status page: polls the API every POLL_MS and tails /api/events (server-sent
// events, read with fetch() so that the bearer token goes in a header, never in a URL).
// Everything from the API is put in the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 2000;
const MAX_ROWS = 200; // open connections listed
const MAX_EVENTS = 200; // events kept in the tail
const TOKEN_KEY = "tlstrace-token";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let tracingOn = null;
let pollTimer = null;
let pollRun = 0; // one polling loop at a time: a loop from an older run stops itself
let stream = null; // AbortController of the event stream
let needToken = false;

class AuthError extends Error {}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.dataset[k] = v;
  }
  for (const c of children) {
    node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  }
  return node;
}

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({ cache: "no-store" }, options || {});
  opts.headers = authHeaders(opts.headers);
  const r = await fetch(path, opts);
  if (r.status === 401) throw new AuthError("token needed");
  return r;
}

async function getJson(path) {
  const r = await api(path);
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function age(seconds) {
  if (seconds < 60) return seconds.toFixed(0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function clock(epoch) {
  const d = new Date(epoch * 1000);
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
    pad(d.getMilliseconds(), 3);
}

function setPill(node, text, cls) {
  node.textContent = text;
  node.className = "pill " + (cls || "");
}

function fillTable(table, rows, columns, empty) {
  const body = table.tBodies[0];
  const out = rows.map((row) => {
    const tr = el("tr", row.id !== undefined ? { id: String(row.id) } : {});
    for (const [value, cls] of columns(row)) tr.append(el("td", { class: cls || "" }, value));
    return tr;
  });
  if (!out.length) {
    const td = el("td", { class: "empty" }, empty);
    td.colSpan = table.tHead.rows[0].cells.length;
    out.push(el("tr", {}, td));
  }
  body.replaceChildren(...out);
}

function tile(value, label, cls) {
  return el("div", { class: "tile " + (cls || "") },
    el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

// -- token --------------------------------------------------------------------------------

function askToken(message) {
  needToken = true;
  stopPolling();
  stopEvents();
  // nothing from before stays on the page once the token is refused
  $("content").hidden = true;
  $("summary").replaceChildren();
  for (const table of document.querySelectorAll("#content tbody")) table.replaceChildren();
  $("events").replaceChildren();
  $("conn-count").textContent = "";
  $("events-dropped").textContent = "";
  $("about").textContent = "";
  $("token-panel").hidden = false;
  $("token-message").textContent = message || "";
  $("token-forget").hidden = !token;
  $("trace-toggle").disabled = true;
  setPill($("tracing-state"), "?");
  setPill($("link-state"), "token needed", "waiting");
  $("token-input").focus();
}

function useToken(value) {
  token = value;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  needToken = false;
  $("token-panel").hidden = true;
  $("token-forget").hidden = !token;
  start();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("token-input").value.trim();
  $("token-input").value = "";
  useToken(value);
});

$("token-forget").addEventListener("click", () => {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  askToken("");
  start();
});

// -- polling ------------------------------------------------------------------------------

function render(status, trace, conns, dests) {
  $("content").hidden = false;
  $("about").textContent = "v" + status.version + " · " + status.openssl + " · up " +
    age(status.uptime_seconds);
  tracingOn = trace.tracing === "on";
  setPill($("tracing-state"), trace.tracing, trace.tracing);
  const toggle = $("trace-toggle");
  toggle.textContent = tracingOn ? "switch off" : "switch on";
  toggle.disabled = !tracingOn && dests.length === 0;
  toggle.title = toggle.disabled ? "no HEP destination is configured (hep_id)" : "";

  const up = dests.filter((d) => d.connected).length;
  $("summary").replaceChildren(
    tile(status.connections_open.inbound, "open inbound connections"),
    tile(status.connections_open.outbound, "open outbound connections"),
    tile(status.connections_accepted, "accepted since start"),
    tile(status.handshakes_ok, "handshakes completed"),
    tile(status.handshakes_failed, "handshakes failed", status.handshakes_failed ? "bad" : ""),
    tile(status.connections_refused, "refused (connection limit)"),
    tile(trace.traced_connections, "traced connections"),
    tile(up + " / " + dests.length, "HEP destinations up"),
  );

  const total = status.connections_open.inbound + status.connections_open.outbound;
  $("conn-count").textContent = conns.length < total
    ? "(" + total + ", first " + conns.length + " shown)" : "(" + total + ")";
  fillTable($("conn-table"), conns, (c) => [
    [c.id, "mono"], [c.direction], [c.remote, "mono"], [c.listener, "mono"], [c.sni || "–"],
    [c.tls_version || c.state], [c.cipher || "–"], [age(c.age_seconds), "num"],
    [c.messages_in + " / " + c.messages_out, "num"], [c.traced ? "yes" : "no"],
  ], "no open connection");
  fillTable($("failures-table"), status.handshake_failures, (f) => [
    [f.direction], [f.reason], [f.count, "num"],
  ], "none since start");
  fillTable($("dest-table"), dests, (d) => [
    [d.name], [d.transport + ":" + d.address, "mono"], [d.state], [d.sent, "num"],
    [d.dropped, "num"], [d.queue_depth, "num"], [d.last_error || "–"],
  ], "no HEP destination configured (hep_id)");
}

async function poll(run) {
  try {
    const [status, trace, conns, dests] = await Promise.all([
      getJson("/api/status"), getJson("/api/trace"),
      getJson("/api/connections?limit=" + MAX_ROWS), getJson("/api/destinations"),
    ]);
    if (run !== pollRun) return;
    render(status, trace, conns, dests);
    setPill($("link-state"), "connected", "connected");
    $("message").hidden = true;
    if (!stream) startEvents();
  } catch (e) {
    if (run !== pollRun) return;
    if (e instanceof AuthError) {
      askToken(token ? "That token was refused." : "");
      return;
    }
    setPill($("link-state"), "unreachable", "error");
    showMessage("Cannot reach the tlstrace API (" + e.message + "); retrying.");
  }
  pollTimer = setTimeout(() => poll(run), POLL_MS);
}

function stopPolling() {
  pollRun += 1;
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = null;
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

// -- tracing switch -----------------------------------------------------------------------

$("trace-toggle").addEventListener("click", async () => {
  const wanted = tracingOn ? "off" : "on";
  $("trace-toggle").disabled = true;
  try {
    const r = await api("/api/trace", {
      method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ tracing: wanted }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      showMessage("Tracing not switched: " + (body.detail || "HTTP " + r.status));
    } else {
      showMessage("");
    }
  } catch (e) {
    if (e instanceof AuthError) { askToken("That token was refused."); return; }
    showMessage("Tracing not switched: " + e.message);
  }
  start();
});

// -- live events --------------------------------------------------------------------------

function describe(ev) {
  const parts = [ev.direction, ev.remote];
  if (ev.sni) parts.push("sni=" + ev.sni);
  if (ev.event === "accepted" || ev.event === "connected") {
    parts.push(ev.tls_version, ev.cipher);
    if (ev.resumed) parts.push("resumed");
    if (ev.handshake_ms != null) parts.push(ev.handshake_ms.toFixed(1) + " ms");
    parts.push(ev.traced ? "traced" : "not traced");
  } else if (ev.event === "handshake_failed") {
    parts.push(ev.reason + ": " + ev.message);
  } else if (ev.event === "closed") {
    parts.push(ev.message, ev.messages_in + "/" + ev.messages_out + " msgs",
      "after " + age(ev.age_seconds));
  }
  return "conn " + ev.id + " " + parts.filter((p) => p).join(" · ");
}

function addEvent(kind, text, epoch) {
  const list = $("events");
  list.prepend(el("li", { class: kind, event: kind },
    el("span", { class: "muted" }, clock(epoch)), " ", el("span", { class: "kind" }, kind),
    " ", text));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function handleBlock(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return; // a comment (keep-alive)
  const ev = JSON.parse(data.join("\n"));
  if (kind === "connection") {
    addEvent(ev.event, describe(ev), ev.time);
  } else if (kind === "dropped") {
    addEvent("dropped", ev.dropped + " event(s) not shown: this page did not keep up",
      Date.now() / 1000);
    $("events-dropped").textContent = ev.viewer_dropped + " dropped for this page";
  }
}

async function startEvents() {
  const ctl = new AbortController();
  stream = ctl;
  setPill($("events-state"), "connecting", "waiting");
  try {
    const r = await api("/api/events", {
      headers: { Accept: "text/event-stream" }, signal: ctl.signal,
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.detail || "HTTP " + r.status);
    }
    setPill($("events-state"), "live", "live");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleBlock(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    throw new Error("stream ended");
  } catch (e) {
    if (ctl.signal.aborted) return;
    if (e instanceof AuthError) { askToken("That token was refused."); return; }
    setPill($("events-state"), "reconnecting: " + e.message, "error");
    setTimeout(() => { if (stream === ctl) { stream = null; if (!needToken) startEvents(); } },
      3000);
  }
}

function stopEvents() {
  if (stream) stream.abort();
  stream = null;
  setPill($("events-state"), "off", "off");
}

// -- start --------------------------------------------------------------------------------

function start() {
  stopPolling();
  poll(pollRun);
}

start();
