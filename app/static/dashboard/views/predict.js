// Predict: an uploaded, dropped or sample image, shown as the model sees it, and every class's probability
// under the model's own class names.

import { api } from "../api.js";
import { el, pct, shortId, when } from "../util.js";

const SAMPLES = "/static/samples/fashion-mnist-test";
const SIZE = 28;
let samples = null; // {meta, image}, loaded once per page

function loadSamples() {
  if (!samples) {
    samples = (async () => {
      const meta = await (await fetch(`${SAMPLES}.json`)).json();
      const image = new Image();
      image.src = `${SAMPLES}.png`;
      await image.decode();
      return { meta, image };
    })();
    samples.catch(() => { samples = null; });
  }
  return samples;
}

/**
 * Draw `source` (an image, or a sheet and a tile) onto the 28x28 canvas as the service would
 * see it: composited onto black, grayscale by ITU-R 601 luma (PIL's "L"), resized to 28x28.
 * The page sends exactly this 28x28 image, so what is shown is what the model gets.
 */
function drawAsModelSees(canvas, source, crop) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, SIZE, SIZE);
  if (crop) ctx.drawImage(source, crop.x, crop.y, SIZE, SIZE, 0, 0, SIZE, SIZE);
  else ctx.drawImage(source, 0, 0, SIZE, SIZE);
  const pixels = ctx.getImageData(0, 0, SIZE, SIZE);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const y = Math.round((d[i] * 299 + d[i + 1] * 587 + d[i + 2] * 114) / 1000);
    d[i] = d[i + 1] = d[i + 2] = y;
    d[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
}

