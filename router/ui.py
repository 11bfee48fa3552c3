"""The status page: ``GET /ui`` and the JSON it polls, ``GET /ui/data``.

``/ui`` is one self-contained HTML page (inline CSS and JS, no external
resource; its Content-Security-Policy allows nothing else). It holds no data
and no key, so it may be served without the master key; ``/ui/data`` is
admin-protected like every other path. With a master key the page takes it
from the URL fragment (``/ui#key=sk-...``: a fragment never reaches the server
or its logs, and the page removes it from the address bar at once) or asks for
it, keeps it in ``sessionStorage`` (this tab only) and sends it as
``Authorization: Bearer``. The page polls ``/ui/data`` every second.

Per deployment the page also shows what its answers cost (``spend_usd``, where
known) and how many answers' cost is unknown (``spend_unknown``), as this process
counted them since it started (its ``llm_router_spend`` counters, ``Metrics.spend_by_deployment``).

``RecentDecisions`` is the ring of the last routing decisions the page lists;
the proxy records one entry per request from its log function.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from router.probes import disabled_rows, health_rows

if TYPE_CHECKING:
    from router.proxy import Proxy

def deployment_rows(proxy: Proxy) -> list[dict[str, Any]]:
    """Per deployment: what the page shows (the last background probe, no new one)."""
    config = proxy.config
    rows = []
    spend = proxy.metrics.spend_by_deployment()
    for r in health_rows(config.all_deployments(), proxy.state):
        requests, failures = r["requests"], r["failures"]
        usd, unknown = spend.get(r["id"], (0.0, 0))
        rows.append({
            "id": r["id"], "model_name": r["model_name"], "model": r["model"], "provider": r["provider"],
            "state": r["state"], "healthy": r["healthy"], "in_flight": r["in_flight"],
            "requests": requests, "failures": failures,
            "error_rate": round(failures / requests, 4) if requests else None,
            "ttft_p95_ms": r["ttft_p95_ms"], "latency_p95_ms": r["latency_p95_ms"],
            "cooldown_left_s": r["cooldown_left_s"], "last_error": r["last_error"],
            "last_failure_reason": r["last_failure_reason"],
            "spend_usd": usd, "spend_unknown": unknown,
        })
    return rows


def spend_total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole router's spend on the page: USD where known, and how many answers' cost is not."""
    return {"usd": sum(r["spend_usd"] for r in rows), "unknown": sum(r["spend_unknown"] for r in rows)}


def add_routes(app: web.Application, proxy_key: web.AppKey[Proxy]) -> None:
    """``GET /ui`` and ``GET /ui/data``; ``proxy_key`` is where ``app`` keeps its Proxy."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", headers=PAGE_HEADERS)

    async def data(request: web.Request) -> web.Response:
        proxy = request.app[proxy_key]
        recent = getattr(proxy, "recent", None)
        rows = deployment_rows(proxy)
        body = {"now": round(time.time(), 3), "deployments": rows, "spend": spend_total(rows),
                "disabled": disabled_rows(proxy.config.disabled),
                "queue": proxy.state.admission.snapshot(),
                "recent": recent.snapshot() if recent is not None else []}
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    app.router.add_get("/ui", page)
    app.router.add_get("/ui/data", data)


STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --info: #0969da; --mute: #6e7781; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .2rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .4rem; }
#status { color: var(--mute); margin-bottom: 1rem; } #status.error { color: var(--bad); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #8884; white-space: nowrap; }
th { font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sub { color: var(--mute); font-size: .85em; }
.state { font-weight: 600; } .state.healthy { color: var(--ok); } .state.degraded { color: var(--warn); }
.state.cooldown { color: var(--bad); } .state.half_open { color: var(--info); } .state.disabled { color: var(--mute); }
.bad { color: var(--bad); } .ok { color: var(--ok); }
#login { margin: 1rem 0; padding: 1rem; border: 1px solid #8886; max-width: 28rem; }
#login input { width: 100%; box-sizing: border-box; margin: .4rem 0; }
"""

