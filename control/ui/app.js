// The control page's script (control/ui/index.html loads it): served from its own URL so
// the page's Content-Security-Policy allows scripts from 'self' only, never inline ones.
"use strict";
const state = { token: sessionStorage.getItem("abgate-token") || "", busy: false };
const $ = (selector, root = document) => root.querySelector(selector);
const tokenInput = $("#token");
tokenInput.value = state.token;
tokenInput.addEventListener("change", () => {
  state.token = tokenInput.value.trim();
  sessionStorage.setItem("abgate-token", state.token);
  say("Token saved for this browser session.", "info");
});

function say(text, kind = "info") {
  const box = $("#message");
  box.textContent = text;
  box.className = kind;
}
const number = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
const pct = (n) => (n === null || n === undefined) ? "–" : `${Number(n).toLocaleString("en-US", {maximumFractionDigits: 2})}%`;
function duration(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}
function when(seconds) { return new Date(seconds * 1000).toLocaleString(); }
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers["Authorization"] = `Bearer ${state.token}`;
  const response = await fetch(path, { method, headers,
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) {
    throw new Error("The control API needs a token for this (401): enter it above.");
  }
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${data && data.error ? data.error : ""}`);
  }
  return data;
}

async function act(label, method, path, body) {
  if (state.busy) return;
  state.busy = true;
  try {
    await api(method, path, body);
    say(`${label}: done.`, "info");
  } catch (error) {
    say(error.message, "error");
  } finally {
    state.busy = false;
  }
  await refresh(true);
}

function askReason(question) {
  const reason = prompt(`${question}\n\nReason (recorded in the history):`);
  return reason === null ? null : reason.trim();
}

function metricsTable(metrics) {
  const { fmt, unitOf } = abgateCharts;
  const rows = Object.entries(metrics || {}).map(([name, m]) => {
    const seq = m.sequential || {};
    const ci = seq.ci && seq.ci.absolute ? seq.ci.absolute : null;
    // In the metric's unit: latency in ms, a rate in %, a difference in ms or points.
    const mean = (v) => v === null || v === undefined ? "–" : name === "latency" ? fmt.ms(v)
      : m.type === "binary" ? fmt.pct(v * 100) : Number(v).toLocaleString("en-US", { maximumSignificantDigits: 4 });
    const unit = unitOf(name, m.type);
    const bound = (v) => v === null || v === undefined ? "–" : unit.show(v * unit.scale);
    const p = seq.p_value_holm === undefined || seq.p_value_holm === null ? null : seq.p_value_holm;
    return el("tr", {},
      el("td", {}, name),
      el("td", {}, `${number(m.n.a)} / ${number(m.n.b)}`),
      el("td", { "data-testid": `mean-${name}` }, `${mean(m.mean.a)} / ${mean(m.mean.b)}`),
      el("td", {}, m.improvement === null ? "–" : pct(m.improvement * 100)),
      el("td", {}, ci ? `[${bound(ci[0])}, ${bound(ci[1])}]` : "–"),
      el("td", {}, p === null ? (m.status !== "ok" ? m.status : "–") : fmt.p(p)),
      el("td", {}, el("span", { class: "badge " + (m.significant ? "pass" : "") }, m.significant ? "significant" : "not significant")));
  });
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "metric"), el("th", {}, "samples (control / ML)"),
      el("th", {}, "mean (control / ML)"), el("th", {}, "improvement"),
      el("th", {}, "interval (ML − control)"), el("th", {}, "p (Holm)"), el("th", {}, "significance"))),
    el("tbody", {}, ...rows)));
}

function rolloutBlock(name, rollout, history) {
  const box = el("div", {});
  box.append(el("h3", {}, "Rollout"));
  if (!rollout) {
    box.append(el("p", { class: "muted" }, "No rollout yet."),
      el("button", { type: "button", onclick: () => {
        const reason = askReason(`Start the staged rollout of ${name}?`);
        if (reason !== null) act("Start", "POST", `/api/rollouts/${name}`, { reason });
      } }, "Start rollout"));
    return box;
  }
  box.append(el("div", { class: "row" },
    el("span", { class: `badge ${rollout.state}`, "data-testid": "rollout-state" }, rollout.state),
    el("span", { "data-testid": "rollout-stage" }, `stage ${rollout.stage.index + 1} of ${rollout.stages.length}: ${pct(rollout.stage.percentage)}`
      + (rollout.stage.phase === "holdout" ? ` (holdout: ${pct(rollout.stage.holdout)} kept on control until its gates pass)` : "")),
    el("span", { class: "muted" }, `since ${when(rollout.stage.started_at)}`),
    el("span", {}, (rollout.gates || []).some((g) => g.users && g.users.cannot_finish)
      ? "ETA: cannot finish at the observed rate (see the samples gate)"
      : `ETA ${duration(rollout.eta_seconds)}`)));
  box.append(el("div", { class: "stages", "aria-label": "stages" }, ...rollout.stages.map((p, i) =>
    el("span", { class: "stage " + (i < rollout.stage.index ? "done" : i === rollout.stage.index ? "current" : "") },
      i === rollout.stages.length - 1 && rollout.stage.holdout ? `${pct(100 - rollout.stage.holdout)} holdout, then ${pct(p)}` : pct(p)))));
  box.append(el("p", {}, el("strong", {}, `${rollout.decision || "–"}: `), rollout.reason));
  const gates = (rollout.gates || []).map((g) => el("tr", {},
    el("td", {}, g.name), el("td", {}, el("span", { class: `badge ${g.status}` }, g.status)),
    el("td", {}, g.detail + (g.have && g.needed ? ` (control ${number(g.have.control)} of ${number(g.needed.control)}, ML ${number(g.have.treatment)} of ${number(g.needed.treatment)})` : ""))));
  if (gates.length) box.append(el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "gate"), el("th", {}, "status"), el("th", {}, "numbers"))),
    el("tbody", {}, ...gates))));
  const buttons = el("div", { class: "row" });
  const button = (label, action, body = () => ({})) => buttons.append(el("button", { type: "button",
    onclick: () => { const reason = askReason(`${label} the rollout of ${name}?`);
      if (reason !== null) act(label, "POST", `/api/rollouts/${name}/${action}`, { ...body(), reason }); } }, label));
  if (rollout.next && rollout.next.approval && !rollout.next.approved)
    button(`Approve ${pct(rollout.next.percentage)}`, "approve", () => ({ stage: rollout.next.percentage }));
  if (["running", "awaiting_approval", "escalated"].includes(rollout.state)) button("Pause", "pause");
  if (["paused", "escalated"].includes(rollout.state)) button("Resume", "resume");
  if (!["completed", "rolled_back", "aborted"].includes(rollout.state)) {
    button("Abort", "abort");
    if (rollout.next) button("Promote", "promote");
    else if (rollout.stage.phase === "holdout") button("Release the holdout", "promote");
  } else {
    buttons.append(el("button", { type: "button", onclick: () => {
      const reason = askReason(`Start a new rollout of ${name}?`);
      if (reason !== null) act("Start", "POST", `/api/rollouts/${name}`, { reason }); } }, "Start again"));
  }
  box.append(buttons);
  if (history && history.length) {
    box.append(el("h3", {}, "History"), el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "when"), el("th", {}, "who"), el("th", {}, "what"), el("th", {}, "reason"))),
      el("tbody", {}, ...history.slice(0, 20).map((e) => el("tr", {},
        el("td", {}, when(e.time)), el("td", {}, e.actor),
        el("td", {}, e.change || e.transition || e.decision || ""), el("td", {}, e.reason || "")))))));
  }
  return box;
}

// The four charts (control/ui/charts.js) from the statistics worker's timeline; drawn again
// only when it changed (a tick, a decision), so a hover's caption stays while it is read.
const drawnCharts = {};
function chartsBlock(timeline, metrics) {
  const events = timeline.events;
  const width = window.innerWidth < 700 ? 400 : 640;  // a phone's: legible text
  const key = `${width}/${timeline.ticks}/${events.length}/${events.length ? events[events.length - 1].time : 0}`;
  const drawn = drawnCharts[timeline.name];
  if (drawn && drawn.key === key) return drawn.element;
  abgateCharts.setWidth(width);
  const element = drawCharts(timeline, metrics);
  drawnCharts[timeline.name] = { key, element };
  return element;
}

function drawCharts(timeline, metrics) {
  const last = timeline.points[timeline.points.length - 1];
  const order = { primary: 0, guardrail: 1, other: 2 };
  const names = Object.keys(last ? last.metrics : {}).sort((a, b) =>
    order[last.metrics[a].role] - order[last.metrics[b].role] || a.localeCompare(b));
  const grid = el("div", { class: "charts", "data-testid": "charts" },
    abgateCharts.ramp(timeline), abgateCharts.samples(timeline),
    ...names.map((m) => abgateCharts.effect(timeline, m, metrics[m] ? metrics[m].type : undefined)),
    abgateCharts.latency(timeline));
  return el("div", {}, el("h3", {}, `Charts (${number(timeline.points.length)} points over ${abgateCharts.fmt.duration(last ? last.t - timeline.points[0].t : 0)})`), grid);
}

function experimentBlock(exp, flag, significance, rollout, history, breakers, shadow, timeline) {
  const name = exp.name;
  const section = el("section", { class: "experiment", "aria-labelledby": `h-${name}` });
  section.append(el("h2", { id: `h-${name}` }, name));
  const phase = exp.current_phase || {};
  const samples = phase.samples || {};
  section.append(el("div", { class: "row" },
    el("span", { "data-testid": "split" }, `ML share ${pct(flag ? flag.percentage : null)}`),
    el("span", {}, `${exp.arms.control}: ${number(samples[exp.arms.control])} · ${exp.arms.treatment}: ${number(samples[exp.arms.treatment])} samples`),
    el("span", { class: "badge " + (phase.srm_flagged ? "fail" : "pass") }, `SRM p = ${phase.srm_p_value === undefined ? "–" : Number(phase.srm_p_value).toPrecision(3)}`),
    ...breakers.map((b) => el("span", { class: "badge " + (b.state === "closed" ? "pass" : "fail") }, `breaker ${b.upstream}: ${b.state}`)),
    ...(shadow ? [el("span", { "data-testid": "shadow" }, `shadow agreement ${shadow.agreement_rate === null ? "–" : pct(shadow.agreement_rate * 100)} of ${number(shadow.agreements + shadow.disagreements)} compared`)] : [])));
  const form = el("form", { class: "row", onsubmit: (event) => {
    event.preventDefault();
    const value = Number($("input", form).value);
    if (!Number.isFinite(value) || value < 0 || value > 100) { say("A percentage from 0 to 100.", "error"); return; }
    const reason = askReason(`Set the ML share of ${name} to ${value}%?`);
    if (reason === null) return;
    act("Set percentage", "POST", `/api/flags/${name}`, { percentage: value, reason });
  } });
  form.append(el("label", {}, "ML percentage ",
    el("input", { type: "number", min: "0", max: "100", step: "0.01", value: flag ? String(flag.percentage) : "0", "aria-label": `ML percentage of ${name}` })),
    el("button", { type: "submit" }, "Set…"),
    el("button", { type: "button", class: "danger", onclick: () => {
      const reason = askReason(`Emergency rollback of ${name}: all traffic to control?`);
      if (reason !== null) act("Rollback", "POST", "/api/rollback", { experiments: [name], reason });
    } }, "Roll back to 0%"));
  section.append(form);
  section.append(el("h3", {}, "Metrics (current phase)"), metricsTable(significance ? significance.metrics : {}));
  if (timeline) section.append(chartsBlock(timeline, significance ? significance.metrics : {}));
  section.append(rolloutBlock(name, rollout, history));
  return section;
}

// Edits since the page loaded: a redraw that began before someone typed would put back
// the old value under their hands, even one forced after an action (a refused one, then
// quick typing: the test of a token found it).
let edits = 0;
document.addEventListener("input", () => { edits += 1; });

async function refresh(force = false) {
  const editsBefore = edits;
  try {
    const [experiments, flags, rollouts, breakers, health, shadows] = await Promise.all([
      api("GET", "/api/experiments"), api("GET", "/api/flags"), api("GET", "/api/rollouts"),
      api("GET", "/api/breakers").catch(() => ({ breakers: [] })),
      fetch("/health/aggregate").then((r) => r.json()).catch(() => null),
      api("GET", "/api/shadow/stats").catch(() => ({ experiments: [] }))]);
    const byShadow = Object.fromEntries((shadows.experiments || []).map((s) => [s.experiment, s]));
    const byFlag = Object.fromEntries(flags.flags.map((f) => [f.name, f]));
    const byRollout = Object.fromEntries(rollouts.rollouts.map((r) => [r.experiment, r]));
    const blocks = [];
    for (const exp of experiments.experiments) {
      const significance = await api("GET", `/api/experiments/${exp.name}/significance`).catch(() => null);
      const timeline = await api("GET", `/api/experiments/${exp.name}/timeline`).catch(() => null);
      const rollout = byRollout[exp.name];
      const history = rollout ? (await api("GET", `/api/rollouts/${exp.name}/history?limit=20`)).history : [];
      const changes = (await api("GET", `/api/flags/${exp.name}/history?limit=10`).catch(() => ({ history: [] }))).history;
      const upstreams = (breakers.breakers || []).filter((b) => b && b.upstream !== undefined);
      const block = experimentBlock(exp, byFlag[exp.name], significance, rollout, history, upstreams,
        byShadow[exp.name], timeline);
      if (changes.length) {
        block.append(el("h3", {}, "Flag changes"), el("div", { class: "scroll" }, el("table", { "data-testid": "flag-history" },
          el("thead", {}, el("tr", {}, el("th", {}, "when"), el("th", {}, "who"), el("th", {}, "ML share"), el("th", {}, "reason"))),
          el("tbody", {}, ...changes.map((c) => el("tr", {}, el("td", {}, when(c.updated_at)),
            el("td", {}, c.updated_by), el("td", {}, pct(c.percentage)), el("td", {}, c.reason)))))));
      }
      blocks.push(block);
    }
    const root = $("#experiments");
    // Never redraw under someone typing a percentage (the next refresh will).
    const typing = document.activeElement && document.activeElement.tagName === "INPUT";
    if ((force || !typing) && edits === editsBefore) root.replaceChildren(...blocks);
    if (health) {
      const badge = $("#health");
      badge.textContent = `health: ${health.overall_health}`;
      badge.className = `badge ${health.overall_health}`;
    }
  } catch (error) {
    say(error.message, "error");
  }
}

$("#rollback-all").addEventListener("click", () => {
  const reason = askReason("Emergency rollback: every experiment's ML share to 0%?");
  if (reason !== null) act("Emergency rollback", "POST", "/api/rollback", { reason });
});
refresh();
setInterval(refresh, 2000);