export function render(main) {
  // What /predict serves when no model is named: the DEFAULT_MODEL_ALIAS model, else the newest (named once listed).
  const defaultOption = el("option", { value: "" }, "the default model");
  const modelSelect = el("select", { id: "predict-model" }, defaultOption);
  const file = el("input", { type: "file", id: "predict-file", accept: "image/*" });
  const drop = el("div.dropzone", { id: "dropzone" },
    el("label", { for: "predict-file" }, "Drop an image here, or choose a file"), file);
  const random = el("button", { type: "button", id: "predict-random" }, "Random Fashion-MNIST test image");
  const again = el("button.secondary", { type: "button", id: "predict-again", disabled: true }, "Predict again");
  const canvas = el("canvas.pixelated", { id: "predict-canvas", width: SIZE, height: SIZE, role: "img",
    "aria-label": "the image as the model sees it: 28 by 28 grayscale" });
  const source = el("p.muted", { id: "predict-source" }, "No image yet.");
  const answer = el("p.big", { id: "predict-answer", "aria-live": "polite" });
  const bars = el("ol.probs", { id: "predict-probs" });
  const error = el("p.error", { id: "predict-error", role: "alert", hidden: true });
  const modelClasses = el("p.small", { id: "predict-classes", "aria-live": "polite" });
  main.append(
    el("h1", {}, "Predict"),
    el("div.predict-layout", {},
      el("section.card", { "aria-labelledby": "predict-input-title" },
        el("h2", { id: "predict-input-title" }, "Image"),
        el("div.field", {}, el("label", { for: "predict-model" }, "Model"), modelSelect),
        modelClasses,
        drop,
        el("div.buttons", {}, random, again),
        el("p.muted.small", {}, "Any picture works: it is composited onto black, turned to grayscale and resized to 28x28, as the service does. The page sends that 28x28 image.")),
      el("section.card", { "aria-labelledby": "predict-seen-title" },
        el("h2", { id: "predict-seen-title" }, "As the model sees it"), canvas, source),
      el("section.card", { "aria-labelledby": "predict-result-title" },
        el("h2", { id: "predict-result-title" }, "Prediction"), error, answer, bars)));

  let sampleClasses = null; // Fashion-MNIST's, for the bundled test images' true labels
  let hasImage = false;
  let truth = null;
  let models = new Map(); // model_id -> ModelOut, from GET /models
  let defaultModel = null;

  /** A model's class names: from its record (`classes`), else Fashion-MNIST's for a ten-class model of old. */
  async function classesOf(modelId, count) {
    const known = models.get(modelId)?.classes;
    if (known?.length) return known;
    if (count === 10) return (await loadSamples()).meta.classes;
    return Array.from({ length: count }, (_, i) => `class ${i}`);
  }

  function showModelClasses() {
    const id = modelSelect.value || defaultModel;
    const model = models.get(id);
    if (!model) { modelClasses.textContent = ""; return; }
    const names = model.classes?.length ? model.classes : null;
    modelClasses.replaceChildren(el("span.muted", {}, `Classes of model ${shortId(id)}${model.dataset ? ` (dataset ${shortId(model.dataset)})` : ""}: `),
      names ? el("span", { id: "predict-class-names" }, names.join(", ")) : el("span.muted", {}, "not recorded (Fashion-MNIST's)"));
  }

  async function predict() {
    if (!hasImage) return;
    error.hidden = true;
    answer.textContent = "…";
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const form = new FormData();
    form.append("file", blob, "image.png");
    if (modelSelect.value) form.append("model_id", modelSelect.value);
    try {
      const out = await api("/predict", { method: "POST", form });
      const classes = await classesOf(out.model_id, out.probabilities.length);
      answer.replaceChildren(el("span", { id: "predict-class" }, out.class_name), ` ${pct(out.probabilities[out.class_index])}`,
        el("span.muted.small", {}, ` · model ${shortId(out.model_id)}`),
        truth !== null ? el("span.muted.small", {}, ` · true label: ${sampleClasses[truth]}`) : "");
      bars.replaceChildren(...out.probabilities.map((p, i) => el(`li${i === out.class_index ? ".top" : ""}`, { dataset: { class: classes[i] } },
        el("span.name", {}, classes[i] ?? `class ${i}`),
        el("span.bar", { role: "presentation" }, el("span.fill", { style: `width: ${(100 * p).toFixed(1)}%` })),
        el("span.value", {}, pct(p)))));
      again.disabled = false;
    } catch (err) {
      answer.textContent = "";
      bars.replaceChildren();
      error.textContent = err.status === 409
        ? `${err.message} Train a model on the Jobs page first.`
        : err.message;
      error.hidden = false;
    }
  }

  async function useFile(f) {
    if (!f) return;
    const url = URL.createObjectURL(f);
    try {
      const image = new Image();
      image.src = url;
      await image.decode();
      drawAsModelSees(canvas, image);
      hasImage = true;
      truth = null;
      source.textContent = `${f.name} (${image.naturalWidth}x${image.naturalHeight})`;
      await predict();
    } catch {
      error.textContent = `${f.name} is not an image this browser can read.`;
      error.hidden = false;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  file.addEventListener("change", () => useFile(file.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  random.addEventListener("click", async () => {
    try {
      const { meta, image } = await loadSamples();
      sampleClasses = meta.classes;
      const k = Math.floor(Math.random() * meta.classes.length);
      const j = Math.floor(Math.random() * meta.per_class);
      drawAsModelSees(canvas, image, { x: j * meta.tile, y: k * meta.tile });
      hasImage = true;
      truth = k;
      source.textContent = `Fashion-MNIST test image #${meta.test_indices[k][j]} (a ${meta.classes[k]})`;
      await predict();
    } catch (err) {
      error.textContent = `The bundled samples cannot be loaded: ${err.message}`;
      error.hidden = false;
    }
  });
  again.addEventListener("click", predict);
  modelSelect.addEventListener("change", () => { showModelClasses(); predict(); });

  api("/models").then((page) => {
    models = new Map(page.data.map((m) => [m.model_id, m]));
    defaultModel = page.default_model_id;
    if (defaultModel) defaultOption.textContent = `the default model (${shortId(defaultModel)})`;
    modelSelect.append(...page.data.map((m) => el("option", { value: m.model_id },
      `${shortId(m.model_id)} · ${m.variant} · ${pct(m.final_test_acc)} · ${when(m.created_at)}`)));
    const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("model");
    if (wanted) modelSelect.value = wanted;
    showModelClasses();
  }).catch((err) => {
    error.textContent = err.message;
    error.hidden = false;
  });
}
