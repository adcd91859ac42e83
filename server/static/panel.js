// The details panel: the selected node, scope group, op group or band, built from DOM
// nodes whose text is set as text (dom.js): a label, an op or a plugin name is never read
// as HTML, whatever a trace puts in it.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $, el, factList, linkList, sharpCanvas } from "./dom.js";
import { looseBands } from "./groups.js";
import { dataText, formatNumber, nodeTitle, opText } from "./render.js";
import { SPREAD_FIELDS, drawSpread, gradSpread } from "./spread.js";

export class Panel {
  renderDetails() {
    const panel = $("details");
    if (this.selected === null) {
      panel.replaceChildren(el("p", { className: "hint" }, "Click a node, or search, to see its details."));
      return;
    }
    if (typeof this.selected === "string") {
      return this.selected.startsWith("s:") ? this.renderScope(panel) : this.renderGroup(panel);
    }
    const node = this.graph.nodes.get(this.selected);
    if (!node) return;
    const look = this.look(node);
    const pass = this.graph.lastPass;
    const step = node.bwPass === pass?.pass && node.bwStep >= 0
      ? `step ${node.bwStep + 1} of ${pass.steps.length} in pass ${pass.pass}` : "not in the last pass";
    const kept = this.keptText(node);
    const facts = [
      ["id", "id", String(node.id)],
      ["op", "op", node.op ?? (node.placeholder ? "not seen by this viewer" : "leaf (input or parameter)")],
      node.op && ["plugin", "plugin", this.ops.get(node.op) ?? "unknown plugin"],
      node.const && ["constants", "const", node.const.map(String).join(", ")],
      kept.step && ["training step", "training-step", kept.step],
      ["data", "data", node.placeholder ? "?" : kept.missing ?? String(node.data)],
      ["grad", "grad", node.placeholder ? "?" : kept.missing ?? (look.gradShown ? String(node.grad) : "not reached yet")],
      ["rank", "rank", String(node.rank)],
      ["backward", "step", step],
    ];
    const inputs = node.parents.map((id, k) => this.nodeLink(id, `input ${k + 1}`));
    const users = node.children.slice(0, 12).map((id) => this.nodeLink(id));
    if (node.children.length > 12) users.push(el("li", {}, `… ${node.children.length - 12} more`));
    panel.replaceChildren(
      el("h2", { className: "node-title" }, nodeTitle(node)),
      factList(facts),
      ...[this.historySection(node.id)].filter(Boolean),
      ...linkList("Inputs", inputs),
      ...linkList("Used by", users),
      el("button", { dataset: { focus: String(node.id) }, title: "Show this node's neighbourhood on its own (G)" },
        "Focus on neighbourhood"),
    );
  }

  // The training step whose numbers the node shows; `missing` when that step is older
  // than the window that keeps every node's numbers (steps.js).
  keptText(node) {
    const record = this.shownRecord;
    if (!record || this.steps.records.length < 2) return {}; // one step: nothing to tell apart
    const structure = this.steps.structures.get(record.structure);
    const index = structure?.index.get(node.id);
    if (index === undefined) return {};
    const step = `${record.step} of ${this.steps.latest.step}`;
    if (index < structure.n && !record.full) {
      return { step, missing: `not kept for step ${record.step} (only the last ${this.steps.windowSteps} steps keep every node)` };
    }
    return { step };
  }

  nodeLink(id, prefix = "") {
    const node = this.graph.nodes.get(id);
    const button = el("button", { className: "link", dataset: { goto: String(id) } });
    if (prefix) button.append(el("span", { className: "muted" }, prefix), " ");
    button.append(node ? nodeTitle(node) : `#${id}`);
    if (node) button.append(` = ${dataText(node)}`);
    if (node?.op) button.append(" ", el("span", { className: "op" }, opText(node)));
    return el("li", {}, button);
  }

  // A scope group's details; its path is a trace's text, shown as text.
  renderScope(panel) {
    const group = this.graph.scopes.byPath.get(this.selected.slice(2));
    if (!group) return;
    const look = this.lookUnit({ kind: "group", key: group.key, ref: group });
    const members = group.ids.slice(0, 30).map((id) => this.nodeLink(id));
    if (group.ids.length > 30) members.push(el("li", {}, `… ${group.ids.length - 30} more`));
    const open = this.open.has(group.key);
    const spread = gradSpread(this.steps, group, this.graph);
    panel.replaceChildren(
      el("h2", { className: "group-title" }, group.path),
      factList([
        ["nodes", "count", group.count.toLocaleString("en-US")],
        ["groups", "groups", String(group.children.size)],
        ["backward", "step", `${look.reached} of ${group.count} reached in the last pass`],
        this.deadText(group),
      ].filter(Boolean)),
      ...(spread ? [spreadSection(spread, this.shownRecord?.step ?? null)] : []),
      ...(members.length ? [el("h3", {}, "Nodes"), el("ul", { className: "links" }, ...members)] : []),
      el("button", { dataset: { toggle: group.key } }, open ? "Close the group" : "Open the group"),
    );
  }

