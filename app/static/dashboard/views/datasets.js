// Datasets: upload one (with its progress), the registered ones, and one dataset's validation
// report and sample images (#/datasets/{id} shows the list and that dataset below it).

import { api, objectUrl, upload } from "../api.js";
import { bytes, el, notice, shortId, when } from "../util.js";

const SAMPLES_PER_CLASS = 8;

export function render(main, selectedId) {
  const error = el("p.error", { id: "datasets-error", role: "alert", hidden: true });
  const tbody = el("tbody");
  const detail = el("section.card", { id: "dataset-detail", hidden: true, "aria-labelledby": "dataset-title" });
  const refreshButton = el("button.secondary", { type: "button" }, "Refresh");
  main.append(
    el("div.row", {}, el("h1", {}, "Datasets"), refreshButton),
    error,
    el("div.datasets-layout", {},
      uploadCard((dataset) => { load(); select(dataset.id, true); }),
      el("section.card", { "aria-labelledby": "datasets-title" },
        el("h2", { id: "datasets-title" }, "Registered datasets"),
        el("p.muted.small", {}, "A job trains on one of these (the ", el("code", {}, "dataset"), " field of the job form)."),
        el("div.table-wrap", {}, el("table.datasets", { id: "datasets-table" },
          el("caption.visually-hidden", {}, "Datasets, with their classes and sizes"),
          el("thead", {}, el("tr", {}, ["Dataset", "Classes", "Train", "Test", "Format", "Size", ""]
            .map((h) => el("th", { scope: "col" }, h)))),
          tbody)))),
    detail);

  let samplesUrl = null;
  let shown = null;

  /** One alert line; `source` says who set it, so the list reloading clears only its own. */
  function showError(err, source) {
    if (!err && source && error.dataset.source !== source) return;
    error.textContent = err ? err.message : "";
    error.dataset.source = source || "";
    error.hidden = !err;
  }

  async function load() {
    try {
      const page = await api("/datasets", { interactive: false });
      showError(null, "list");
      tbody.replaceChildren(...page.data.map((d) => datasetRow(d, select, remove)));
      if (!page.data.length) tbody.append(el("tr", {}, el("td.muted", { colspan: 7 }, "No dataset yet: upload one.")));
    } catch (err) {
      showError(err, "list");
    }
  }

  async function remove(dataset, button) {
    button.disabled = true;
    try {
      await api(`/datasets/${dataset.id}`, { method: "DELETE" });
      notice(`Dataset ${shortId(dataset.id)} deleted.`);
      if (shown === dataset.id) {
        detail.hidden = true;
        history.replaceState(null, "", "#/datasets");
        shown = null;
      }
      showError(null, "delete");
    } catch (err) {
      // a 409 names the jobs and models that still use it
      showError(new Error(`Dataset ${dataset.id} was not deleted: ${err.message}`), "delete");
      button.disabled = false;
    }
    load();
  }

  /** Show one dataset below the list; `push` also puts it in the address (without re-rendering the page). */
  async function select(id, push = false) {
    if (push) history.pushState(null, "", `#/datasets/${id}`);
    shown = id;
    detail.hidden = false;
    detail.replaceChildren(el("h2", { id: "dataset-title" }, `Dataset ${id}`), el("p.muted", {}, "Loading…"));
    try {
      const dataset = await api(`/datasets/${id}`, { interactive: false });
      if (shown !== id) return;
      if (samplesUrl) URL.revokeObjectURL(samplesUrl);
      samplesUrl = null;
      const grid = el("div.samples", { id: "dataset-samples-box" }, el("p.muted", {}, "Loading the sample images…"));
      detail.replaceChildren(...datasetDetail(dataset, grid));
      try {
        samplesUrl = await objectUrl(`/datasets/${dataset.id}/samples.png?per_class=${SAMPLES_PER_CLASS}`);
        if (shown !== id) return;
        grid.replaceChildren(sampleGrid(dataset.classes, samplesUrl));
      } catch (err) {
        grid.replaceChildren(el("p.error", {}, `The sample images cannot be shown: ${err.message}`));
      }
    } catch (err) {
      detail.replaceChildren(el("h2", { id: "dataset-title" }, `Dataset ${id}`), el("p.error", { role: "alert" }, err.message));
    }
  }

  refreshButton.addEventListener("click", () => { load(); if (shown) select(shown); });
  load();
  if (selectedId) select(selectedId);
  return () => { if (samplesUrl) URL.revokeObjectURL(samplesUrl); };
}

