// History: a node's data and grad by training step in the details panel, a small chart and
// a table (caption "History") with one row per kept step: every step the store keeps for
// an input or a parameter, the window of recent steps for a node made in the step. The
// table is kept between renders of the panel and grows by the new rows only, so a
// parameter's 10,000 steps are not written again at every step.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { el, sharpCanvas } from "./dom.js";
import { range } from "./timeline.js";

export class History {
  /** The History of node `id` (a section element), or null when no step names it. */
  historySection(id) {
    if (this.steps.records.length < 2) return null; // one step: its numbers are the facts above
    const series = this.steps.series(id);
    if (!series.steps.length) return null;
    let view = this.historyView;
    const first = series.steps[0];
    if (view && view.id === id && view.graph === this.graph && first > view.first) dropRows(view, first);
    if (!view || view.id !== id || view.graph !== this.graph || view.first !== first
      || view.rows > series.steps.length) {
      view = this.historyView = makeView(id, this.graph, first);
    }
    appendRows(view, series);
    view.table.dataset.rows = String(series.steps.length);
    drawHistory(view.chart, series, this.shownRecord?.step ?? null);
    view.chart.setAttribute("aria-label", `Data and grad of this node over ${series.steps.length} steps`);
    return view.section;
  }
}

function makeView(id, graph, first) {
  const chart = el("canvas", { className: "history-chart", role: "img" });
  const body = el("tbody");
  const table = el("table", { className: "history-table" },
    el("caption", {}, "History"),
    el("thead", {}, el("tr", {}, el("th", {}, "step"), el("th", {}, "data"), el("th", {}, "grad"))),
    body);
  const section = el("section", { className: "history" },
    el("p", { className: "legend-line" }, el("i", { className: "swatch data-line" }), "data ",
      el("i", { className: "swatch grad-line" }), "grad"),
    chart,
    el("div", { className: "history-scroll" }, table));
  return { id, graph, first, chart, table, body, section, rows: 0, last: -Infinity };
}

// The oldest steps left the store (10,000 steps, or the window of a step's node): their
// rows go, the others stay.
function dropRows(view, first) {
  const body = view.body;
  while (body.firstChild && Number(body.firstChild.dataset.step) < first) {
    body.firstChild.remove();
    view.rows--;
  }
  view.first = first;
}

// The rows of the steps not listed yet (the series only grows at its end between renders;
// a series that lost its first steps is rebuilt by historySection).
function appendRows(view, { steps, data, grad }) {
  const fragment = document.createDocumentFragment();
  for (let i = view.rows; i < steps.length; i++) {
    const row = el("tr", { dataset: { step: String(steps[i]) } },
      el("td", {}, String(steps[i])), el("td", {}, String(data[i])), el("td", {}, String(grad[i])));
    fragment.append(row);
  }
  view.body.append(fragment);
  view.rows = steps.length;
}

/** Data (blue) and grad (orange) by step, each on its own scale; the shown step marked. */
function drawHistory(canvas, { steps, data, grad }, shown) {
  const width = 300, height = 90;
  const ctx = sharpCanvas(canvas, width, height);
  ctx.clearRect(0, 0, width, height);
  const first = steps[0], span = Math.max(1, steps[steps.length - 1] - first);
  const x = (step) => 3 + ((step - first) / span) * (width - 6);
  if (shown !== null && shown >= first) {
    ctx.fillStyle = "#f0a35e";
    ctx.fillRect(Math.round(x(shown)) - 1, 0, 2, height);
  }
  line(ctx, steps, data, x, height, "#1c7ed6");
  line(ctx, steps, grad, x, height, "#d9480f");
}

function line(ctx, steps, values, x, height, color) {
  const { low, high } = range(values);
  if (low === Infinity) return;
  const y = (v) => height - 4 - ((v - low) / (high - low || 1)) * (height - 8);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  for (let i = 0; i < steps.length; i++) {
    if (!Number.isFinite(values[i])) { drawing = false; continue; }
    if (drawing) ctx.lineTo(x(steps[i]), y(values[i]));
    else ctx.moveTo(x(steps[i]), y(values[i]));
    drawing = true;
  }
  if (steps.length === 1 && Number.isFinite(values[0])) ctx.fillRect(x(steps[0]) - 1, y(values[0]) - 1, 3, 3);
  ctx.stroke();
}
