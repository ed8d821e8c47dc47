// DOM and formatting helpers shared by the views.

/** el("tag.class", {attr: value, onclick: fn}, ...children) */
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function pct(x, digits = 1) {
  return x === null || x === undefined ? "—" : `${(100 * x).toFixed(digits)}%`;
}

export function num(x, digits = 3) {
  return x === null || x === undefined ? "—" : Number(x).toPrecision(digits);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (d.toDateString() === new Date().toDateString()) return d.toLocaleTimeString(); // today: the time says it
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function duration(startIso, endIso) {
  if (!startIso) return "—";
  const end = endIso ? new Date(endIso) : new Date();
  let s = Math.max(0, (end - new Date(startIso)) / 1000);
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  s = Math.round(s % 60);
  if (m < 60) return `${m} min ${s} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function shortId(id) {
  return id && id.length > 10 ? id.slice(0, 8) : id;
}

export function statusBadge(status, extra = "") {
  return el(`span.badge.status-${status}`, { dataset: { status } }, status + extra);
}

/**
 * The accuracy to list for a job: once it succeeded, the served model's (final_test_acc, after
 * precise BN when it ran); before that, the last finished epoch's moving-average test accuracy,
 * else the running train accuracy. `label` says which one it is.
 */
export function jobAccuracy(job) {
  if (job.final_test_acc !== null && job.final_test_acc !== undefined) {
    return { value: job.final_test_acc, kind: "model", label: "served model", digits: 2,
      title: "test accuracy of the model as stored and served" };
  }
  const last = job.history?.[job.history.length - 1];
  if (last) {
    return { value: last.test_acc, kind: "epoch", label: `epoch ${last.epoch} test`, digits: 1,
      title: "test accuracy at the end of the last finished epoch (moving-average BN statistics)" };
  }
  if (job.progress?.train_acc !== null && job.progress?.train_acc !== undefined) {
    return { value: job.progress.train_acc, kind: "train", label: "train", digits: 1,
      title: "running train accuracy of this epoch" };
  }
  return { value: null, kind: "", label: "", digits: 1, title: "" };
}

export function notice(text, kind = "info") {
  const toast = document.getElementById("toast");
  toast.textContent = text;
  toast.className = `show ${kind}`;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { toast.className = ""; }, 6000);
}

/** A repeating task that pauses while the tab is hidden; stop() ends it. */
export function every(ms, task) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await task(); } catch (err) { console.warn(err); }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return { stop() { stopped = true; clearTimeout(timer); } };
}
