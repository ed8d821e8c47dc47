// Sweeps: the list (and a form to start one), and one sweep compared side by side: its trials, their
// per-epoch curves coloured by setting, each setting's spread across seeds, and the best trial's model
// given an alias in one click. Live while it runs (polled).

import { api } from "../api.js";
import { COLORS, makeChart } from "../charts.js";
import { duration, el, every, notice, pct, shortId, statusBadge, TERMINAL, when } from "../util.js";

const EXAMPLE = {
  name: "lr",
  method: "grid",
  parameters: { lr: { values: [0.1, 0.3, 1.0] }, seed: { values: [0, 1, 2] } },
  base: { variant: "scratch", epochs: 3 },
};

export function render(main, sweepId) {
  return sweepId ? renderSweep(main, sweepId) : renderList(main);
}

// The list ----------------------------------------------------------------------------------

function renderList(main) {
  const error = el("p.error", { id: "sweeps-error", role: "alert", hidden: true });
  const tbody = el("tbody");
  const count = el("span.muted", { id: "sweeps-count" });
  main.append(
    el("h1", {}, "Sweeps"),
    el("div.jobs-layout", {},
      startForm(),
      el("section.card", { "aria-labelledby": "sweeps-title" },
        el("div.row", {}, el("h2", { id: "sweeps-title" }, "Sweeps"), count),
        error,
        el("div.table-wrap", {}, el("table.sweeps", { id: "sweeps-table" },
          el("caption.visually-hidden", {}, "Sweeps, newest first"),
          el("thead", {}, el("tr", {}, ["Sweep", "Status", "Method", "Trials", "Best accuracy", "Created", "Duration"]
            .map((h) => el("th", { scope: "col" }, h)))),
          tbody)))));

  async function refresh() {
    try {
      const page = await api("/sweeps", { interactive: false });
      error.hidden = true;
      count.textContent = `${page.data.length} of ${page.count}`;
      tbody.replaceChildren(...page.data.map((s) => {
        const done = (s.trials || []).filter((t) => TERMINAL.has(t.status)).length;
        return el("tr", { dataset: { sweepId: s.id, status: s.status } },
          el("td", {}, el("a", { href: `#/sweeps/${s.id}`, title: s.id }, s.name ? `${s.name} (${shortId(s.id)})` : s.id)),
          el("td", {}, statusBadge(s.status)),
          el("td", {}, s.method ?? "—"),
          el("td", {}, `${done}/${(s.trials || []).length}`),
          el("td", { dataset: { acc: s.best?.final_test_acc ?? "" } }, s.best ? pct(s.best.final_test_acc, 2) : "—"),
          el("td", {}, when(s.created_at)),
          el("td", {}, duration(s.created_at, s.finished_at)));
      }));
      if (!page.data.length) tbody.append(el("tr", {}, el("td.muted", { colspan: 7 }, "No sweep yet: start one.")));
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  }
  const poll = every(2000, refresh);
  return () => poll.stop();
}

/** POST /sweeps with the body as JSON, written by hand (an example to start from). */
function startForm() {
  const body = el("textarea", { id: "sweep-body", rows: "14", spellcheck: "false", "aria-describedby": "sweep-body-hint" },
    JSON.stringify(EXAMPLE, null, 2));
  const submit = el("button", { type: "submit", id: "sweep-submit" }, "Start sweep");
  const failure = el("p.error", { id: "sweep-start-error", role: "alert", hidden: true });
  const form = el("form", { id: "sweep-form" },
    el("div.field", {}, el("label", { for: "sweep-body" }, "Sweep (JSON, as POST /sweeps takes it)"), body,
      el("small.hint", { id: "sweep-body-hint" }, "parameters: a grid of ", el("code", {}, "values"), " or ranges (",
        el("code", {}, "min"), ", ", el("code", {}, "max"), ", ", el("code", {}, "distribution"), ") over any training field; ",
        el("code", {}, "base"), ": fields every trial shares; optional ", el("code", {}, "early_stopping"), " (",
        el("code", {}, "median"), " or ", el("code", {}, "asha"), "). See /docs.")),
    el("div.buttons", {}, submit), failure);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    failure.hidden = true;
    let json;
    try {
      json = JSON.parse(body.value);
    } catch (err) {
      failure.textContent = `Not JSON: ${err.message}`;
      failure.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const sweep = await api("/sweeps", { method: "POST", json });
      location.hash = `#/sweeps/${sweep.id}`;
    } catch (err) {
      failure.textContent = err.errors?.length
        ? err.errors.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ")
        : err.message;
      failure.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return el("section.card.train", { "aria-labelledby": "sweep-start-title" }, el("h2", { id: "sweep-start-title" }, "Start a sweep"), form);
}

// One sweep ---------------------------------------------------------------------------------

function renderSweep(main, sweepId) {
  const heading = el("h1", {}, `Sweep ${sweepId}`);
  const status = el("span", { id: "sweep-status" });
  const cancel = el("button.danger", { type: "button", id: "sweep-cancel", hidden: true }, "Cancel sweep");
  const live = el("p.muted", { id: "sweep-live", "aria-live": "polite" }, "Loading…");
  const error = el("p.error", { id: "sweep-error", role: "alert", hidden: true });
  const best = el("section.card", { id: "sweep-best", "aria-labelledby": "sweep-best-title" },
    el("h2", { id: "sweep-best-title" }, "Best trial"), el("p.muted", {}, "No trial has finished yet."));
  const trials = el("tbody");
  const curves = el("div", { id: "sweep-curves" });
  const spread = el("div", { id: "sweep-spread-box" });
  const settingsBody = el("tbody");
  const facts = el("dl.facts", { id: "sweep-facts" });
  main.append(
    el("p", {}, el("a", { href: "#/sweeps" }, "← All sweeps")),
    el("div.row", {}, heading, status, cancel),
    live, error, best,
    el("section.card", { "aria-labelledby": "sweep-trials-title" },
      el("h2", { id: "sweep-trials-title" }, "Trials"),
      el("div.table-wrap", {}, el("table", { id: "sweep-trials" },
        el("caption.visually-hidden", {}, "The sweep's trials, one job each"),
        el("thead", {}, el("tr", {}, ["Setting", "Seed", "Job", "Status", "Epochs run", "Stopped early", "Served model accuracy", "Model"]
          .map((h) => el("th", { scope: "col" }, h)))),
        trials))),
    el("div.charts", {},
      el("section.card", { "aria-labelledby": "sweep-curves-title" },
        el("h2", { id: "sweep-curves-title" }, "Per-epoch test accuracy"),
        el("p.muted.small", {}, "Each trial's moving-average test accuracy after each epoch, coloured by setting."),
        curves),
      el("section.card", { "aria-labelledby": "sweep-spread-title" },
        el("h2", { id: "sweep-spread-title" }, "Served model accuracy per setting"),
        el("p.muted.small", {}, "Across seeds, over the trials that ran to the end: the mean (dot), ± one standard deviation (bar), min to max (whiskers), each trial (ring)."),
        spread,
        el("div.table-wrap", {}, el("table", { id: "sweep-settings" },
          el("caption.visually-hidden", {}, "Per setting: mean, standard deviation, min and max of the served model's accuracy"),
          el("thead", {}, el("tr", {}, ["Setting", "Trials counted", "Mean", "Std", "Min", "Max"].map((h) => el("th", { scope: "col" }, h)))),
          settingsBody)))),
    el("section.card", { "aria-labelledby": "sweep-facts-title" }, el("h2", { id: "sweep-facts-title" }, "Details"), facts));

  let sweep = null;
  let jobs = new Map(); // job_id -> job record (with its history), from GET /jobs?sweep=
  let chart = null;
  let chartKey = null; // the trials the chart draws, by job id
  let aliasForm = null;
  let poll = null;
  let lastSeen = "";
  const drawn = new Map();
  function changed(part, data) {
    const key = JSON.stringify(data);
    if (drawn.get(part) === key) return false;
    drawn.set(part, key);
    return true;
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/sweeps/${sweepId}/cancel`, { method: "POST" });
      notice("Sweep cancelled: its trials stop.");
      tick();
    } catch (err) {
      notice(`Cancel failed: ${err.message}`, "error");
      cancel.disabled = false;
    }
  });

  function colorOf(setting) {
    const names = settingNames();
    const i = names.indexOf(setting);
    return COLORS[(i < 0 ? names.length : i) % COLORS.length];
  }

  function settingNames() {
    const names = (sweep?.settings || []).map((s) => s.setting);
    for (const t of sweep?.trials || []) if (!names.includes(t.setting)) names.push(t.setting);
    return names;
  }

  function showTrials() {
    trials.replaceChildren(...sweep.trials.map((t) => {
      const job = jobs.get(t.job_id);
      const epochs = job?.params?.epochs ?? t.params?.epochs ?? sweep.base?.epochs;
      return el("tr", { dataset: { jobId: t.job_id, status: t.status, setting: t.setting } },
        el("td", {}, el("span.swatch", { style: `background: ${colorOf(t.setting)}`, "aria-hidden": "true" }), t.setting || "—"),
        el("td", {}, t.params?.seed ?? "—"),
        el("td", {}, el("a", { href: `#/jobs/${t.job_id}`, title: t.job_id }, shortId(t.job_id))),
        el("td", {}, statusBadge(t.status)),
        el("td", { dataset: { epochs: t.epochs_run ?? 0 } }, epochs ? `${t.epochs_run ?? 0}/${epochs}` : String(t.epochs_run ?? 0)),
        el("td", { dataset: { stopped: String(!!t.stopped_early) } }, t.stopped_early ? "stopped early" : "no"),
        el("td.num", { dataset: { acc: t.final_test_acc ?? "" } }, pct(t.final_test_acc, 2)),
        el("td", {}, t.model_id ? el("a", { href: `#/models/${t.model_id}`, title: t.model_id }, shortId(t.model_id)) : "—"));
    }));
    if (!sweep.trials.length) trials.append(el("tr", {}, el("td.muted", { colspan: 8 }, "No trial yet.")));
  }

  function showCurves() {
    const list = sweep.trials.filter((t) => jobs.get(t.job_id)?.history?.length);
    const key = list.map((t) => t.job_id).join(",");
    if (key !== chartKey) {
      if (chart) chart.destroy();
      chart = null;
      chartKey = key;
      curves.replaceChildren();
      if (!list.length) curves.append(el("p.muted", {}, "No epoch has finished yet."));
      else {
        chart = makeChart(curves, {
          title: "Test accuracy per epoch, one line per trial", xLabel: "epoch", integerX: true,
          series: list.map((t) => ({ label: `${t.setting}${t.params?.seed !== undefined ? ` · seed ${t.params.seed}` : ""}`, color: colorOf(t.setting) })),
        });
        chart.figure.id = "chart-sweep-curves";
        chart.figure.dataset.series = String(list.length);
      }
    }
    if (!chart) return;
    const epochs = Math.max(1, ...list.map((t) => Math.max(...jobs.get(t.job_id).history.map((h) => h.epoch))));
    const xs = Array.from({ length: epochs }, (_, i) => i + 1);
    chart.update([xs, ...list.map((t) => xs.map((e) => jobs.get(t.job_id).history.find((h) => h.epoch === e)?.test_acc ?? null))]);
  }

  function showSettings() {
    const rows = sweep.settings || [];
    settingsBody.replaceChildren(...rows.map((s) => el("tr", { dataset: { setting: s.setting } },
      el("td", {}, el("span.swatch", { style: `background: ${colorOf(s.setting)}`, "aria-hidden": "true" }), s.setting),
      el("td.num", {}, s.trials),
      el("td.num", { dataset: { stat: "mean" } }, pct(s.mean, 2)),
      el("td.num", { dataset: { stat: "std" } }, s.std === null || s.std === undefined ? "—" : `${(100 * s.std).toFixed(2)} pt`),
      el("td.num", { dataset: { stat: "min" } }, pct(s.min, 2)),
      el("td.num", { dataset: { stat: "max" } }, pct(s.max, 2)))));
    spread.replaceChildren(spreadChart(rows, sweep.trials, colorOf));
  }

  function showBest() {
    const b = sweep.best;
    if (!b) {
      best.replaceChildren(best.firstChild, el("p.muted", {}, TERMINAL.has(sweep.status) ? "No trial produced a model." : "No trial has finished yet."));
      aliasForm = null;
      return;
    }
    const trial = sweep.trials.find((t) => t.job_id === b.job_id);
    if (!aliasForm || aliasForm.modelId !== b.model_id) aliasForm = bestAliasForm(b.model_id, sweep);
    best.replaceChildren(best.firstChild,
      el("p.big", { id: "sweep-best-acc", dataset: { acc: b.final_test_acc } }, `${pct(b.final_test_acc, 2)} `,
        el("span.muted.small", {}, "served model accuracy")),
      el("p", {}, `Setting ${trial?.setting ?? settingOf(b.params)}, seed ${b.params?.seed ?? "—"} · job `,
        el("a", { href: `#/jobs/${b.job_id}` }, shortId(b.job_id)), " · model ",
        el("a", { href: `#/models/${b.model_id}`, id: "sweep-best-model" }, b.model_id)),
      aliasForm.node);
  }

  function showFacts() {
    const rows = [
      ["Id", sweep.id],
      ["Name", sweep.name || "—"],
      ["Method", sweep.method],
      ["Parameters", JSON.stringify(sweep.parameters)],
      ["Shared by every trial", JSON.stringify(sweep.base || {})],
      ["Early stopping", sweep.early_stopping ? JSON.stringify(sweep.early_stopping) : "none"],
      ["Created", when(sweep.created_at)],
      ["Finished", when(sweep.finished_at)],
      ["Duration", duration(sweep.created_at, sweep.finished_at)],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { fact: k } }, v)]));
  }

  async function tick() {
    try {
      sweep = await api(`/sweeps/${sweepId}`, { interactive: false });
      error.hidden = true;
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      if (err.status === 404 && poll) poll.stop();
      return;
    }
    // the trials' records (for their curves) only when something moved
    const seen = JSON.stringify(sweep.trials.map((t) => [t.job_id, t.status, t.epochs_run]));
    const running = sweep.trials.some((t) => t.status === "running");
    if (seen !== lastSeen || running) {
      try {
        const page = await api(`/jobs?${new URLSearchParams({ sweep: sweepId, limit: "500" })}`, { interactive: false });
        jobs = new Map(page.data.map((j) => [j.job_id, j]));
        lastSeen = seen;
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      }
    }
    heading.textContent = sweep.name ? `Sweep ${sweep.name}` : `Sweep ${sweep.id}`;
    document.title = `${heading.textContent} · bnlenet`;
    status.replaceChildren(statusBadge(sweep.status));
    cancel.hidden = TERMINAL.has(sweep.status);
    cancel.disabled = !!sweep.cancel_requested;
    // each part is redrawn only when its data changed, so a focused link or a half-typed alias stays
    if (changed("best", sweep.best)) showBest();
    if (changed("trials", [sweep.trials, [...jobs.values()].map((j) => j.params?.epochs)])) showTrials();
    if (changed("curves", [...jobs.values()].map((j) => j.history))) showCurves();
    if (changed("settings", sweep.settings)) showSettings();
    if (changed("facts", [sweep.status, sweep.finished_at, sweep.name])) showFacts();
    const done = sweep.trials.filter((t) => TERMINAL.has(t.status)).length;
    if (TERMINAL.has(sweep.status)) {
      live.textContent = `The sweep ended: ${sweep.status} (${done} of ${sweep.trials.length} trials finished).`;
      live.dataset.mode = "done";
      if (poll) poll.stop();
    } else {
      live.textContent = `Live: polling every second (${done} of ${sweep.trials.length} trials finished).`;
      live.dataset.mode = "polling";
    }
  }

  poll = every(1000, tick);
  return () => { poll.stop(); if (chart) chart.destroy(); };
}

