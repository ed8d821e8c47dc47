// Small wrappers over uPlot: line charts that grow, bar charts per channel. Each chart's
// container carries data-points (the number of x values), which tests and people can read.

import uPlot from "/static/vendor/uplot/uPlot.esm.js";

export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
  "#7f7f7f", "#bcbd22"];

function width(el) {
  return Math.max(240, Math.floor(el.clientWidth || el.parentElement?.clientWidth || 480));
}

/**
 * A chart in `container` (a figure is created inside it with the title as its caption).
 * series: [{label, color?, scale?}]; scales: uPlot scales; integerX: ticks on whole numbers (epochs,
 * channels); bars: bar chart. Returns {figure, update(data), destroy()}.
 */
export function makeChart(container, { title, xLabel, series, scales = {}, axes, height = 220, bars = false, integerX = bars }) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  const plot = document.createElement("div");
  figure.append(caption, plot);
  container.append(figure);
  figure.dataset.points = "0";

  const barPaths = bars ? uPlot.paths.bars({ size: [0.7, 40] }) : null;
  const opts = {
    width: width(figure),
    height,
    scales: bars
      ? {
        x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] },
        y: { range: (u, min, max) => zeroRange(min, max) },
        ...scales,
      }
      : { x: { time: false }, ...scales },
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
    axes: axes || [
      { label: xLabel, labelSize: 20, size: 36, ...(integerX ? { incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 500] } : {}) },
      { scale: series[0]?.scale || "y", size: 56 },
      ...(series.some((s) => s.scale === "acc") && series[0]?.scale !== "acc"
        ? [{ scale: "acc", side: 1, grid: { show: false }, size: 50 }] : []),
    ],
    series: [
      { label: xLabel },
      ...series.map((s, i) => ({
        label: s.label,
        scale: s.scale || "y",
        stroke: s.color || COLORS[i % COLORS.length],
        fill: bars ? `${s.color || COLORS[i % COLORS.length]}99` : undefined,
        width: bars ? 1 : 2,
        paths: barPaths || undefined,
        points: { show: !bars, size: 5 },
        spanGaps: false,
      })),
    ],
  };
  let data = [[], ...series.map(() => [])];
  const chart = new uPlot(opts, data, plot);
  const resize = new ResizeObserver(() => chart.setSize({ width: width(figure), height }));
  resize.observe(figure);
  return {
    figure,
    update(next) {
      data = next;
      chart.setData(next);
      figure.dataset.points = String(next[0].length);
    },
    destroy() {
      resize.disconnect();
      chart.destroy();
      figure.remove();
    },
  };
}

/** A y range that includes 0, so bars grow from the axis. */
function zeroRange(min, max) {
  const low = Math.min(0, min ?? 0);
  const high = Math.max(0, max ?? 0);
  const pad = (high - low) * 0.08 || 1;
  return [low < 0 ? low - pad : 0, high > 0 ? high + pad : 0];
}

/** Per-epoch loss (left axis) and accuracies (right axis, 0..1) for one history list. */
export function epochData(history) {
  return [
    history.map((h) => h.epoch),
    history.map((h) => h.loss ?? null),
    history.map((h) => h.train_acc ?? null),
    history.map((h) => h.test_acc ?? null),
  ];
}

export const EPOCH_SERIES = [
  { label: "loss", scale: "y" },
  { label: "train accuracy", scale: "acc" },
  { label: "test accuracy", scale: "acc" },
];

export const ACC_SCALE = { acc: { range: [0, 1] } };
