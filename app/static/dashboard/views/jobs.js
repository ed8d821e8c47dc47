// Jobs: start one (a form built from the TrainRequest schema), and a live table with cancel buttons.

import { api, getOpenApi } from "../api.js";
import { el, duration, jobAccuracy, notice, pct, shortId, statusBadge, TERMINAL, when, every } from "../util.js";

export function render(main) {
  const formBox = el("section.card.train", { "aria-labelledby": "train-title" },
    el("h2", { id: "train-title" }, "Start a training job"),
    el("p.muted", {}, "Loading the form from /openapi.json…"));
  const filter = el("select", { id: "status-filter" }, el("option", { value: "" }, "all"));
  const count = el("span.muted", { id: "jobs-count" });
  const message = el("p.error", { id: "jobs-error", role: "alert", hidden: true });
  const tbody = el("tbody");
  const table = el("table.jobs", { id: "jobs-table" },
    el("caption.visually-hidden", {}, "Training jobs, newest first"),
    el("thead", {}, el("tr", {}, ["Job", "Status", "Variant", "Epochs", "Progress", "Accuracy", "Started", "Duration", ""]
      .map((h) => el("th", { scope: "col" }, h)))),
    tbody);
  main.append(
    el("h1", {}, "Jobs"),
    el("div.jobs-layout", {},
      formBox,
      el("section.card", { "aria-labelledby": "jobs-title" },
        el("div.row", {},
          el("h2", { id: "jobs-title" }, "Jobs"),
          el("label", { for: "status-filter" }, "Status"), filter, count),
        message,
        el("div.table-wrap", {}, table))));

  const rows = new Map();

  async function refresh() {
    const params = new URLSearchParams({ limit: "50" });
    if (filter.value) params.set("status", filter.value);
    try {
      const page = await api(`/jobs?${params}`, { interactive: false });
      message.hidden = true;
      showJobs(page.data);
      count.textContent = `${page.data.length} of ${page.count}`;
    } catch (err) {
      message.textContent = err.message;
      message.hidden = false;
    }
  }

  function showJobs(list) {
    const seen = new Set();
    list.forEach((job) => {
      seen.add(job.job_id);
      let row = rows.get(job.job_id);
      if (!row) {
        row = makeRow(job.job_id, refresh);
        rows.set(job.job_id, row);
      }
      row.update(job);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    const order = list.map((j) => rows.get(j.job_id).tr);
    const current = Array.from(tbody.children);
    // re-placed only when the order changed: moving a row would take the focus off its button
    if (order.length !== current.length || order.some((tr, i) => tr !== current[i])) tbody.replaceChildren(...order);
    if (!list.length) tbody.replaceChildren(el("tr", {}, el("td.muted", { colspan: 9 }, "No jobs yet: start one.")));
  }

  filter.addEventListener("change", () => { tbody.replaceChildren(); rows.clear(); refresh(); });
  getOpenApi().then((spec) => {
    const statuses = statusEnum(spec);
    filter.append(...statuses.map((s) => el("option", { value: s }, s)));
    buildForm(formBox, spec, refresh);
  }).catch((err) => {
    formBox.querySelector("p").textContent = `The form cannot be built: ${err.message}`;
  });
  const poll = every(1000, refresh);
  return () => poll.stop();
}

function statusEnum(spec) {
  const param = (spec.paths["/jobs"]?.get?.parameters || []).find((p) => p.name === "status");
  const schema = param?.schema || {};
  const options = schema.enum || (schema.anyOf || []).flatMap((s) => s.enum || []);
  return options.length ? options : ["queued", "running", "succeeded", "failed", "cancelled"];
}

function makeRow(jobId, refresh) {
  const cells = Array.from({ length: 9 }, () => el("td"));
  const link = el("a", { href: `#/jobs/${jobId}`, title: jobId }, shortId(jobId));
  cells[0].append(link);
  const bar = el("progress", { max: "1", value: "0", "aria-label": `progress of job ${jobId}` });
  const barText = el("span.muted");
  cells[4].append(bar, " ", barText);
  const cancel = el("button.danger.small", { type: "button", "aria-label": `Cancel job ${jobId}`, dataset: { cancel: jobId } },
    "Cancel");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const job = await api(`/jobs/${jobId}/cancel`, { method: "POST" });
      notice(job.status === "cancelled" ? `Job ${shortId(jobId)} cancelled.` : `Job ${shortId(jobId)} stops after this batch.`);
    } catch (err) {
      notice(`Cancel failed: ${err.message}`, "error");
      cancel.disabled = false;
    }
    refresh();
  });
  cells[8].append(cancel);
  const tr = el("tr", { dataset: { jobId } }, cells);
  return {
    tr,
    update(job) {
      tr.dataset.status = job.status;
      cells[1].replaceChildren(statusBadge(job.status, job.cancel_requested && !TERMINAL.has(job.status) ? " (cancelling)" : ""));
      cells[2].textContent = job.params?.variant ?? "—";
      cells[3].textContent = job.progress ? `${job.progress.epoch}/${job.params?.epochs}` : `${job.params?.epochs ?? "—"}`;
      const fraction = job.status === "succeeded" ? 1 : (job.progress?.fraction ?? 0);
      bar.value = fraction;
      barText.textContent = pct(fraction, 0);
      const acc = jobAccuracy(job);
      cells[5].replaceChildren(acc.value === null ? "—" : el("span", { dataset: { acc: acc.kind }, title: acc.title },
        el("span.acc-value", {}, pct(acc.value, acc.digits)), " ", el("span.muted.small", {}, acc.label)));
      cells[6].textContent = when(job.started_at);
      cells[7].textContent = job.started_at ? duration(job.started_at, job.finished_at) : "—";
      const cancellable = !TERMINAL.has(job.status);
      cancel.hidden = !cancellable;
      if (cancellable && job.cancel_requested) cancel.disabled = true;
    },
  };
}