function datasetRow(d, select, remove) {
  const link = el("a", { href: `#/datasets/${d.id}`, title: d.id }, d.id);
  link.addEventListener("click", (event) => { event.preventDefault(); select(d.id, true); });
  const del = el("button.danger.small", { type: "button", "aria-label": `Delete dataset ${d.id}`, dataset: { delete: d.id } }, "Delete");
  // two clicks: the first arms the button for a few seconds, so one stray click deletes nothing
  let armed = null;
  del.addEventListener("click", () => {
    if (!armed) {
      del.textContent = "Really delete?";
      armed = setTimeout(() => { armed = null; del.textContent = "Delete"; }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    del.textContent = "Delete";
    remove(d, del);
  });
  return el("tr", { dataset: { datasetId: d.id } },
    el("td", {}, link,
      ...(d.aliases || []).map((a) => [" ", el("span.badge.alias", { title: `alias ${a}` }, a)]).flat(),
      d.builtin ? [" ", el("span.badge.builtin", { title: "registered by the service itself" }, "built in")] : []),
    el("td.small.classes", { title: (d.classes || []).join(", ") }, `${d.num_classes}: ${abbreviate(d.classes || [])}`),
    el("td", { dataset: { split: "train" } }, (d.train_size ?? 0).toLocaleString()),
    el("td", { dataset: { split: "test" } }, (d.test_size ?? 0).toLocaleString()),
    el("td", {}, d.format ?? "—"),
    el("td", { title: d.created_at ? `created ${when(d.created_at)}` : "" }, bytes(d.size_bytes)),
    el("td", {}, d.builtin ? "" : del));
}

function abbreviate(names, max = 4) {
  return names.length > max ? `${names.slice(0, max).join(", ")}, …` : names.join(", ");
}

// Upload --------------------------------------------------------------------------------

function uploadCard(onStored) {
  const file = el("input", { type: "file", id: "dataset-file", required: true, accept: ".zip,.npz,.gz,.idx,.ubyte,application/zip",
    "aria-describedby": "dataset-file-hint" });
  const name = el("input", { type: "text", id: "dataset-name", autocomplete: "off", spellcheck: "false", placeholder: "optional" });
  const classes = el("input", { type: "text", id: "dataset-classes", autocomplete: "off", placeholder: "from the folder names",
    "aria-describedby": "dataset-classes-hint" });
  const fraction = el("input", { type: "number", id: "dataset-test-fraction", min: "0", max: "1", step: "any", value: "0.2",
    inputmode: "decimal", "aria-describedby": "dataset-test-fraction-hint" });
  const seed = el("input", { type: "number", id: "dataset-seed", step: "1", value: "0", inputmode: "numeric" });
  const submit = el("button", { type: "submit", id: "dataset-submit" }, "Upload and validate");
  const bar = el("progress", { id: "dataset-progress", max: "1", value: "0", hidden: true, "aria-label": "upload progress" });
  const state = el("p.muted", { id: "dataset-upload-state", "aria-live": "polite" });
  const failure = el("div", { id: "dataset-upload-error", role: "alert", hidden: true });
  const field = (id, label, input, hint) => el("div.field", {}, el("label", { for: id }, label), input,
    hint ? el("small.hint", { id: `${id}-hint` }, hint) : null);
  const form = el("form", { id: "dataset-form", novalidate: true },
    field("dataset-file", "File", file, "A zip of class folders (train/ and test/ inside, or one set the service splits), "
      + "the four IDX files of the MNIST family (zipped, gzipped or not), or a MedMNIST-style .npz."),
    field("dataset-name", "Name (an alias)", name),
    field("dataset-classes", "Class names", classes, "Comma-separated, in label order; needed for IDX and .npz."),
    field("dataset-test-fraction", "Test fraction", fraction, "When the service splits one set: a seeded, stratified split."),
    field("dataset-seed", "Split seed", seed),
    el("div.buttons", {}, submit),
    el("div.upload-progress", {}, bar, state),
    failure);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    failure.hidden = true;
    if (!file.files.length) {
      showFailure(failure, "Choose a file first.", null);
      file.focus();
      return;
    }
    const chosen = file.files[0];
    const body = new FormData();
    body.append("file", chosen, chosen.name);
    if (name.value.trim()) body.append("name", name.value.trim());
    if (classes.value.trim()) body.append("classes", classes.value.trim());
    if (fraction.value !== "") body.append("test_fraction", fraction.value);
    if (seed.value !== "") body.append("seed", seed.value);
    submit.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    bar.dataset.state = "uploading";
    state.textContent = `Uploading ${chosen.name}…`;
    try {
      const dataset = await upload("/datasets", body, {
        onProgress(loaded, total) {
          if (total) bar.value = loaded / total;
          state.textContent = `Uploading ${chosen.name}: ${bytes(loaded)}${total ? ` of ${bytes(total)}` : ""}`;
        },
        onSent() {
          bar.value = 1;
          bar.dataset.state = "validating";
          state.textContent = `Uploaded ${bytes(chosen.size)}; the service is checking it…`;
        },
      });
      bar.value = 1;
      bar.dataset.state = "done";
      state.replaceChildren(`Stored as `, el("code", { id: "dataset-stored" }, dataset.id),
        ` (${dataset.num_classes} classes, ${dataset.train_size} train and ${dataset.test_size} test images). Its report is below.`);
      onStored(dataset);
    } catch (err) {
      bar.dataset.state = "refused";
      state.textContent = "";
      showFailure(failure, err.status ? `Refused: ${err.message}` : err.message, err.problems);
    } finally {
      submit.disabled = false;
    }
  });
  return el("section.card", { "aria-labelledby": "upload-title" }, el("h2", { id: "upload-title" }, "Upload a dataset"), form);
}