  // "dead" for a dead ReLU unit, how many it holds for a group around some.
  deadText(group) {
    const { dead, within } = this.deadUnits();
    const record = this.shownRecord;
    const when = record ? `step ${record.step}` : "the values shown";
    if (dead.has(group.key)) return ["ReLU unit", "dead", `dead: its relu nodes output 0 for every sample of ${when}`];
    const count = within.get(group.key);
    return count ? ["ReLU units", "dead", `${count} dead unit${count === 1 ? "" : "s"} inside at ${when}`] : null;
  }

  renderGroup(panel) {
    if (this.selected.startsWith("r:")) return this.renderBand(panel);
    const group = this.graph.bands().groups.get(this.selected);
    if (!group) return;
    const firstIds = [];
    for (const member of group.members) {
      firstIds.push(...member.ids.slice(0, 30 - firstIds.length));
      if (firstIds.length >= 30) break;
    }
    const members = firstIds.map((id) => this.nodeLink(id));
    if (group.count > 30) members.push(el("li", {}, `… ${group.count - 30} more`));
    panel.replaceChildren(
      el("h2", {}, `${group.op} · ${group.ranks}`),
      factList([
        ["nodes", "count", String(group.count)],
        ["plugin", "plugin", this.ops.get(group.op) ?? "–"],
        ["backward", "step", `${group.bwDone} of ${group.count} reached in the last pass`],
      ]),
      el("h3", {}, "Members"),
      el("ul", { className: "links" }, ...members),
      el("p", { className: "hint" }, "Click a member to focus on its neighbourhood."),
    );
  }

  // A band of unscoped nodes in the hierarchical overview.
  renderBand(panel) {
    const band = looseBands(this.graph).bands.get(this.selected);
    if (!band) return;
    const ids = [];
    for (const member of band.members) {
      ids.push(...member.ids.slice(0, 30 - ids.length));
      if (ids.length >= 30) break;
    }
    const members = ids.map((id) => this.nodeLink(id));
    if (band.count > 30) members.push(el("li", {}, `… ${band.count - 30} more`));
    panel.replaceChildren(
      el("h2", {}, `${band.op} · ${band.ranks} · no scope`),
      factList([
        ["nodes", "count", String(band.count)],
        ["plugin", "plugin", this.ops.get(band.op) ?? "–"],
        ["backward", "step", `${band.bwDone} of ${band.count} reached in the last pass`],
      ]),
      el("h3", {}, "Members"),
      el("ul", { className: "links" }, ...members),
    );
  }
}

const SPREAD_ROWS = 100; // rows of the panel's table: the newest steps (the chart has every one)

/**
 * The group panel's section: a line saying the spread at the step shown, the chart, and a
 * table (caption "Grad spread") of the newest SPREAD_ROWS steps, one row per step.
 */
function spreadSection(spread, shown) {
  const { steps, stats, params } = spread;
  let at = steps.length - 1; // the step shown, or the newest one before it
  if (shown !== null) while (at > 0 && steps[at] > shown) at--;
  const five = stats.slice(5 * at, 5 * at + 5);
  const [min, q1, median, q3, max] = Array.from(five, formatNumber);
  const summary = `${params} parameter${params === 1 ? "" : "s"}, step ${steps[at]}: |grad| median ${median}`
    + ` (quartiles ${q1} to ${q3}, min ${min}, max ${max})`;
  const width = 300, height = 90;
  const chart = el("canvas", { className: "history-chart spread-chart", role: "img" });
  const ctx = sharpCanvas(chart, width, height);
  const { low, high } = drawSpread(ctx, spread, 3, 4, width - 6, height - 8, shown);
  chart.setAttribute("aria-label", `|grad| of this group's ${params} parameters over ${steps.length} steps,`
    + ` from ${formatNumber(low)} to ${formatNumber(high)} (log scale): min to max, quartiles, median`);
  const rows = [];
  for (let i = Math.max(0, steps.length - SPREAD_ROWS); i < steps.length; i++) {
    rows.push(el("tr", { dataset: { step: String(steps[i]) } }, el("td", {}, String(steps[i])),
      ...SPREAD_FIELDS.map((_, k) => el("td", {}, String(stats[5 * i + k])))));
  }
  const table = el("table", { className: "history-table spread-table" },
    el("caption", {}, "Grad spread"),
    el("thead", {}, el("tr", {}, el("th", {}, "step"), ...SPREAD_FIELDS.map((field) => el("th", {}, field)))),
    el("tbody", {}, ...rows));
  return el("section", { className: "history spread" },
    el("h3", {}, "Gradient spread"),
    el("p", { className: "spread-summary" }, summary),
    chart,
    el("div", { className: "history-scroll" }, table));
}