// The form -------------------------------------------------------------------------------

function resolve(spec, schema) {
  if (schema?.$ref) return resolve(spec, spec.components.schemas[schema.$ref.split("/").pop()]);
  return schema;
}

/** Each TrainRequest property as {name, kind, schema, optional}; anyOf [X, null] is an optional X. */
function fields(spec) {
  const schema = resolve(spec, spec.components.schemas.TrainRequest);
  return Object.entries(schema.properties).map(([name, raw]) => {
    let s = resolve(spec, raw);
    let optional = false;
    if (s.anyOf) {
      const other = s.anyOf.filter((x) => x.type !== "null");
      optional = other.length < s.anyOf.length;
      s = { ...raw, ...resolve(spec, other[0]), anyOf: undefined, default: raw.default };
    }
    const kind = s.enum ? "enum" : s.type === "boolean" ? "boolean" : (s.type === "integer" || s.type === "number") ? s.type : "string";
    return { name, kind, schema: s, optional, title: raw.title || name, description: raw.description || s.description || "" };
  });
}

function limitsText(f) {
  const s = f.schema;
  if (s.maximum > Number.MAX_SAFE_INTEGER) return s.minimum !== undefined ? `from ${s.minimum}` : "";
  const low = s.minimum ?? (s.exclusiveMinimum !== undefined ? `> ${s.exclusiveMinimum}` : undefined);
  const high = s.maximum ?? (s.exclusiveMaximum !== undefined ? `< ${s.exclusiveMaximum}` : undefined);
  if (low === undefined && high === undefined) return "";
  if (low !== undefined && high !== undefined) {
    return typeof low === "number" ? `${low} to ${high}` : `${low}, at most ${high}`;
  }
  return low !== undefined ? `from ${low}` : `at most ${high}`;
}

/** The dataset field: a choice among GET /datasets (by alias where it has one), the default first selected. */
function datasetSelect(id, f, described) {
  const fallback = f.schema.default ?? "fashion-mnist";
  const select = el("select", { id, name: f.name, "aria-describedby": described },
    el("option", { value: fallback, selected: true }, fallback));
  api("/datasets", { interactive: false }).then((page) => {
    const chosen = select.value;
    const options = page.data.map((d) => {
      const value = d.aliases?.[0] ?? d.id;
      const label = `${value}: ${d.num_classes} classes, ${d.train_size.toLocaleString()} train images${d.builtin ? " (built in)" : ""}`;
      return el("option", { value, dataset: { datasetId: d.id }, title: d.id }, label);
    });
    if (!options.length) return;
    select.replaceChildren(...options);
    const keep = options.find((o) => o.value === chosen || o.dataset.datasetId === chosen);
    select.value = keep ? keep.value : options[0].value;
  }).catch(() => { /* no dataset list (an older API): the default stays the only choice */ });
  return select;
}

