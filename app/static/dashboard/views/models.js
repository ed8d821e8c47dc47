// Models: the registry, and several models' per-epoch curves overlaid.

import { api } from "../api.js";
import { COLORS, makeChart } from "../charts.js";
import { el, pct, shortId, when } from "../util.js";

const METRICS = { test_acc: "test accuracy", train_acc: "train accuracy", loss: "loss" };

export function render(main) {
  const error = el("p.error", { id: "models-error", role: "alert", hidden: true });
  const tbody = el("tbody");
  const metric = el("select", { id: "overlay-metric" }, Object.entries(METRICS).map(([k, v]) => el("option", { value: k }, v)));
  const chartBox = el("div.charts", { id: "overlay" });
  const refresh = el("button.secondary", { type: "button" }, "Refresh");
  main.append(
    el("div.row", {}, el("h1", {}, "Models"), refresh),
    error,
    el("section.card", { "aria-labelledby": "models-title" },
      el("h2", { id: "models-title" }, "Registry"),
      el("p.muted", {}, "Tick models to overlay their curves below."),
      el("div.table-wrap", {}, el("table.models", { id: "models-table" },
        el("caption.visually-hidden", {}, "Trained models, newest first"),
        el("thead", {}, el("tr", {}, ["Compare", "Model", "Variant", "Hyperparameters", "Test accuracy", "Created"]
          .map((h) => el("th", { scope: "col" }, h)))),
        tbody))),
    el("section.card", { "aria-labelledby": "overlay-title" },
      el("div.row", {}, el("h2", { id: "overlay-title" }, "Compare"), el("label", { for: "overlay-metric" }, "Metric"), metric),
      chartBox));

  let models = [];
  let chart = null;

  function selected() {
    return models.filter((m) => tbody.querySelector(`input[data-model="${m.model_id}"]`)?.checked);
  }

  function drawOverlay() {
    if (chart) chart.destroy();
    chart = null;
    const chosen = selected();
    chartBox.replaceChildren();
    if (!chosen.length) {
      chartBox.append(el("p.muted", {}, "No model selected."));
      return;
    }
    const key = metric.value;
    const epochs = Math.max(...chosen.map((m) => m.history.length ? Math.max(...m.history.map((h) => h.epoch)) : 0), 1);
    const xs = Array.from({ length: epochs }, (_, i) => i + 1);
    const data = [xs, ...chosen.map((m) => xs.map((e) => m.history.find((h) => h.epoch === e)?.[key] ?? null))];
    chart = makeChart(chartBox, {
      title: `Per epoch ${METRICS[key]}`, xLabel: "epoch",
      series: chosen.map((m, i) => ({ label: `${shortId(m.model_id)} ${m.variant}`, color: COLORS[i % COLORS.length] })),
      scales: key === "loss" ? {} : { y: { range: [0, 1] } }, integerX: true,
    });
    chart.figure.id = "chart-overlay";
    chart.update(data);
  }

  async function load() {
    try {
      const page = await api("/models");
      error.hidden = true;
      const before = new Set(selected().map((m) => m.model_id));
      models = page.data;
      if (!before.size) models.slice(0, 3).forEach((m) => before.add(m.model_id));
      tbody.replaceChildren(...models.map((m) => {
        const h = m.hyperparameters || {};
        const box = el("input", { type: "checkbox", id: `cmp-${m.model_id}`, dataset: { model: m.model_id }, checked: before.has(m.model_id) });
        box.addEventListener("change", drawOverlay);
        return el("tr", { dataset: { modelId: m.model_id } },
          el("td", {}, box, el("label.visually-hidden", { for: `cmp-${m.model_id}` }, `Compare ${m.model_id}`)),
          el("td", {}, el("a", { href: `#/models/${m.model_id}`, title: m.model_id }, shortId(m.model_id)),
            ...(m.aliases || []).map((a) => [" ", el("span.badge.alias", { title: `alias ${a}` }, a)]).flat(),
            m.model_id === page.default_model_id
              ? [" ", el("span.badge.default", { title: "POST /predict serves this model when none is named" }, "default")]
              : []),
          el("td", {}, m.variant),
          el("td.small", {}, `epochs ${h.epochs ?? "?"}, lr ${h.lr ?? "?"}, batch ${h.batch_size ?? "?"}, seed ${h.seed ?? "?"}${h.precise_bn ? ", precise BN" : ""}`),
          el("td", {}, pct(m.final_test_acc, 2), m.hyperparameters?.precise_bn ? " (precise BN)" : ""),
          el("td", {}, when(m.created_at)));
      }));
      if (!models.length) tbody.append(el("tr", {}, el("td.muted", { colspan: 6 }, "No trained model yet.")));
      drawOverlay();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  metric.addEventListener("change", drawOverlay);
  refresh.addEventListener("click", load);
  load();
  return () => { if (chart) chart.destroy(); };
}