function settingOf(params) {
  return Object.entries(params || {}).filter(([k]) => k !== "seed").map(([k, v]) => `${k}=${v}`).join(", ");
}

/** One click: PUT /models/{best}/aliases/{alias}, then say where the alias now points. */
function bestAliasForm(modelId, sweep) {
  const input = el("input", { type: "text", id: "sweep-alias", value: "best", pattern: "[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}",
    autocomplete: "off", spellcheck: "false", "aria-describedby": "sweep-alias-hint" });
  const button = el("button", { type: "submit", id: "sweep-best-alias" }, "Point alias at the best model");
  const result = el("p", { id: "sweep-alias-result", "aria-live": "polite" });
  const form = el("form.row.alias-form", {},
    el("label", { for: "sweep-alias" }, "Alias"), input, button,
    el("small.hint", { id: "sweep-alias-hint" }, `e.g. production, which POST /predict serves by default`));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const alias = input.value.trim();
    result.className = "";
    if (!input.checkValidity() || !alias) {
      result.textContent = "An alias is letters, digits, - and _ (starting with a letter or digit).";
      result.className = "error";
      return;
    }
    button.disabled = true;
    try {
      const out = await api(`/models/${encodeURIComponent(modelId)}/aliases/${encodeURIComponent(alias)}`, { method: "PUT" });
      result.replaceChildren(`Alias `, el("code", {}, out.alias), ` now points at model `,
        el("a", { href: `#/models/${out.model_id}` }, out.model_id), ` (the best of sweep ${sweep.name || shortId(sweep.id)}).`);
      result.className = "ok";
    } catch (err) {
      result.textContent = err.message;
      result.className = "error";
    } finally {
      button.disabled = false;
    }
  });
  return { modelId, node: el("div", {}, form, result) };
}

