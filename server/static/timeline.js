// Timeline: the training steps as frames (the step store is steps.js). A slider with play
// and pause chooses the step the graph and the panel show, following the newest step while
// live until the user picks another; the loss (the root's data) per step is a small curve,
// always in view, its numbers also in a "Loss" table; "compare with step j" lists and
// highlights the nodes whose data moved most between step j and the step shown.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $, el, setText } from "./dom.js";
import { formatNumber, nodeTitle } from "./render.js";

const PLAY_MS = 200; // one step per this many ms while playing
const MOVERS = 10; // nodes listed in the step diff
const LOSS_ROWS = 2000; // rows of the Loss table (the newest steps); the curve shows every step

export class Timeline {
  bindTimeline() {
    const slider = $("step-slider");
    slider.oninput = () => {
      const record = this.steps.records[Number(slider.value)];
      if (record) this.showTrainingStep(record.step);
    };
    $("steps-play").onclick = () => this.togglePlaySteps();
    $("steps-latest").onclick = () => this.showTrainingStep(null);
    $("compare-step").onchange = () => {
      const value = $("compare-step").value;
      this.compareWith(value === "" ? null : Number(value));
    };
    $("diff").onclick = (event) => this.detailsClick(event);
    $("loss-details").ontoggle = () => { this.timelineKey = null; this.requestDraw(); };
  }

  /**
   * A step was recorded (live, or a snapshot's latest): shown at once while following. A
   * snapshot's nodes already hold the newest numbers (`apply` false).
   */
  trainingStepArrived(record, apply = true) {
    this.keepPassWithStep(record);
    const shown = this.shownStep === null ? record : this.steps.record(this.shownStep);
    if (shown && (apply || this.shownStep !== null)) this.steps.show(shown, this.graph);
    if (this.shownStep !== null && !shown) this.shownStep = null; // the shown step was dropped
    this.valuesChanged(false);
  }

  // A values-only step stands for its pass too: the graph's last pass, which reached the
  // structure's nodes, takes the step's pass number (so the status bar and the stepping say
  // pass 30 at step 30, as for a viewer that joined then). `structure.pass`: the number
  // the graph's pass over the structure has.
  keepPassWithStep(record) {
    const structure = this.steps.structures.get(record.structure);
    const last = this.graph.lastPass;
    if (!structure || !last || !last.done || last.error !== undefined) return;
    if (last.pass !== record.pass && last.pass === structure.pass) this.graph.renumberLastPass(record.pass);
    if (last.pass === record.pass) structure.pass = record.pass;
  }

  /** Show step number `step` on the graph (null: the newest, and follow new ones). */
  showTrainingStep(step) {
    const steps = this.steps;
    const latest = steps.latest;
    if (!latest) return;
    if (step !== null && step >= latest.step) step = null;
    const record = step === null ? latest : steps.record(step);
    if (!record) return;
    this.shownStep = step;
    steps.show(record, this.graph);
    if (this.compareStep !== null) this.compareWith(this.compareStep);
    this.valuesChanged();
  }

  // Numbers changed on many nodes at once (the graph's shape did not: no relayout): the
  // list rows and the panel are written again on the next frame, which draws the numbers.
  valuesChanged(urgent = true) {
    this.listMarks = null; // every listed row is written again (setText skips the same)
    this.listNow = true;
    this.shownVersion = -1; // the details panel too
    this.requestDraw(urgent);
  }

  /** The Record shown on the graph, or null before the first step. */
  get shownRecord() {
    return this.shownStep === null ? this.steps.latest : this.steps.record(this.shownStep);
  }

  moveTrainingStep(by) {
    const records = this.steps.records;
    if (!records.length) return this.notice("No training step recorded yet.");
    const shown = this.shownRecord;
    let index = records.indexOf(shown) + by;
    index = Math.max(0, Math.min(records.length - 1, index));
    this.showTrainingStep(records[index].step);
  }

  togglePlaySteps(play = !this.playTimer) {
    clearInterval(this.playTimer);
    this.playTimer = null;
    if (play && this.steps.records.length) {
      if (this.shownStep === null) this.showTrainingStep(this.steps.records[0].step); // from the start
      this.playTimer = setInterval(() => {
        this.moveTrainingStep(1);
        if (this.shownStep === null) this.togglePlaySteps(false); // reached the newest
      }, PLAY_MS);
    }
    const button = $("steps-play");
    button.setAttribute("aria-pressed", String(Boolean(this.playTimer)));
    button.textContent = this.playTimer ? "❚❚ Pause" : "▶ Play";
    button.setAttribute("aria-label", this.playTimer ? "Pause the training steps" : "Play the training steps");
  }