function showFailure(box, message, problems) {
  box.replaceChildren(el("p.error", {}, message),
    problems?.length ? el("ul.problems", { id: "dataset-problems" }, problems.map((p) => el("li", {}, p))) : null);
  box.hidden = false;
}

// One dataset: the validation report ------------------------------------------------------

function datasetDetail(d, samples) {
  const r = d.report || {};
  const facts = [
    ["Id", d.id],
    ["Aliases", (d.aliases || []).join(", ") || "—"],
    ["Format", r.format || d.format || "—"],
    ["Classes", `${d.num_classes}: ${(d.classes || []).join(", ")}`],
    ["Images", `${(d.train_size ?? 0).toLocaleString()} train, ${(d.test_size ?? 0).toLocaleString()} test`],
    ["Split", splitText(r.split)],
    ["Stored size", bytes(d.size_bytes)],
    ["Created", when(d.created_at)],
  ];
  return [
    el("div.row", {}, el("h2", { id: "dataset-title" }, `Dataset ${d.id}`),
      el("a", { href: `#/jobs`, title: "start a job on the Jobs page and choose this dataset" }, "Train on it")),
    el("dl.facts", { id: "dataset-facts" }, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { fact: k } }, v)])),
    el("h3", {}, "Validation report"),
    warnings(r.warnings || []),
    el("div.report", {},
      countsTable(d.classes || r.classes || [], r.counts || {}),
      el("div", {},
        el("dl.facts", { id: "dataset-report" }, [
          ["Image sizes", tally(r.image_sizes)],
          ["Image modes", tally(r.image_modes)],
          ["Imbalance", r.imbalance?.max_over_min !== undefined
            ? `largest class / smallest class = ${Number(r.imbalance.max_over_min).toFixed(2)}` : "—"],
          ["Duplicates", pairs(r.duplicates, "exact duplicate images")],
          ["In train and test", pairs(r.train_test_overlap, "images in both splits")],
          ["Skipped files", skipped(r.skipped || [])],
        ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { report: k } }, v)])))),
    el("h3", {}, `Sample images (${SAMPLES_PER_CLASS} per class)`),
    samples,
  ];
}

function splitText(split) {
  if (!split) return "—";
  if (split.source === "upload") return "as uploaded (train/ and test/)";
  return `by the service: test fraction ${split.test_fraction}, seed ${split.seed}, stratified`;
}

function tally(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([k, n]) => `${k}: ${n.toLocaleString()}`).join(", ") : "—";
}

function pairs(found, what) {
  if (!found || !found.count) return "none";
  const examples = (found.examples || []).map((pair) => el("li", {}, pair.join(" = ")));
  return el("div", {}, `${found.count.toLocaleString()} ${what}`, examples.length ? el("ul.small", {}, examples) : null);
}

function skipped(list) {
  if (!list.length) return "none";
  return el("ul.small", { id: "dataset-skipped" }, list.map((s) => el("li", {}, el("code", {}, s.name), `: ${s.reason}`)));
}

function warnings(list) {
  if (!list.length) return el("p.ok", { id: "dataset-warnings" }, "No warnings.");
  return el("ul.warnings", { id: "dataset-warnings" }, list.map((w) => el("li", {}, w)));
}

/** Images per class and split, with totals; each count cell says its class and split. */
function countsTable(classes, counts) {
  const splits = ["train", "test"];
  const n = (split, c) => counts[split]?.[c] ?? 0;
  const total = (split) => classes.reduce((sum, c) => sum + n(split, c), 0);
  return el("div.table-wrap", {}, el("table.counts", { id: "dataset-counts" },
    el("caption", {}, "Images per class and split"),
    el("thead", {}, el("tr", {}, ["Class", "Train", "Test", "All"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, classes.map((c) => el("tr", { dataset: { class: c } },
      el("th", { scope: "row" }, c),
      ...splits.map((s) => el("td.num", { dataset: { split: s, class: c } }, n(s, c).toLocaleString())),
      el("td.num", {}, (n("train", c) + n("test", c)).toLocaleString())))),
    el("tfoot", {}, el("tr", {}, el("th", { scope: "row" }, "All"),
      ...splits.map((s) => el("td.num", { dataset: { split: s, total: "" } }, total(s).toLocaleString())),
      el("td.num", {}, (total("train") + total("test")).toLocaleString())))));
}

/** The samples.png grid (one row per class, in class order) with each row's class name beside it. */
function sampleGrid(classes, url) {
  const image = el("img", { id: "dataset-samples", src: url, alt: `${SAMPLES_PER_CLASS} sample images per class, one row per class: ${classes.join(", ")}` });
  const labels = el("ol.sample-labels", { "aria-hidden": "true", style: `grid-template-rows: repeat(${classes.length || 1}, 1fr)` },
    classes.map((c) => el("li", {}, c)));
  return el("figure.sample-grid", {}, labels, image);
}
