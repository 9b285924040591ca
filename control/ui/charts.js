// The control page's charts (control/ui/app.js draws them), plain SVG from the timeline
// endpoint (GET /api/experiments/{name}/timeline): no library, nothing from elsewhere, no
// inline script, so the page's Content-Security-Policy stays as strict as it was.
// Each series is a <polyline data-series=... data-count=...> with its last value written at
// its end, and each decision a marker with a <title> (and the caption below on hover).
"use strict";
const abgateCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  // W: the drawing's width in its own units; narrower on a phone, so its text stays legible.
  let W = 640;
  const H = 190, PAD = { l: 68, r: 118, t: 12, b: 26 };
  const setWidth = (width) => { W = width; };
  const COLORS = { control: "#59636e", treatment: "#0969da", band: "#0969da22",
    continue: "#1a7f37", hold: "#9a6700", rollback: "#cf222e", start: "#0969da", other: "#6e7781",
    approval: "#8250df", pause: "#24292f" };

  // Units a person reads: ms, %, thousands separators, small p-values in scientific notation.
  const fmt = {
    count: (n) => n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"),
    pct: (n, digits = 2) => n === null || n === undefined ? "–"
      : `${Number(n).toLocaleString("en-US", { maximumFractionDigits: digits })}%`,
    ms: (seconds) => seconds === null || seconds === undefined ? "–" : fmt.msOf(seconds * 1000),
    msOf: (ms) => ms === null || ms === undefined ? "–"
      : `${Number(ms).toLocaleString("en-US", { maximumFractionDigits: ms < 10 ? 2 : ms < 100 ? 1 : 0 })} ms`,
    p: (p) => p === null || p === undefined ? "–" : p < 0.001 ? Number(p).toExponential(1)
      : Number(p).toFixed(3),
    duration: (seconds) => {
      if (seconds === null || seconds === undefined) return "unknown";
      seconds = Math.max(0, Math.round(seconds));
      const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
      return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
    },
    clock: (t) => new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false }),
  };
  // A metric's difference in its unit: latency in ms, a rate in percentage points.
  function unitOf(metric, type) {
    if (metric === "latency") return { scale: 1000, show: (v) => signed(v, fmt.msOf) };
    if (type === "binary" || metric === "error")
      return { scale: 100, show: (v) => signed(v, (x) => `${x.toLocaleString("en-US", { maximumFractionDigits: 2 })} pp`) };
    return { scale: 1, show: (v) => signed(v, (x) => x.toLocaleString("en-US", { maximumSignificantDigits: 3 })) };
  }
  const signed = (v, show) => v === null || v === undefined ? "–" : (v > 0 ? "+" : v < 0 ? "−" : "") + show(Math.abs(v));

  function node(tag, attrs = {}, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function frame(label, kind) {
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label,
      "data-chart": kind, width: "100%", preserveAspectRatio: "xMidYMid meet" });
    svg.append(node("title", {}, label));
    return svg;
  }
  // Scales over the plot area; a flat domain is widened so a constant still draws.
  function scale(d0, d1, r0, r1) {
    if (!(d1 > d0)) { const pad = Math.abs(d0) * 0.1 || 1; d0 -= pad; d1 += pad; }
    const f = (v) => r0 + (v - d0) / (d1 - d0) * (r1 - r0);
    f.domain = [d0, d1];
    return f;
  }
  function axes(svg, x, y, showY) {
    const [y0, y1] = y.domain, [x0, x1] = x.domain;
    for (const v of [y0, (y0 + y1) / 2, y1]) {
      svg.append(node("line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), stroke: "#d1d9e0" }),
        node("text", { x: PAD.l - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#59636e" }, showY(v)));
    }
    svg.append(node("text", { x: PAD.l, y: H - 6, "font-size": 11, fill: "#59636e" }, fmt.clock(x0)),
      node("text", { x: W - PAD.r, y: H - 6, "font-size": 11, fill: "#59636e", "text-anchor": "end" }, fmt.clock(x1)));
  }
  // One series: a polyline over the points with a value, its last value written at its end.
  function series(svg, name, xs, ys, x, y, attrs, label) {
    const drawn = xs.map((t, i) => [t, ys[i]]).filter(([, v]) => v !== null && v !== undefined && Number.isFinite(v));
    const line = node("polyline", { fill: "none", "stroke-width": 2, ...attrs, "data-series": name,
      "data-count": drawn.length, points: drawn.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") });
    svg.append(line);
    if (drawn.length === 1)  // a line of one point draws nothing: a dot instead
      svg.append(node("circle", { cx: x(drawn[0][0]), cy: y(drawn[0][1]), r: 3, fill: attrs.stroke, "data-dot": name }));
    if (drawn.length) {
      const [t, v] = drawn[drawn.length - 1];
      // Labels that would overlap (several series ending close together) are moved apart.
      const used = svg.labelsAt || (svg.labelsAt = []);
      // Nearest free place, alternately below and above, kept inside the plot.
      const want = Math.min(Math.max(y(v) + 4, PAD.t + 8), H - PAD.b - 2);
      let at = want;
      for (let step = 1; used.some((u) => Math.abs(u - at) < 12) && step < 20; step++) {
        const offset = 12 * Math.ceil(step / 2) * (step % 2 ? 1 : -1);
        const candidate = want + offset;
        if (candidate >= PAD.t + 8 && candidate <= H - PAD.b - 2) at = candidate;
      }
      used.push(at);
      svg.append(node("text", { x: x(t) + 4, y: at, "font-size": 11, fill: attrs.stroke,
        "data-last": name }, label(v)));
    }
    return drawn.length;
  }
  function extent(values) {
    const finite = values.filter((v) => v !== null && v !== undefined && Number.isFinite(v));
    return finite.length ? [Math.min(...finite), Math.max(...finite)] : [0, 1];
  }
  function timeScale(points) {
    const ts = points.map((p) => p.t);
    return scale(ts.length ? ts[0] : 0, ts.length ? ts[ts.length - 1] : 1, PAD.l, W - PAD.r);
  }
  function hoverable(target, text, caption) {
    target.append(node("title", {}, text));
    target.setAttribute("tabindex", "0");
    const show = () => { caption.textContent = text; };
    target.addEventListener("mouseenter", show);
    target.addEventListener("focus", show);
  }
  function figure(title, svg, caption) {
    const f = document.createElement("figure");
    f.className = "chart";
    const h = document.createElement("figcaption");
    h.textContent = title;
    f.append(h, svg);
    if (caption) f.append(caption);
    return f;
  }

  // What a decision's marker shows: the start, a stage shown safe (continue), a hold, a
  // person's approval, a pause (or escalation to a person), a rollback (or abort).
  function markerKind(e) {
    if (e.transition === "started") return "start";
    if (["rolled_back", "aborted"].includes(e.state) || e.decision === "rollback") return "rollback";
    if (String(e.change || "").startsWith("approved")) return "approval";
    if (["paused", "escalated"].includes(e.transition)) return "pause";
    if (e.decision === "continue" || e.decision === "complete") return "continue";
    return e.decision === "hold" ? "hold" : "other";
  }
  function legend() {
    const p = document.createElement("p");
    p.className = "legend muted";
    for (const kind of ["start", "continue", "hold", "approval", "pause", "rollback"]) {
      const dot = document.createElement("span");
      dot.textContent = "\u25cf ";
      dot.style.color = COLORS[kind];
      p.append(dot, `${kind}  `);
    }
    return p;
  }

  // 1. The ramp: treatment share stage by stage, each decision marked, the next ETA.
  function ramp(timeline) {
    const points = timeline.points;
    const svg = frame("Treatment share over time, with the rollout's decisions", "ramp");
    const caption = document.createElement("p");
    caption.className = "chart-tip muted";
    caption.setAttribute("data-testid", "ramp-tip");
    caption.textContent = "Hover a marker for the decision and its reason.";
    const x = timeScale(points), y = scale(0, 100, H - PAD.b, PAD.t);
    axes(svg, x, y, (v) => fmt.pct(v, 0));
    const steps = [];
    points.forEach((p, i) => { if (i && p.percentage !== points[i - 1].percentage) steps.push([p.t, points[i - 1].percentage]); steps.push([p.t, p.percentage]); });
    series(svg, "share", steps.map((s) => s[0]), steps.map((s) => s[1]), x, y,
      { stroke: COLORS.treatment }, (v) => fmt.pct(v));
    const share = (t) => { let v = points.length ? points[0].percentage : 0; for (const p of points) if (p.t <= t) v = p.percentage; return v ?? 0; };
    const inRange = timeline.events.filter((e) => points.length && e.time >= points[0].t && e.time <= points[points.length - 1].t + 60);
    // Holds below, stage changes, approvals and rollbacks on top: a promotion is followed
    // within a tick by the new stage's first hold, which must not hide it.
    const layer = { hold: 0, other: 1, pause: 2, start: 2, continue: 2, approval: 3, rollback: 4 };
    const ordered = inRange.map((e) => [markerKind(e), e]).sort((a, b) => layer[a[0]] - layer[b[0]]);
    for (const [kind, e] of ordered) {
      const marker = node("circle", { cx: x(Math.min(e.time, x.domain[1])), cy: y(share(e.time)), r: kind === "hold" ? 4.5 : 6,
        fill: COLORS[kind], stroke: "#fff", "data-marker": kind, class: "marker" });
      const what = e.change || e.transition || e.decision || "";
      hoverable(marker, `${fmt.clock(e.time)} ${what} (${e.actor}): ${e.reason || ""}`, caption);
      svg.append(marker);
    }
    const last = points[points.length - 1];
    const r = last && last.rollout;
    const eta = document.createElement("p");
    eta.setAttribute("data-testid", "ramp-eta");
    eta.textContent = !r ? "No rollout." : `${r.state}, ${r.decision || "–"}: ${r.reason}` +
      (r.eta_seconds !== null && r.eta_seconds !== undefined ? ` · next decision in about ${fmt.duration(r.eta_seconds)}` : "");
    const f = figure("Ramp: treatment share", svg, caption);
    f.append(eta, legend());
    return f;
  }

  // 2. The effect over time, per metric: the always-valid band, the estimate, the line.
  function effect(timeline, metric, type) {
    const points = timeline.points.filter((p) => p.metrics[metric]);
    const unit = unitOf(metric, type);
    const m = (p, key) => { const v = p.metrics[metric][key]; return v === null || v === undefined ? null : v * unit.scale; };
    const first = points.length ? points[points.length - 1].metrics[metric] : {};
    const role = first.role || "other";
    const svg = frame(`${metric}: treatment minus control over time (up is better)`, "effect");
    svg.setAttribute("data-metric", metric);
    const x = timeScale(timeline.points);
    const values = points.flatMap((p) => [m(p, "low"), m(p, "high"), m(p, "effect"), m(p, "line")]).concat([0]);
    const [lo, hi] = extent(values);
    const y = scale(lo, hi, H - PAD.b, PAD.t);
    axes(svg, x, y, unit.show);
    let previous = null;
    for (const p of timeline.points) {
      if (previous !== null && p.phase !== previous) {
        svg.append(node("line", { x1: x(p.t), x2: x(p.t), y1: PAD.t, y2: H - PAD.b, stroke: "#8250df",
          "stroke-dasharray": "2 3", "data-phase-boundary": p.phase }));
        svg.append(node("text", { x: x(p.t) + 3, y: PAD.t + 10, "font-size": 10, fill: "#8250df" }, fmt.pct(p.percentage)));
      }
      previous = p.phase;
    }
    const banded = points.filter((p) => m(p, "low") !== null && m(p, "high") !== null);
    const upper = banded.map((p) => `${x(p.t).toFixed(1)},${y(m(p, "high")).toFixed(1)}`);
    const lower = banded.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(m(p, "low")).toFixed(1)}`);
    svg.append(node("polygon", { points: upper.concat(lower).join(" "), fill: COLORS.band,
      "data-series": "interval", "data-count": banded.length }));
    if (banded.length === 1) {  // one look: its interval as a bar
      const p = banded[0];
      svg.append(node("line", { x1: x(p.t), x2: x(p.t), y1: y(m(p, "low")), y2: y(m(p, "high")),
        stroke: COLORS.treatment, "stroke-width": 6, "stroke-opacity": 0.3 }));
    }
    svg.append(node("line", { x1: PAD.l, x2: W - PAD.r, y1: y(0), y2: y(0), stroke: "#1b1f24" }));
    const ts = points.map((p) => p.t);
    series(svg, "line", ts, points.map((p) => m(p, "line")), x, y,
      { stroke: role === "primary" ? COLORS.continue : COLORS.rollback, "stroke-dasharray": "6 4", "stroke-width": 1.5 },
      (v) => `${role === "primary" ? "min effect" : "margin"} ${unit.show(v)}`);
    series(svg, "effect", ts, points.map((p) => m(p, "effect")), x, y, { stroke: COLORS.treatment }, unit.show);
    // The last look with an estimate: after a rollout ends (100%: no control arm), the
    // last stage that compared both arms.
    const estimated = points.filter((p) => p.metrics[metric].effect !== null);
    const last = estimated.length ? estimated[estimated.length - 1] : null;
    const shown = last ? last.metrics[metric] : null;
    const bound = (v) => v === null ? "open" : unit.show(v * unit.scale);
    const note = document.createElement("p");
    note.className = "muted";
    note.textContent = !shown ? `not enough data yet (${points.length ? points[points.length - 1].metrics[metric].status : "no ticks"})`
      : `${unit.show(shown.effect * unit.scale)} at ${fmt.pct(last.percentage)} (${fmt.clock(last.t)}), always-valid interval [${bound(shown.low)}, ${bound(shown.high)}], p = ${fmt.p(shown.p_value)}`;
    return figure(`Effect on ${metric} (${role})`, svg, note);
  }

  // 3. Samples per arm against what the sequential design needs, with the ETA.
  function samples(timeline) {
    // The current stage's, or once it has no need (100%: no control arm left; before a
    // rollout) the last stage that had one.
    const points = timeline.points;
    const withNeed = points.filter((p) => p.rollout && p.rollout.needed);
    const latest = points[points.length - 1];
    const last = latest && latest.rollout && latest.rollout.needed ? latest : withNeed.length ? withNeed[withNeed.length - 1] : latest;
    const svg = frame("Samples per arm against the samples the gate needs", "samples");
    svg.setAttribute("viewBox", `0 0 ${W} 110`);
    const have = last ? last.samples : {};
    const needed = last && last.rollout && last.rollout.needed ? last.rollout.needed : null;
    ["control", "treatment"].forEach((arm, i) => {
      const n = have[arm] || 0, need = needed ? needed[arm] : null;
      const top = Math.max(n, need || 0, 1);
      const x = scale(0, top, PAD.l + 40, W - PAD.r), y0 = 14 + i * 44;
      svg.append(node("text", { x: 4, y: y0 + 15, "font-size": 12 }, timeline.arms[arm] || arm));
      svg.append(node("rect", { x: x(0), y: y0, width: x(top) - x(0), height: 20, fill: "#f6f8fa", stroke: "#d1d9e0" }));
      svg.append(node("rect", { x: x(0), y: y0, width: Math.max(0, x(n) - x(0)), height: 20,
        fill: COLORS[arm], "data-bar": arm, "data-value": n }));
      if (need) svg.append(node("line", { x1: x(need), x2: x(need), y1: y0 - 4, y2: y0 + 24, stroke: "#1b1f24", "stroke-width": 2, "data-need": arm }));
      svg.append(node("text", { x: x(0), y: y0 + 36, "font-size": 11, fill: "#59636e", "data-label": arm },
        need ? `${fmt.count(n)} of ${fmt.count(need)} needed (${fmt.pct(100 * Math.min(1, n / need), 0)})` : `${fmt.count(n)} samples; need not known yet`));
    });
    const r = last && last.rollout;
    const eta = document.createElement("p");
    eta.setAttribute("data-testid", "samples-eta");
    eta.textContent = r && r.kind === "insufficient" && r.eta_seconds !== null
      ? `Enough samples in about ${fmt.duration(r.eta_seconds)} at the observed rate.`
      : needed && ["control", "treatment"].every((a) => (have[a] || 0) >= needed[a]) ? "Enough samples for the gate."
      : "ETA: not known yet.";
    const which = !last ? "" : last === latest ? ` (now, at ${fmt.pct(last.percentage)})` : ` (the last stage compared: ${fmt.pct(last.percentage)})`;
    return figure(`Samples against the gate's need${which}`, svg, eta);
  }

  // 4. Latency p50 and p95 per arm, ms, each point the answers since the one before.
  function latency(timeline) {
    const points = timeline.points;
    const arms = [...new Set(points.flatMap((p) => Object.keys(p.latency_ms)))].sort();
    const svg = frame("Latency p50 and p95 per arm over time, milliseconds", "latency");
    const x = timeScale(points);
    const get = (p, arm, q) => p.latency_ms[arm] && p.latency_ms[arm].n ? p.latency_ms[arm][q] : null;
    // A lone stall (one window's p95 at 800 ms on a busy machine) must not flatten the rest:
    // the scale stops at twice the 90th percentile of the values; what is above is drawn
    // at the top edge, and said.
    const values = points.flatMap((p) => arms.flatMap((a) => [get(p, a, "p50"), get(p, a, "p95")]))
      .filter((v) => v !== null && Number.isFinite(v)).sort((a, b) => a - b);
    const top = values.length ? values[values.length - 1] : 1;
    const hi = values.length ? Math.min(top, 2 * values[Math.floor(0.9 * (values.length - 1))]) : 1;
    const scaled = scale(0, hi, H - PAD.b, PAD.t);
    const y = (v) => scaled(Math.min(v, scaled.domain[1]));
    y.domain = scaled.domain;
    axes(svg, x, y, fmt.msOf);
    const ts = points.map((p) => p.t);
    const color = (arm) => arm === timeline.arms.treatment ? COLORS.treatment : arm === timeline.arms.control ? COLORS.control : COLORS.other;
    for (const arm of arms) {
      series(svg, `${arm} p50`, ts, points.map((p) => get(p, arm, "p50")), x, y, { stroke: color(arm) }, (v) => `${arm} p50 ${fmt.msOf(v)}`);
      series(svg, `${arm} p95`, ts, points.map((p) => get(p, arm, "p95")), x, y,
        { stroke: color(arm), "stroke-dasharray": "5 3" }, (v) => `p95 ${fmt.msOf(v)}`);
    }
    const note = document.createElement("p");
    note.className = "muted";
    const cut = top > y.domain[1] ? ` Peaks above ${fmt.msOf(y.domain[1])} are drawn at the top (highest ${fmt.msOf(top)}).` : "";
    note.textContent = arms.length ? "Solid p50, dashed p95; from the data plane's histogram buckets (interpolated within a bucket), each point the answers since the one before." + cut
      : "No latency yet (the data plane reports it once it has answered).";
    return figure("Latency per arm", svg, note);
  }

  return { fmt, unitOf, setWidth, ramp, effect, samples, latency };
})();