  /** Compare the shown step with step `step`: the nodes that moved most, listed and highlighted. */
  compareWith(step) {
    this.compareStep = step;
    const section = $("diff-section");
    const from = step === null ? null : this.steps.record(step);
    const to = this.shownRecord;
    if (step === null) {
      this.moverSet = new Set();
      section.hidden = true;
      this.requestDraw();
      return;
    }
    section.hidden = false;
    if (!from || !to) {
      this.moverSet = new Set();
      $("diff").replaceChildren(el("p", { className: "hint" }, `Step ${step} is not kept.`));
      this.requestDraw();
      return;
    }
    if (from.structure !== to.structure) {
      this.moverSet = new Set();
      $("diff").replaceChildren(el("p", { className: "hint" },
        `Steps ${from.step} and ${to.step} have different graphs (structures ${from.structure} and ${to.structure}).`));
      this.requestDraw();
      return;
    }
    const movers = this.steps.movers(from, to, MOVERS);
    this.moverSet = new Set(movers.map((m) => this.steps.alias(m.id)));
    const scope = from.full && to.full ? "every node" : "the inputs and parameters (older steps keep only those)";
    const items = movers.map((m) => {
      const node = this.graph.nodes.get(m.id);
      const sign = m.delta > 0 ? "+" : "";
      const name = node ? `${nodeTitle(node)}${node.op ? ` ${node.op}` : ""}` : `#${m.id}`;
      const button = el("button", { className: "link", dataset: { goto: String(m.id) } }, name);
      return el("li", { dataset: { id: String(m.id), delta: String(m.delta) } }, button,
        el("span", { className: "change" },
          `${formatNumber(m.from)} → ${formatNumber(m.to)} (${sign}${formatNumber(m.delta)})`));
    });
    $("diff").replaceChildren(
      el("h2", {}, `Step ${from.step} → step ${to.step}: what moved most`),
      el("p", { className: "hint" }, `Data changes over ${scope}, largest first.`),
      items.length ? el("ol", { className: "links", ariaLabel: "Top movers" }, ...items)
        : el("p", { className: "hint" }, "Nothing changed."),
    );
    this.requestDraw();
  }

  /**
   * The timeline bar, redrawn when the steps or the shown step changed. It appears with
   * the second step: one backward pass (a single step) has nothing to scrub.
   */
  updateTimeline() {
    const steps = this.steps;
    const bar = $("timeline");
    bar.hidden = steps.records.length < 2;
    if (bar.hidden) return;
    const open = $("loss-details").open;
    const key = `${steps.version}|${this.shownStep}|${this.compareStep}|${open}`;
    if (key === this.timelineKey) return;
    this.timelineKey = key;
    const records = steps.records;
    const shown = this.shownRecord ?? steps.latest;
    const slider = $("step-slider");
    slider.max = String(records.length - 1);
    slider.value = String(records.indexOf(shown));
    const text = `step ${shown.step} of ${steps.latest.step}`;
    slider.setAttribute("aria-valuetext", text);
    setText($("step-text"), text + (this.shownStep === null ? " (newest)" : ""));
    $("steps-latest").disabled = this.shownStep === null;
    const { steps: numbers, loss } = steps.lossSeries();
    drawLoss($("loss-curve"), numbers, loss, shown.step, this.compareStep);
    const last = loss.length ? formatNumber(loss[loss.length - 1]) : "–";
    $("loss-curve").setAttribute("aria-label",
      `Loss over ${loss.length} steps: ${formatNumber(shown.loss)} at step ${shown.step}, ${last} at the newest`);
    $("loss-curve").dataset.points = String(loss.length);
    if (open) this.fillLossTable(numbers, loss);
  }

  fillLossTable(numbers, loss) {
    const rows = [];
    for (let i = Math.max(0, loss.length - LOSS_ROWS); i < loss.length; i++) {
      rows.push(el("tr", {}, el("td", {}, String(numbers[i])), el("td", {}, String(loss[i]))));
    }
    $("loss-table").tBodies[0].replaceChildren(...rows);
  }
}

/** The loss per step as a line, the shown step (and the compared one) marked. */
function drawLoss(canvas, steps, loss, shown, compare) {
  const ratio = devicePixelRatio || 1;
  const width = canvas.clientWidth || 240, height = canvas.clientHeight || 40;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const { low, high } = range(loss);
  if (!steps.length || low === Infinity) return;
  const first = steps[0], span = Math.max(1, steps[steps.length - 1] - first);
  const x = (step) => 2 + ((step - first) / span) * (width - 4);
  const y = (value) => height - 3 - ((value - low) / (high - low || 1)) * (height - 6);
  const mark = (step, color) => {
    ctx.fillStyle = color;
    ctx.fillRect(Math.round(x(step)) - 1, 0, 2, height);
  };
  if (compare !== null) mark(compare, "#adb5bd");
  mark(shown, "#f0a35e");
  ctx.strokeStyle = "#1c7ed6";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  for (let i = 0; i < steps.length; i++) {
    if (!Number.isFinite(loss[i])) { drawing = false; continue; } // a nan or inf loss: a gap
    if (drawing) ctx.lineTo(x(steps[i]), y(loss[i]));
    else ctx.moveTo(x(steps[i]), y(loss[i]));
    drawing = true;
  }
  ctx.stroke();
}

export function range(values) {
  let low = Infinity, high = -Infinity;
  for (const v of values) {
    if (!Number.isFinite(v)) continue;
    if (v < low) low = v;
    if (v > high) high = v;
  }
  return { low, high };
}
