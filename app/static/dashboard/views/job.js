// One job: its record and live curves, from the event stream when the server has one, else by polling.

import { api, getOpenApi, getToken } from "../api.js";
import { ACC_SCALE, EPOCH_SERIES, epochData, makeChart } from "../charts.js";
import { el, duration, notice, num, pct, statusBadge, TERMINAL, when, every } from "../util.js";

const EVENTS_PATH = "/jobs/{job_id}/events";

export function render(main, jobId) {
  const status = el("span", { id: "job-status" });
  const cancel = el("button.danger", { type: "button", id: "job-cancel", hidden: true }, "Cancel job");
  const live = el("p.muted", { id: "job-live", "aria-live": "polite" }, "Connecting…");
  const error = el("p.error", { id: "job-error", role: "alert", hidden: true });
  const facts = el("dl.facts", { id: "job-facts" });
  const result = el("section.card", { id: "job-result", hidden: true, "aria-labelledby": "job-result-title" });
  const charts = el("div.charts");
  main.append(
    el("p", {}, el("a", { href: "#/jobs" }, "← All jobs")),
    el("div.row", {}, el("h1", {}, `Job ${jobId}`), status, cancel),
    live, error, result,
    el("section.card", { "aria-labelledby": "job-curves-title" }, el("h2", { id: "job-curves-title" }, "Curves"), charts),
    el("section.card", { "aria-labelledby": "job-facts-title" }, el("h2", { id: "job-facts-title" }, "Details"), facts));

  const perEpoch = makeChart(charts, {
    title: "Per epoch: loss and accuracy", xLabel: "epoch", series: EPOCH_SERIES, scales: ACC_SCALE, integerX: true,
  });
  perEpoch.figure.id = "chart-epochs";
  const within = makeChart(charts, {
    title: "Within epochs: running loss and train accuracy (collected while this page is open)", xLabel: "epoch",
    series: [{ label: "loss", scale: "y" }, { label: "train accuracy", scale: "acc" }], scales: ACC_SCALE,
  });
  within.figure.id = "chart-progress";

  let job = null;
  let historyShown = -1;
  const points = [[], [], []];
  let stopped = false;
  let stream = null;
  let poll = null;
  let resultShownFor = null;

  function addProgress(p) {
    if (!p || !p.batches) return;
    const x = p.epoch - 1 + p.batch / p.batches;
    const last = points[0][points[0].length - 1];
    if (last !== undefined && x <= last) return;
    points[0].push(x);
    points[1].push(p.loss ?? null);
    points[2].push(p.train_acc ?? null);
    within.update(points);
  }

  function show(record) {
    job = record;
    status.replaceChildren(statusBadge(job.status, job.cancel_requested && !TERMINAL.has(job.status) ? " (cancelling)" : ""));
    cancel.hidden = TERMINAL.has(job.status);
    cancel.disabled = !!job.cancel_requested;
    addProgress(job.progress);
    if ((job.history || []).length !== historyShown) {
      historyShown = job.history.length;
      perEpoch.update(epochData(job.history));
    }
    const last = job.history?.[job.history.length - 1];
    const p = job.params || {};
    const rows = [
      ["Status", job.status + (job.cancel_requested && !TERMINAL.has(job.status) ? " (cancel requested)" : "")],
      ["Progress", job.progress ? `epoch ${job.progress.epoch}/${job.progress.epochs}, batch ${job.progress.batch}/${job.progress.batches} (${pct(job.progress.fraction, 0)})` : "—"],
      ["Parameters", Object.entries(p).filter(([k]) => k !== "init_model").map(([k, v]) => `${k} ${v ?? "auto"}`).join(", ")],
      ["Started from", p.init_model ? el("a", { href: `#/models/${p.init_model}` }, p.init_model) : "fresh weights"],
      ["Examples/sec", last ? Math.round(last.examples_per_sec).toLocaleString() : "—"],
      ["Latest epoch", last ? `loss ${num(last.loss)}, train ${pct(last.train_acc)}, test ${pct(last.test_acc)}` : "—"],
      ["Created", when(job.created_at)],
      ["Started", when(job.started_at)],
      ["First step", when(job.first_step_at)],
      ["Finished", when(job.finished_at)],
      ["Duration", job.started_at ? duration(job.started_at, job.finished_at) : "—"],
      ["Worker", job.worker || "—"],
      ["Device", job.device || "—"],
      ["Attempts", String(job.attempts ?? 0)],
      ["Note", job.note || "—"],
      ["Error", job.error || "—"],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { fact: k } }, v)]));
    if (TERMINAL.has(job.status)) finish();
  }

  async function finish() {
    const key = `${job.status}:${job.model_id}`;
    if (resultShownFor === key) return;
    resultShownFor = key;
    stopLive();
    live.textContent = `The job ended: ${job.status}.`;
    const last = job.history?.[job.history.length - 1];
    const parts = [el("h2", { id: "job-result-title" }, "Result")];
    if (job.status === "succeeded" && job.model_id) {
      let model = null;
      try { model = await api(`/models/${job.model_id}`, { interactive: false }); } catch { /* shown below */ }
      // The accuracy of the model as stored and served (after precise BN when the job used it).
      const acc = job.final_test_acc ?? model?.final_test_acc ?? last?.test_acc;
      parts.push(el("p.big", { id: "job-final" }, `Final test accuracy ${pct(acc, 2)}`,
        job.params?.precise_bn ? " (with precise BN)" : " (moving-average BN statistics)"));
      parts.push(el("p", {}, el("a", { href: `#/models/${job.model_id}`, id: "job-model-link" }, `Model ${job.model_id}`),
        " · ", el("a", { href: `#/predict?model=${job.model_id}` }, "Predict with it")));
    } else {
      parts.push(el("p", { id: "job-final" }, job.status === "failed" ? `Failed: ${job.error || "no reason recorded"}` : `Ended ${job.status}.`));
    }
    result.replaceChildren(...parts);
    result.hidden = false;
  }

  async function fetchJob() {
    try {
      show(await api(`/jobs/${jobId}`, { interactive: false }));
      error.hidden = true;
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      if (err.status === 404) stopLive();
    }
  }

  function startPolling(why) {
    if (stopped || poll) return;
    live.textContent = `Live: polling GET /jobs/${jobId} every second (${why}).`;
    live.dataset.mode = "polling";
    poll = every(1000, fetchJob);
  }

  // An EventSource cannot send the Authorization header: where the stream refuses it (protected
  // reads) and the page has a token, it tries once more with the token as ?access_token=.
  function startStream(withToken = false) {
    let opened = false;
    const query = withToken ? `?access_token=${encodeURIComponent(getToken())}` : "";
    const source = new EventSource(`/jobs/${jobId}/events${query}`);
    stream = source;
    source.addEventListener("open", () => {
      opened = true;
      live.textContent = "Live: server-sent events.";
      live.dataset.mode = "stream";
    });
    const parse = (event) => { try { return JSON.parse(event.data); } catch { return null; } };
    source.addEventListener("progress", (event) => {
      const data = parse(event);
      if (!data || !job) return;
      if (data.job_id) return show(data);
      show({ ...job, progress: data.progress ?? data, status: data.status ?? (job.status === "queued" ? "running" : job.status) });
    });
    source.addEventListener("epoch", (event) => {
      const data = parse(event);
      if (!data || !job) return;
      if (data.job_id) return show(data);
      const epoch = data.epoch ?? data.history?.epoch;
      const entry = data.history && !Array.isArray(data.history) ? data.history : data;
      const history = (job.history || []).filter((h) => h.epoch !== epoch).concat([entry]).sort((a, b) => a.epoch - b.epoch);
      show({ ...job, history });
    });
    source.addEventListener("status", (event) => {
      const data = parse(event);
      if (!data) return;
      if (TERMINAL.has(data.status)) {
        source.close(); // the stream ends here; the final record has the model id, finish time, error
        stream = null;
        fetchJob();
      } else if (data.job_id && data.created_at) show(data);
      else if (job) show({ ...job, ...data });
    });
    source.addEventListener("error", () => {
      if (!opened && !withToken && getToken() && !stopped) {
        source.close();
        stream = null;
        startStream(true);
        return;
      }
      if (source.readyState === EventSource.CLOSED || !opened) {
        // refused (404, 401 with protected reads, ...) or gone: polling always works
        source.close();
        stream = null;
        if (!job || !TERMINAL.has(job.status)) startPolling(opened ? "the event stream closed" : "the event stream is not available");
      }
    });
  }

  function stopLive() {
    stopped = true;
    if (stream) stream.close();
    if (poll) poll.stop();
    stream = null;
    poll = null;
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      show(await api(`/jobs/${jobId}/cancel`, { method: "POST" }));
      notice(job.status === "cancelled" ? "Job cancelled." : "Cancel requested: the job stops after the current batch.");
    } catch (err) {
      notice(`Cancel failed: ${err.message}`, "error");
      cancel.disabled = false;
    }
  });

  (async () => {
    await fetchJob();
    if (stopped || (job && TERMINAL.has(job.status))) return;
    let hasStream = false;
    try { hasStream = EVENTS_PATH in (await getOpenApi()).paths; } catch { /* poll */ }
    // Where the stream is refused even so, the error handler falls back to polling, which sends the token.
    if (hasStream) startStream();
    else startPolling("this server has no event stream yet");
  })();

  return () => {
    stopLive();
    perEpoch.destroy();
    within.destroy();
  };
}