// The spread chart: a small SVG, one column per setting ----------------------------------------

// The SVG namespace, as the HTML parser assigns it to an <svg> (no URL written in the page's code).
const SVG = (() => {
  const t = document.createElement("template");
  t.innerHTML = "<svg></svg>";
  return t.content.firstChild.namespaceURI;
})();

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

/** Per setting: whiskers min..max, a bar mean ± std, a dot at the mean, a ring per finished trial. */
export function spreadChart(settings, trials, colorOf) {
  const drawn = settings.filter((s) => s.mean !== null && s.mean !== undefined);
  const figure = el("figure.chart.spread", { id: "sweep-spread", dataset: { points: String(drawn.length) } });
  if (!drawn.length) {
    figure.append(el("p.muted", {}, "No trial has a served model yet."));
    return figure;
  }
  const values = drawn.flatMap((s) => [s.min ?? s.mean, s.max ?? s.mean, s.mean - (s.std || 0), s.mean + (s.std || 0)]);
  let low = Math.min(...values);
  let high = Math.max(...values);
  const pad = Math.max((high - low) * 0.15, 0.005);
  low = Math.max(0, low - pad);
  high = Math.min(1, high + pad);
  const W = 480;
  const H = 260;
  const left = 52;
  const right = 12;
  const top = 12;
  const bottom = 56;
  const y = (v) => top + (H - top - bottom) * (1 - (v - low) / (high - low || 1));
  const step = (W - left - right) / drawn.length;
  const x = (i) => left + step * (i + 0.5);
  const tilt = drawn.length > 3; // long setting names side by side would overlap
  const ticks = Array.from({ length: 5 }, (_, i) => low + ((high - low) * i) / 4);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Served model accuracy per setting: mean, standard deviation, min and max across seeds" },
    ticks.map((t) => svg("g", { class: "tick" },
      svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), stroke: "#e3e8ee" }),
      svg("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", "font-size": "11", fill: "#5b6776" }, `${(100 * t).toFixed(1)}%`))),
    drawn.map((s, i) => {
      const color = colorOf(s.setting);
      const cx = x(i);
      const half = Math.min(step * 0.18, 14);
      const sd = s.std || 0;
      // the trials the statistics count: succeeded and ran to the end (a stopped trial's model is not comparable)
      const rings = trials.filter((t) => t.setting === s.setting && t.status === "succeeded" && !t.stopped_early
        && t.final_test_acc !== null && t.final_test_acc !== undefined);
      return svg("g", { class: "setting", "data-setting": s.setting, "data-mean": s.mean, "data-std": sd, "data-min": s.min, "data-max": s.max },
        svg("title", {}, `${s.setting}: mean ${pct(s.mean, 2)}, std ${(100 * sd).toFixed(2)} pt, min ${pct(s.min, 2)}, max ${pct(s.max, 2)}, ${s.trials} trial${s.trials === 1 ? "" : "s"}`),
        svg("line", { class: "whisker", x1: cx, x2: cx, y1: y(s.min ?? s.mean), y2: y(s.max ?? s.mean), stroke: color, "stroke-width": 1.5 }),
        svg("line", { x1: cx - half / 2, x2: cx + half / 2, y1: y(s.min ?? s.mean), y2: y(s.min ?? s.mean), stroke: color, "stroke-width": 1.5 }),
        svg("line", { x1: cx - half / 2, x2: cx + half / 2, y1: y(s.max ?? s.mean), y2: y(s.max ?? s.mean), stroke: color, "stroke-width": 1.5 }),
        svg("rect", { class: "std", x: cx - half, width: 2 * half, y: y(s.mean + sd), height: Math.max(1, y(s.mean - sd) - y(s.mean + sd)),
          fill: `${color}55`, stroke: color }),
        rings.map((t) => svg("circle", { class: "trial", cx: cx + half + 6, cy: y(t.final_test_acc), r: 2.5, fill: "none", stroke: color })),
        svg("circle", { class: "mean", cx, cy: y(s.mean), r: 4, fill: color }),
        svg("text", { x: cx, y: H - bottom + 16, "font-size": "11", fill: "#1b2430",
          ...(tilt ? { "text-anchor": "end", transform: `rotate(-30 ${cx} ${H - bottom + 16})` } : { "text-anchor": "middle" }) },
          s.setting.length > 24 ? `${s.setting.slice(0, 23)}…` : s.setting));
    }));
  figure.append(chart);
  return figure;
}
