// lb-proxy status page: renders /api/status and refreshes it every 2 s.
//
// Everything from the server goes into the DOM through textContent and attributes,
// never innerHTML, so ids and errors from discovery cannot inject markup.
// Auth: a `?token=` in the page URL is sent as `Authorization: Bearer`; Basic
// credentials are sent by the browser itself for same-origin fetches.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const token = new URLSearchParams(window.location.search).get("token");
  const root = document.getElementById("services");
  const banner = document.getElementById("banner");
  const updated = document.getElementById("updated");
  const generation = document.getElementById("generation");
  const auto = document.getElementById("auto");
  let timer = null;
  let busy = false;

  // Absolute URLs on the origin: a page opened as http://user:pass@host/ resolves
  // relative URLs with the credentials in them, which fetch() refuses. The browser
  // still sends the Basic credentials it has for the origin.
  function api(path) {
    return new URL(path, window.location.origin).href;
  }

  function headers() {
    const h = { Accept: "application/json" };
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  // el("td", {class: "x"}, "text", child, ...)
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "onclick") e.addEventListener("click", v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fmtInt(n) {
    return Number(n).toLocaleString("en-US");
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1) return (ms * 1000).toFixed(0) + " µs";
    if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 1) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  }

  function fmtAgo(s) {
    if (s < 1) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function fmtWeight(w) {
    if (w === null || w === undefined) return "–";
    return Number.isInteger(w) ? String(w) : w.toFixed(2);
  }

  function showBanner(text, kind) {
    if (!text) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.hidden = false;
    banner.className = "banner " + (kind || "error");
    banner.textContent = text;
  }

  // POSTs an admin action; the banner says how it went, then the page refreshes.
  async function post(url, what, done, button) {
    button.disabled = true;
    try {
      const r = await fetch(api(url), { method: "POST", headers: headers(), credentials: "same-origin" });
      let body = null;
      try {
        body = await r.json();
      } catch (_) {
        body = null;
      }
      if (!r.ok) {
        showBanner(what + " failed: " + r.status + " " + ((body && body.error) || r.statusText));
      } else {
        showBanner(done, "info");
      }
    } catch (e) {
      showBanner(what + " failed: " + e);
    }
    await refresh();
  }

  function act(service, id, verb, button) {
    const url =
      "/api/services/" + encodeURIComponent(service) + "/endpoints/" + encodeURIComponent(id) + "/" + verb;
    return post(url, verb + " " + id, service + " / " + id + ": " + verb + (verb === "drain" ? "ed" : "d"), button);
  }

  function renew(name, button) {
    const url = "/api/certificates/" + encodeURIComponent(name) + "/renew";
    return post(url, "renew " + name, name + ": renewal ordered", button);
  }

  function checkCell(c) {
    if (!c) return el("td", { class: "muted" }, "–");
    const when = fmtAgo(c.ago_s);
    if (c.ok) return el("td", { class: "check-ok" }, "ok ", el("span", { class: "muted" }, when));
    return el(
      "td",
      { class: "check-failed", title: c.error || "" },
      "failed",
      c.error ? el("span", { class: "err" }, ": " + c.error) : null,
      " ",
      el("span", { class: "muted" }, when)
    );
  }

  function endpointRow(svc, e) {
    const draining = e.state === "draining";
    const verb = draining ? "enable" : "drain";
    const button = el("button", { type: "button", class: "btn btn-" + verb, "data-action": verb }, verb);
    button.addEventListener("click", () => act(svc.name, e.id, verb, button));
    const meta = Object.entries(e.metadata || {})
      .map(([k, v]) => k + "=" + v)
      .join("\n");
    return el(
      "tr",
      { class: "ep st-row-" + e.state, "data-endpoint": e.id, "data-state": e.state },
      el("td", { class: "id", title: meta || null }, e.id),
      el("td", { class: "addr" }, e.addr),
      el("td", { class: "st st-" + e.state }, e.state),
      el("td", { class: "num" }, fmtInt(e.weight)),
      el("td", { class: "num" }, fmtWeight(e.effective_weight)),
      el("td", { class: "num" }, fmtInt(e.in_flight)),
      el("td", { class: "num" }, fmtInt(e.requests)),
      el("td", { class: "num" + (e.failures > 0 ? " warn" : "") }, fmtInt(e.failures)),
      el("td", { class: "num" + (e.times_ejected > 0 ? " warn" : "") }, fmtInt(e.times_ejected)),
      el("td", { class: "num" }, e.requests > 0 ? fmtMs(e.ewma_latency_ms) : "–"),
      checkCell(e.last_check),
      el("td", { class: "act" }, button)
    );
  }

  function serviceSection(svc) {
    const head = el(
      "tr",
      {},
      ...[
        "Endpoint",
        "Address",
        "State",
        "Weight",
        "Effective",
        "In flight",
        "Requests",
        "Failures",
        "Ejections",
        "EWMA",
        "Last check",
        "",
      ].map((h) => el("th", {}, h))
    );
    const rows = svc.endpoints.map((e) => endpointRow(svc, e));
    if (rows.length === 0) {
      rows.push(el("tr", {}, el("td", { colspan: 12, class: "muted empty" }, "no endpoints discovered")));
    }
    const totals = svc.endpoints.reduce(
      (t, e) => ({ in_flight: t.in_flight + e.in_flight, requests: t.requests + e.requests, failures: t.failures + e.failures }),
      { in_flight: 0, requests: 0, failures: 0 }
    );
    const health = svc.eligible === 0 ? "down" : svc.eligible < svc.total ? "degraded" : "up";
    return el(
      "section",
      { class: "service", "data-service": svc.name },
      el(
        "div",
        { class: "svc-head svc-" + health },
        el("span", { class: "svc-name" }, svc.name),
        el("span", { class: "pill source source-" + (svc.source || "file"), title: "where the service is defined" }, svc.source || "file"),
        el("span", { class: "pill" }, svc.policy),
        el("span", { class: "pill" }, svc.eligible + " / " + svc.total + " eligible"),
        el(
          "span",
          { class: "pill routes", title: "routes to this service" },
          svc.routes && svc.routes.length ? "routes: " + svc.routes.join(", ") : "no route"
        ),
        svc.panic ? el("span", { class: "pill panic", title: "too few healthy endpoints: balancing over all" }, "PANIC") : null,
        el(
          "span",
          { class: "svc-totals" },
          fmtInt(totals.in_flight) + " in flight · " + fmtInt(totals.requests) + " requests · " + fmtInt(totals.failures) + " failures"
        )
      ),
      el("table", { class: "eps" }, el("thead", {}, head), el("tbody", {}, ...rows))
    );
  }

  function consulLine(c) {
    const failing = c.consecutive_failures > 0;
    let text = "consul " + c.watching + " (" + c.agent + "): " + (failing ? "FAILING" : c.last_success_unix ? "ok" : "not reached yet") +
      " · index " + c.last_index + " · " + c.instances + (c.watching === "catalog" ? " services" : " instances") +
      " · " + c.requests + " requests · " + c.errors + " errors";
    if (c.last_success_ago_s !== null && c.last_success_ago_s !== undefined) text += " · last answer " + c.last_success_ago_s.toFixed(1) + " s ago";
    if (failing) text += " · retry in " + (c.backoff_s || 0).toFixed(1) + " s, serving the last known set · " + (c.last_error || "");
    return el("p", { class: failing ? "source-line stale" : "source-line", "data-source": "consul" }, text);
  }

  function sourceLine(name, s) {
    if (name === "consul" && Array.isArray(s)) return s.map(consulLine);
    const state = !s.synced && !s.reachable ? "not reached yet" : s.stale ? "STALE" : "ok";
    const cls = s.stale || !s.reachable ? "source-line stale" : "source-line";
    let text = name + " (" + s.endpoint + "): " + state + " · " + s.containers + " containers · " + s.events + " events · " + s.relists + " listings · " + s.errors + " errors";
    if (s.stale && s.stale_since_unix) {
      text += " · unreachable since " + new Date(s.stale_since_unix * 1000).toLocaleTimeString() + ", serving the last known containers";
    }
    if (s.last_error && (s.stale || !s.reachable)) text += " · " + s.last_error;
    return el("p", { class: cls, "data-source": name }, text);
  }

  // A certificate with fewer days left than this is a warning.
  const WARN_DAYS = 14;

  // "2025-03-01" (UTC) for a Unix time.
  function fmtDate(unix) {
    return new Date(unix * 1000).toISOString().slice(0, 10);
  }

  // "2025-03-01 12:00:00 UTC".
  function fmtStamp(unix) {
    return new Date(unix * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  // A span given in days: "89 days", "1 day", "5 h", "12 min".
  function fmtDays(d) {
    if (d >= 2) return Math.floor(d) + " days";
    if (d >= 1) return "1 day";
    if (d * 24 >= 1) return Math.floor(d * 24) + " h";
    return Math.max(1, Math.floor(d * 1440)) + " min";
  }

  // Until a Unix time: "in 25 s", "in 3 min", "now".
  function fmtIn(unix) {
    const s = unix - Date.now() / 1000;
    if (s < 1) return "now";
    if (s < 90) return "in " + Math.round(s) + " s";
    if (s < 5400) return "in " + Math.round(s / 60) + " min";
    return "in " + Math.round(s / 3600) + " h";
  }

  function expiry(days) {
    if (days < 0) return "expired";
    return days < WARN_DAYS ? "warn" : "ok";
  }

  // The days-left cell: plain, a warning under WARN_DAYS, an error once expired.
  function leftCell(days) {
    if (days === null || days === undefined) return el("td", { class: "num muted" }, "–");
    const level = expiry(days);
    const text = level === "expired" ? "expired " + fmtDays(-days) + " ago" : fmtDays(days);
    return el("td", { class: "num left left-" + level, "data-days-left": days.toFixed(2) }, text);
  }

  // The dark head of a panel, like a service's: a name, pills, and a coloured edge.
  function panelHead(title, health, pills) {
    return el("div", { class: "svc-head svc-" + health }, el("span", { class: "svc-name" }, title), ...pills);
  }

  function table(columns, rows, empty) {
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: columns.length, class: "muted empty" }, empty)));
    return el(
      "table",
      { class: "eps" },
      el("thead", {}, el("tr", {}, ...columns.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)
    );
  }

  function certRow(c) {
    const level = expiry(c.days_left);
    const names = c.names && c.names.length ? c.names.join(", ") : null;
    return el(
      "tr",
      { class: "cert cert-" + level, "data-cert": names || "", "data-expiry": level },
      el(
        "td",
        { class: "names" },
        names ? el("span", { class: "id" }, names) : el("span", { class: "muted" }, "(no name)"),
        c.default
          ? el("span", { class: "tag", title: "served when the client's server name matches no other certificate" }, "default")
          : null
      ),
      el("td", { class: "issuer", title: c.issuer }, c.issuer),
      el(
        "td",
        { class: "date", title: "valid from " + fmtStamp(c.not_before_unix) + " until " + fmtStamp(c.not_after_unix) },
        fmtDate(c.not_after_unix)
      ),
      leftCell(c.days_left),
      el("td", { class: "addr source", title: c.source }, c.source)
    );
  }

  function certificatesSection(certs) {
    const count = (level) => certs.filter((c) => expiry(c.days_left) === level).length;
    const expired = count("expired");
    const warn = count("warn");
    const pills = [el("span", { class: "pill" }, certs.length + (certs.length === 1 ? " certificate" : " certificates"))];
    if (warn) pills.push(el("span", { class: "pill pill-warn" }, warn + " within " + WARN_DAYS + " days"));
    if (expired) pills.push(el("span", { class: "pill panic" }, expired + " expired"));
    return el(
      "section",
      { class: "panel", "data-section": "certificates" },
      panelHead("Certificates", expired ? "down" : warn ? "degraded" : "up", pills),
      table(
        ["Names", "Issuer", "Expires", "Left", "Source"],
        // Soonest to expire first: what needs attention leads.
        certs.slice().sort((a, b) => a.not_after_unix - b.not_after_unix).map(certRow),
        "no certificate loaded"
      )
    );
  }

  // What an ACME name is waiting for, or what went wrong.
  function acmeDetail(a) {
    if (a.state === "failed") {
      return el(
        "td",
        { class: "check-failed detail" },
        a.error || "failed",
        " ",
        el("span", { class: "muted" }, "· next try " + new Date(a.retry_at_unix * 1000).toLocaleTimeString() + " (" + fmtIn(a.retry_at_unix) + ")")
      );
    }
    if (a.state === "locked") {
      return el(
        "td",
        { class: "detail muted" },
        "another process is ordering it · looking again " + fmtIn(a.retry_at_unix)
      );
    }
    if (a.state === "ordering") return el("td", { class: "detail muted" }, "order under way");
    if (a.last_error) return el("td", { class: "detail muted", title: a.last_error }, "last error: " + a.last_error);
    return el("td", { class: "detail muted" }, a.state === "pending" ? "no certificate yet" : "");
  }

  function acmeRow(a) {
    const button = el("button", { type: "button", class: "btn btn-renew", "data-action": "renew", title: "order a new certificate now" }, "renew");
    button.addEventListener("click", () => renew(a.name, button));
    const days = a.not_after_unix ? a.not_after_unix / 86400 - Date.now() / 86400000 : null;
    return el(
      "tr",
      { class: "acme-name", "data-acme": a.name, "data-state": a.state },
      el("td", { class: "id" }, a.name),
      el("td", { class: "st st-acme-" + a.state }, a.state),
      el("td", { class: "date" }, a.not_after_unix ? fmtDate(a.not_after_unix) : "–"),
      leftCell(days),
      el(
        "td",
        { class: "num" },
        fmtInt(a.orders_ok) + " ok · ",
        el("span", { class: a.orders_failed > 0 ? "warn" : null }, fmtInt(a.orders_failed) + " failed")
      ),
      acmeDetail(a),
      el("td", { class: "act" }, button)
    );
  }

  function acmeSection(names) {
    const failed = names.filter((a) => a.state === "failed").length;
    const valid = names.filter((a) => a.state === "valid").length;
    const pills = [el("span", { class: "pill" }, valid + " / " + names.length + " valid")];
    if (failed) pills.push(el("span", { class: "pill panic" }, failed + " failed"));
    return el(
      "section",
      { class: "panel", "data-section": "acme" },
      panelHead("ACME", failed ? "down" : valid < names.length ? "degraded" : "up", pills),
      table(
        ["Name", "State", "Expires", "Left", "Orders", "Details", ""],
        names.map(acmeRow),
        "no names to order (routes with acme = true, [acme] names)"
      )
    );
  }

  function render(status, source) {
    if (!status || !Array.isArray(status.services)) return;
    generation.textContent = "config generation " + status.generation;
    const sections = Object.entries(status.sources || {}).flatMap(([name, s]) => sourceLine(name, s));
    sections.push(...status.services.map(serviceSection));
    if (status.services.length === 0) sections.push(el("p", { class: "muted" }, "no services configured"));
    const certs = Array.isArray(status.certificates) ? status.certificates : [];
    const acme = Array.isArray(status.acme) ? status.acme : null;
    if (certs.length > 0 || acme) sections.push(certificatesSection(certs));
    if (acme) sections.push(acmeSection(acme));
    root.replaceChildren(...sections);
    document.body.dataset.source = source;
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const r = await fetch(api("/api/status"), { headers: headers(), credentials: "same-origin", cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const status = await r.json();
      render(status, "api");
      updated.textContent = "updated " + new Date().toLocaleTimeString();
      updated.className = "muted";
      if (!banner.classList.contains("info")) showBanner(null);
    } catch (e) {
      updated.textContent = "update failed: " + e.message;
      updated.className = "stale";
    } finally {
      busy = false;
    }
  }

  function schedule() {
    if (timer !== null) clearInterval(timer);
    timer = auto.checked ? setInterval(refresh, REFRESH_MS) : null;
  }

  try {
    const initial = JSON.parse(document.getElementById("initial-status").textContent);
    render(initial, "initial");
  } catch (_) {
    // The first fetch will fill it in.
  }
  if (token) {
    // The links carry the token too (GET routes take `?token=`).
    for (const a of document.querySelectorAll("a[href^='/']")) {
      a.setAttribute("href", a.getAttribute("href") + "?token=" + encodeURIComponent(token));
    }
  }
  auto.addEventListener("change", schedule);
  schedule();
  refresh();
})();
