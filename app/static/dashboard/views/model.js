// One model: how it was trained, its curves, every BN layer's parameters drawn, and the checkpoint.

import { api } from "../api.js";
import { ACC_SCALE, EPOCH_SERIES, epochData, makeChart } from "../charts.js";
import { el, notice, pct, when } from "../util.js";

const PARAMS = [
  ["gamma", "γ (scale)"],
  ["beta", "β (shift)"],
  ["running_mean", "running mean"],
  ["running_var", "running variance"],
];

function modelLink(id) {
  return el("a", { href: `#/models/${id}` }, id);
}

/** The parent as a link, or marked deleted (its children keep its id; GET /models lists the living), or marked
 * as failing verification (listed under unusable: there, but not served). */
async function showParent(dd, parentId) {
  try {
    const models = await api("/models", { interactive: false });
    const alive = (models.data || []).some((x) => x.model_id === parentId);
    const broken = (models.unusable || []).some((x) => x.model_id === parentId);
    dd.replaceChildren(alive ? modelLink(parentId) : `${parentId} (${broken ? "fails verification" : "deleted"})`);
  } catch {
    dd.replaceChildren(parentId);
  }
}

export function render(main, modelId) {
  const error = el("p.error", { id: "model-error", role: "alert", hidden: true });
  const facts = el("dl.facts", { id: "model-facts" });
  const curves = el("div.charts");
  const layers = el("div", { id: "bn-layers" }, el("p.muted", {}, "Loading the BN layers…"));
  const download = el("a.button", { href: `/models/${modelId}/checkpoint`, download: `${modelId}.safetensors`, id: "model-download" },
    "Download checkpoint (.safetensors)");
  main.append(
    el("p", {}, el("a", { href: "#/models" }, "← All models")),
    el("div.row", {}, el("h1", {}, `Model ${modelId}`), download, el("a", { href: `#/predict?model=${modelId}` }, "Predict with it")),
    error,
    el("section.card", { "aria-labelledby": "model-facts-title" }, el("h2", { id: "model-facts-title" }, "Training"), facts),
    el("section.card", { "aria-labelledby": "model-curves-title" }, el("h2", { id: "model-curves-title" }, "Curves"), curves),
    el("section.card", { "aria-labelledby": "bn-title" },
      el("h2", { id: "bn-title" }, "Batch normalization layers"),
      el("p.muted", {}, "Per channel: the learned scale γ and shift β, and the running mean and variance used in prediction (the chapter's net[1].gamma and net[1].beta, drawn)."),
      layers));

  const charts = [];
  // Fetched through api() so a token is sent (and asked for on a 401), then saved as a file;
  // the href stays for "save link as" and for browsers without JavaScript downloads.
  download.addEventListener("click", async (event) => {
    event.preventDefault();
    try {
      const response = await api(`/models/${modelId}/checkpoint`);
      const url = URL.createObjectURL(await response.blob());
      const a = el("a", { href: url, download: `${modelId}.safetensors` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      notice(`Download failed: ${err.message}`, "error");
    }
  });

  (async () => {
    try {
      const m = await api(`/models/${modelId}`);
      const h = m.hyperparameters || {};
      const rows = [
        ["Variant", m.variant],
        ["Hyperparameters", Object.entries(h).filter(([k]) => k !== "init_model").map(([k, v]) => `${k} ${v}`).join(", ")],
        ["Final test accuracy", pct(m.final_test_acc, 2)],
        ["BN statistics", h.precise_bn ? "precise BN (true averages after training)" : "moving averages"],
        ["Device", m.device || "—"],
        ["Created", when(m.created_at)],
      ];
      facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      if (m.job_id) facts.append(el("dt", {}, "Job"), el("dd", {}, el("a", { href: `#/jobs/${m.job_id}` }, m.job_id)));
      const parent = el("dd", { id: "model-parent" }, m.parent ? m.parent : "fresh weights");
      const children = el("dd", { id: "model-children" },
        m.children?.length ? m.children.flatMap((id, i) => [i ? ", " : "", modelLink(id)]) : "none yet");
      facts.append(el("dt", {}, "Started from"), parent, el("dt", {}, "Models started from it"), children);
      if (m.parent) showParent(parent, m.parent);
      const chart = makeChart(curves, {
        title: "Per epoch: loss and accuracy", xLabel: "epoch", series: EPOCH_SERIES, scales: ACC_SCALE, integerX: true,
      });
      chart.update(epochData(m.history || []));
      charts.push(chart);
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  })();

  (async () => {
    try {
      const bn = await api(`/models/${modelId}/batchnorm`);
      layers.replaceChildren();
      for (const layer of bn.layers) {
        const grid = el("div.bn-grid");
        const section = el("section.bn-layer", { dataset: { layer: layer.name } },
          el("h3", {}, `net[${layer.name}]: ${layer.num_features} channels`), grid);
        layers.append(section);
        const xs = Array.from({ length: layer.num_features }, (_, i) => i);
        PARAMS.forEach(([key, label], i) => {
          const chart = makeChart(grid, {
            title: label, xLabel: "channel", series: [{ label, color: ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"][i] }],
            bars: true, height: 170,
          });
          chart.figure.dataset.param = key;
          chart.update([xs, layer[key]]);
          charts.push(chart);
        });
      }
    } catch (err) {
      layers.replaceChildren(el("p.error", { role: "alert" }, err.message));
    }
  })();

  return () => charts.forEach((c) => c.destroy());
}