SCRIPT = r"""
"use strict";
const KEY = "llm-router-ui-key";
const $ = (id) => document.getElementById(id);
const deadlines = new Map();  // deployment id -> Date.now() at which its cooldown ends
let timer = null;

// A key in the fragment (/ui#key=...) goes to sessionStorage and leaves the address bar.
if (location.hash.startsWith("#key=")) {
  sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(5)));
  history.replaceState(null, "", location.pathname + location.search);
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
const ms = (v) => v == null ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms";
const pct = (v) => v == null ? "–" : (100 * v).toFixed(v > 0 && v < 0.1 ? 1 : 0) + "%";
// USD where known, and the answers whose cost is not (never shown as $0)
const usd = (v, unknown) => "$" + (v === 0 ? "0" : Number(v.toPrecision(4)).toString()) + (unknown ? " + " + unknown + " unknown" : "");

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-cooldown]")) {
    const until = deadlines.get(el.dataset.cooldown);
    el.textContent = until == null ? "" : Math.max(0, (until - now) / 1000).toFixed(1) + " s";
  }
}

function render(data) {
  const received = Date.now();
  deadlines.clear();
  const rows = [];
  for (const d of data.deployments) {
    const tr = document.createElement("tr");
    tr.dataset.id = d.id;
    const name = cell(tr, d.id, "id");
    const sub = document.createElement("div");
    sub.className = "sub";
    sub.textContent = d.model_name + " → " + d.model;
    name.appendChild(sub);
    cell(tr, d.provider, "provider");
    const st = cell(tr, d.state.replace("_", "-"), "state " + d.state);
    if (d.last_failure_reason && d.state !== "healthy") st.title = d.last_failure_reason;
    cell(tr, d.healthy ? "yes" : "no", "healthy " + (d.healthy ? "ok" : "bad"));
    cell(tr, String(d.in_flight), "num in-flight");
    cell(tr, ms(d.ttft_p95_ms), "num ttft");
    cell(tr, ms(d.latency_p95_ms), "num latency");
    const er = cell(tr, pct(d.error_rate), "num error-rate");
    er.title = d.failures + " failed of " + d.requests;
    const sp = cell(tr, usd(d.spend_usd, d.spend_unknown), "num spend");
    if (d.spend_unknown) sp.title = d.spend_unknown + " answers of unknown cost (no price configured, or no usage reported)";
    const cd = cell(tr, "", "num cooldown-left");
    if (d.cooldown_left_s != null) {
      deadlines.set(d.id, received + 1000 * d.cooldown_left_s);
      cd.dataset.cooldown = d.id;
    }
    rows.push(tr);
  }
  for (const d of data.disabled || []) {  // configured, never served: a provider llm-router does not speak
    const tr = document.createElement("tr");
    const name = cell(tr, d.model_name, "id");
    const sub = document.createElement("div");
    sub.className = "sub";
    sub.textContent = d.model + ": " + d.error;
    name.appendChild(sub);
    cell(tr, "–", "provider");
    cell(tr, "disabled", "state disabled").title = d.error;
    cell(tr, "no", "healthy bad");
    for (let i = 0; i < 5; i++) cell(tr, "", "num");
    rows.push(tr);
  }
  $("deployments").replaceChildren(...rows);
  $("spend").textContent = "Spend (this process, since start): " + usd(data.spend.usd, data.spend.unknown);

  const queue = [];
  if (data.queue) {  // requests waiting for a slot, by priority class (router.admission)
    for (const [name, c] of Object.entries(data.queue.classes)) {
      const tr = document.createElement("tr");
      cell(tr, name, "class");
      cell(tr, String(c.waiting), "num waiting");
      cell(tr, c.oldest_wait_s == null ? "–" : ms(1000 * c.oldest_wait_s), "num oldest");
      cell(tr, String(c.limit), "num limit");
      cell(tr, String(c.reserved_slots), "num reserved");
      const keys = Object.entries(data.queue.keys).filter(([, by]) => by[name]).map(([k, by]) => k + " " + by[name]);
      cell(tr, keys.join(", "), "keys");
      queue.push(tr);
    }
  }
  $("queue").replaceChildren(...queue);

  const items = [];
  for (const r of data.recent) {
    const tr = document.createElement("tr");
    cell(tr, new Date(r.time * 1000).toLocaleTimeString(), "time");
    cell(tr, r.model, "model");
    cell(tr, r.route_label || (r.cache === "hit" ? "cache" : "no route"), "route");
    cell(tr, r.deployment ? r.deployment + " (" + r.provider + ")" : "–", "deployment");
    cell(tr, r.fallback ? r.fallback.split(",").join(" → ") : String(r.attempts), "attempts");
    cell(tr, String(r.status), "num status " + (r.status >= 400 ? "bad" : "ok")).title = r.error || "";
    cell(tr, ms(r.latency_ms), "num latency");
    items.push(tr);
  }
  $("recent").replaceChildren(...items);
  $("no-recent").hidden = items.length > 0;
  tick();
}

async function poll() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY);
  try {
    const resp = await fetch("ui/data", {cache: "no-store", headers: key ? {Authorization: "Bearer " + key} : {}});
    if (resp.status === 401) {
      sessionStorage.removeItem(KEY);
      $("login").hidden = false;
      status(key ? "The key was refused." : "This router needs its master key.", true);
      return;  // until a key is given
    }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    render(await resp.json());
    $("login").hidden = true;
    status("Updated " + new Date().toLocaleTimeString(), false);
  } catch (err) {
    status("Cannot reach the router: " + err.message, true);
  }
  timer = setTimeout(poll, 1000);
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("key");
  if (input.value) sessionStorage.setItem(KEY, input.value);
  input.value = "";
  poll();
});
setInterval(tick, 200);
poll();
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llm-router status</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<h1>llm-router</h1>
<div id="status">Loading…</div>
<form id="login" hidden>
  <label for="key">Master key</label>
  <input id="key" type="password" autocomplete="off" placeholder="sk-...">
  <button type="submit">Show status</button>
</form>
<h2>Deployments</h2>
<table>
<thead><tr><th>Deployment</th><th>Provider</th><th>State</th><th>Healthy</th><th>In flight</th>
<th>p95 TTFT</th><th>p95 latency</th><th>Error rate</th><th>Spend</th><th>Cooldown</th></tr></thead>
<tbody id="deployments"></tbody>
</table>
<p id="spend" class="sub"></p>
<h2>Waiting for a slot</h2>
<table>
<thead><tr><th>Class</th><th>Waiting</th><th>Longest wait</th><th>Queue limit</th><th>Reserved slots</th><th>Keys</th></tr></thead>
<tbody id="queue"></tbody>
</table>
<h2>Recent routing decisions</h2>
<table>
<thead><tr><th>Time</th><th>Model</th><th>Route</th><th>Deployment</th><th>Attempts</th><th>Status</th><th>Latency</th></tr></thead>
<tbody id="recent"></tbody>
</table>
<p id="no-recent" class="sub">No requests yet.</p>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only this page's own script and style, and fetches to this origin: nothing external loads.
PAGE_HEADERS = {
    "Content-Security-Policy": (f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
                                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
