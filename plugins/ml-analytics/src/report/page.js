// Draws the report embedded in #report-data: summary, per-tool charts, anomaly timeline and
// tables. Plain DOM and SVG, no library, nothing loaded from anywhere.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const KIND_COLOURS = {
    latency: "#d97706", error_rate: "#b91c1c", call_rate: "#7c3aed",
    first_time_tool: "#0891b2", unanswered: "#4b5563"
  };
  const MAX_PANELS = 24;

  function el(tag, attrs, parent, text) {
    const node = document.createElement(tag);
    for (const k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function sv(tag, attrs, parent, text) {
    const node = document.createElementNS(NS, tag);
    for (const k in attrs || {}) node.setAttribute(k, String(attrs[k]));
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  function pct(x) { return (x * 100).toFixed(1) + "%"; }

  // Times in UTC, as precise as the span shown needs: seconds within a few hours.
  let shortSpan = false;
  function when(t) {
    const d = new Date(t);
    const two = (n) => String(n).padStart(2, "0");
    const day = two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate());
    const hm = two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
    return shortSpan ? hm + ":" + two(d.getUTCSeconds()) : day + " " + hm;
  }

  function label(row) { return row.server_label || row.server; }

  // The time span every chart shares.
  function span(data) {
    let lo = data.since_ms;
    let hi = data.until_ms;
    if (lo === null || lo === undefined) {
      lo = hi;
      for (const row of data.tools.concat(data.methods)) {
        for (const p of row.timeline) lo = Math.min(lo, p.t);
      }
      for (const a of data.anomalies) lo = Math.min(lo, a.time_ms);
    }
    // At least ten timeline steps wide, so that one bucket is a bar, not the whole chart.
    const step = data.step_ms || 60000;
    if (hi - lo < 10 * step) lo = hi - 10 * step;
    shortSpan = hi - lo <= 6 * 3600 * 1000;
    return [lo, hi];
  }

  function timeAxis(svg, x, box, lo, hi) {
    sv("line", { x1: box.l, y1: box.b, x2: box.r, y2: box.b, class: "axis" }, svg);
    for (let i = 0; i <= 4; i++) {
      const t = lo + (hi - lo) * i / 4;
      sv("text", { x: x(t), y: box.b + 13, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, svg, when(t));
    }
  }

  function latencyChart(row, lo, hi, step) {
    const W = 440, H = 170, box = { l: 44, r: W - 8, t: 8, b: H - 22 };
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "chart latency", role: "img",
      "aria-label": "latency percentiles of " + row.tool });
    const values = [];
    for (const p of row.timeline) for (const k of ["p50_ms", "p95_ms", "p99_ms"]) {
      if (p[k] !== null && p[k] > 0) values.push(p[k]);
    }
    if (values.length === 0) {
      sv("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, svg, "no answered calls");
      return svg;
    }
    let ymin = Math.log10(Math.min.apply(null, values)), ymax = Math.log10(Math.max.apply(null, values));
    ymin = Math.floor(ymin); ymax = Math.ceil(ymax); if (ymax === ymin) ymax = ymin + 1;
    const x = (t) => Math.min(box.r, box.l + (box.r - box.l) * (t + step / 2 - lo) / Math.max(1, hi - lo));
    const y = (v) => box.b - (box.b - box.t) * (Math.log10(v) - ymin) / (ymax - ymin);
    for (let e = ymin; e <= ymax; e++) {
      const v = Math.pow(10, e);
      sv("line", { x1: box.l, y1: y(v), x2: box.r, y2: y(v), class: "grid" }, svg);
      sv("text", { x: box.l - 4, y: y(v) + 3, "text-anchor": "end" }, svg, v >= 1000 ? (v / 1000) + " s" : v + " ms");
    }
    timeAxis(svg, (t) => box.l + (box.r - box.l) * (t - lo) / Math.max(1, hi - lo), box, lo, hi);
    const series = [["p50_ms", "var(--p50)"], ["p95_ms", "var(--p95)"], ["p99_ms", "var(--p99)"]];
    for (const [key, colour] of series) {
      const pts = row.timeline.filter((p) => p[key] !== null && p[key] > 0);
      if (pts.length > 1) {
        sv("polyline", { points: pts.map((p) => x(p.t).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" "),
          fill: "none", stroke: colour, "stroke-width": 1.6, class: "line " + key }, svg);
      }
      for (const p of pts) {
        const dot = sv("circle", { cx: x(p.t), cy: y(p[key]), r: 2.4, fill: colour, class: "point " + key }, svg);
        sv("title", {}, dot, key.replace("_ms", "") + " " + ms(p[key]) + " ms at " + when(p.t) + " (" + p.calls + " calls)");
      }
    }
    return svg;
  }

  function errorChart(row, lo, hi, step) {
    const W = 440, H = 90, box = { l: 44, r: W - 8, t: 6, b: H - 22 };
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "chart errors", role: "img",
      "aria-label": "error rate of " + row.tool });
    const x = (t) => box.l + (box.r - box.l) * (t - lo) / Math.max(1, hi - lo);
    const width = Math.max(2, (box.r - box.l) * step / Math.max(1, hi - lo) - 1);
    sv("text", { x: box.l - 4, y: box.t + 8, "text-anchor": "end" }, svg, "100%");
    sv("text", { x: box.l - 4, y: box.b, "text-anchor": "end" }, svg, "0%");
    timeAxis(svg, x, box, lo, hi);
    for (const p of row.timeline) {
      if (p.calls === 0) continue;
      const rate = p.errors / p.calls;
      const h = Math.max(rate > 0 ? 2 : 1, (box.b - box.t) * rate);
      const bar = sv("rect", { x: x(p.t), y: box.b - h, width: width, height: h,
        fill: rate > 0 ? "var(--err)" : "var(--ok)", opacity: rate > 0 ? 0.85 : 0.35, class: "bar" }, svg);
      sv("title", {}, bar, p.errors + " of " + p.calls + " calls failed at " + when(p.t));
    }
    return svg;
  }

  function anomalyTimeline(data, lo, hi) {
    const kinds = Object.keys(KIND_COLOURS);
    const W = 920, lane = 22, H = 30 + lane * kinds.length, box = { l: 120, r: W - 10, t: 6, b: H - 22 };
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, class: "chart timeline", role: "img",
      "aria-label": "anomalies over time" });
    const x = (t) => box.l + (box.r - box.l) * (t - lo) / Math.max(1, hi - lo);
    kinds.forEach((kind, i) => {
      const yy = box.t + lane * i + lane / 2;
      sv("line", { x1: box.l, y1: yy, x2: box.r, y2: yy, class: "grid" }, svg);
      sv("text", { x: box.l - 6, y: yy + 3, "text-anchor": "end" }, svg, kind.replace(/_/g, " "));
    });
    timeAxis(svg, x, box, lo, hi);
    for (const a of data.anomalies) {
      const i = Math.max(0, kinds.indexOf(a.kind));
      const mark = sv("circle", { cx: x(Math.min(hi, Math.max(lo, a.time_ms))), cy: box.t + lane * i + lane / 2, r: 5,
        fill: KIND_COLOURS[a.kind] || "#4b5563", class: "anomaly", "data-kind": a.kind }, svg);
      sv("title", {}, mark, a.time + " " + label(a) + ": " + a.detail);
    }
    return svg;
  }

  function table(parent, headers, rows, textColumns) {
    const t = el("table", {}, parent);
    const head = el("tr", {}, el("thead", {}, t));
    headers.forEach((h, i) => el("th", { class: i < textColumns ? "text" : "" }, head, h));
    const body = el("tbody", {}, t);
    for (const r of rows) {
      const tr = el("tr", r.attrs || {}, body);
      r.cells.forEach((c, i) => el("td", { class: (i < textColumns ? "text" : "") + (r.cls && r.cls[i] ? " " + r.cls[i] : "") }, tr, c));
    }
    return t;
  }

  function seriesRows(rows, withMethod) {
    return rows.map((r) => {
      const cells = [label(r)];
      if (withMethod) cells.push(r.method);
      cells.push(r.tool || "–", String(r.calls), String(r.errors), pct(r.error_rate),
        ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms), ms(r.max_ms));
      const cls = [];
      cls[withMethod ? 4 : 3] = "errors";
      return { cells: cells, cls: cls,
        attrs: { "data-tool": r.tool, "data-server": r.server, class: r.errors > 0 ? "has-errors" : "" } };
    });
  }

  function render() {
    const data = JSON.parse(document.getElementById("report-data").textContent);
    const app = document.getElementById("app");
    const [lo, hi] = span(data);
    const step = data.step_ms || 60000;
    document.getElementById("range").textContent =
      (data.since ? data.since + " to " + data.until : "Everything kept, until " + data.until) +
      " · generated " + data.generated + " · percentiles within ±" + (data.relative_error * 100) + "%";

    for (const w of data.warnings) el("p", { class: "warning" }, app, w);

    const calls = data.tools.concat(data.methods).reduce((n, r) => n + r.calls, 0);
    const errors = data.tools.concat(data.methods).reduce((n, r) => n + r.errors, 0);
    const cards = el("section", { class: "cards", id: "summary" }, app);
    for (const [value, name] of [[data.servers.length, "servers"], [data.tools.length, "tools"],
      [calls, "calls"], [errors, "errors"], [data.anomalies.length, "anomalies"]]) {
      const card = el("div", { class: "card" }, cards);
      el("div", { class: "value" }, card, String(value));
      el("div", { class: "label" }, card, name);
    }

    el("h2", {}, app, "Tools");
    if (data.tools.length === 0) {
      el("p", { class: "empty" }, app, "No tool calls recorded in this range.");
    } else {
      table(el("section", { id: "tools" }, app),
        ["Server", "Tool", "Calls", "Errors", "Err %", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        seriesRows(data.tools, false), 2);
      el("h2", {}, app, "Latency and errors over time");
      const legend = el("div", { class: "legend" }, app);
      for (const [name, colour] of [["p50", "--p50"], ["p95", "--p95"], ["p99", "--p99"], ["failed calls", "--err"]]) {
        const item = el("span", {}, legend);
        el("span", { class: "swatch", style: "background: var(" + colour + ")" }, item);
        item.appendChild(document.createTextNode(name));
      }
      const panels = el("section", { class: "panels", id: "charts" }, app);
      data.tools.slice(0, MAX_PANELS).forEach((row) => {
        const panel = el("div", { class: "panel", "data-tool": row.tool, "data-server": row.server }, panels);
        el("h3", {}, panel, row.tool);
        el("div", { class: "sub" }, panel, label(row) + " · " + row.calls + " calls · " + row.errors + " errors · p50 " +
          ms(row.p50_ms) + " ms · p99 " + ms(row.p99_ms) + " ms");
        panel.appendChild(latencyChart(row, lo, hi, step));
        panel.appendChild(errorChart(row, lo, hi, step));
      });
      if (data.tools.length > MAX_PANELS) {
        el("p", { class: "empty" }, app, (data.tools.length - MAX_PANELS) + " less busy tools are in the table only.");
      }
    }

    el("h2", {}, app, "Anomalies");
    const anomalies = el("section", { id: "anomalies" }, app);
    anomalies.appendChild(anomalyTimeline(data, lo, hi));
    if (data.anomalies.length === 0) {
      el("p", { class: "empty" }, anomalies, "No anomaly in this range.");
    } else {
      table(anomalies, ["Time", "Kind", "Server", "Call", "What"], data.anomalies.map((a) => ({
        cells: [a.time, a.kind.replace(/_/g, " "), label(a), (a.method + " " + a.tool).trim(), a.detail],
        attrs: { "data-kind": a.kind, "data-tool": a.tool }
      })), 5);
    }

    if (data.methods.length > 0) {
      el("h2", {}, app, "Other methods");
      table(el("section", { id: "methods" }, app),
        ["Server", "Method", "Target", "Calls", "Errors", "Err %", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        seriesRows(data.methods, true), 3);
    }
  }

  try {
    render();
    document.body.setAttribute("data-status", "rendered");
  } catch (e) {
    document.body.setAttribute("data-status", "failed");
    if (window.kmNoteError) window.kmNoteError("the report could not be drawn: " + (e && e.stack || e));
  }
  const errors = window.kmPageErrors || [];
  if (errors.length > 0) {
    const box = document.getElementById("page-errors");
    box.textContent = errors.join("\n");
    box.hidden = false;
  }
})();