function buildForm(box, spec, refresh) {
  const list = fields(spec);
  const form = el("form", { id: "train-form", novalidate: true });
  const inputs = {};
  const errors = {};
  for (const f of list) {
    const id = `train-${f.name}`;
    const limits = limitsText(f);
    const stated = [f.schema.maximum, f.schema.exclusiveMaximum].some((v) => v !== undefined && f.description.includes(String(v)));
    const hint = el("small.hint", { id: `${id}-hint` }, [f.description, limits && !stated ? `(${limits})` : ""].filter(Boolean).join(" "));
    const error = el("p.field-error", { id: `${id}-error`, "aria-live": "polite" });
    const described = `${id}-hint ${id}-error`;
    let input;
    if (f.name === "dataset") {
      input = datasetSelect(id, f, described);
    } else if (f.kind === "enum") {
      input = el("select", { id, name: f.name, "aria-describedby": described },
        f.schema.enum.map((v) => el("option", { value: v, selected: v === f.schema.default }, v)));
    } else if (f.kind === "boolean") {
      input = el("input", { id, name: f.name, type: "checkbox", checked: f.schema.default === true, "aria-describedby": described });
    } else if (f.kind === "integer" || f.kind === "number") {
      const s = f.schema;
      input = el("input", {
        id, name: f.name, type: "number", inputmode: f.kind === "integer" ? "numeric" : "decimal",
        step: f.kind === "integer" ? "1" : "any",
        min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum,
        value: s.default ?? "", placeholder: s.default ?? "", "aria-describedby": described,
      });
    } else {
      input = el("input", {
        id, name: f.name, type: "text", pattern: f.schema.pattern?.replace(/^\^|\$$/g, ""),
        placeholder: f.optional ? "default" : "", value: f.schema.default ?? "", "aria-describedby": described,
        autocomplete: "off", spellcheck: "false",
      });
    }
    inputs[f.name] = input;
    errors[f.name] = error;
    const label = el("label", { for: id }, el("code", {}, f.name)); // the API's own name for it
    form.append(el(`div.field.field-${f.kind}`, { dataset: { field: f.name } },
      f.kind === "boolean" ? el("div.check", {}, input, label) : [label, input], hint, error));
  }
  const submit = el("button", { type: "submit", id: "train-submit" }, "Start training");
  const formError = el("p.error", { id: "train-error", role: "alert", hidden: true });
  const done = el("p.ok", { id: "train-result", "aria-live": "polite" });
  form.append(el("div.buttons", {}, submit), formError, done);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    Object.values(errors).forEach((e) => { e.textContent = ""; });
    Object.values(inputs).forEach((i) => i.removeAttribute("aria-invalid"));
    formError.hidden = true;
    done.textContent = "";
    const body = {};
    let bad = false;
    for (const f of list) {
      const input = inputs[f.name];
      if (f.kind === "boolean") body[f.name] = input.checked;
      else if (f.kind === "integer" || f.kind === "number") {
        if (input.validity.badInput) {
          errors[f.name].textContent = "not a number";
          input.setAttribute("aria-invalid", "true");
          bad = true;
        } else if (input.value !== "") body[f.name] = Number(input.value);
      } else if (input.value.trim() !== "") body[f.name] = input.value.trim();
      else if (!f.optional) body[f.name] = "";
    }
    if (bad) return;
    submit.disabled = true;
    try {
      const job = await api("/train", { method: "POST", json: body });
      done.replaceChildren(`Queued job ${shortId(job.job_id)}. `, el("a", { href: `#/jobs/${job.job_id}`, id: "train-follow" }, "Follow it"));
      refresh();
    } catch (err) {
      if (err.status === 422 && Array.isArray(err.errors)) {
        const general = [];
        for (const d of err.errors) {
          const name = d.loc?.[0] === "body" ? d.loc[1] : undefined;
          if (name in errors) {
            errors[name].textContent = d.msg;
            inputs[name].setAttribute("aria-invalid", "true");
          } else general.push(`${(d.loc || []).join(".")}: ${d.msg}`);
        }
        if (general.length) { formError.textContent = general.join("; "); formError.hidden = false; }
        form.querySelector("[aria-invalid=true]")?.focus();
      } else {
        formError.textContent = err.message;
        formError.hidden = false;
      }
    } finally {
      submit.disabled = false;
    }
  });
  box.replaceChildren(box.querySelector("h2"), form);
}
