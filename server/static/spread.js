// A scope group over the training steps (issue 19): the spread of its parameters' gradients
// step by step, so that a layer whose gradients vanish or explode shows at a glance, and
// whether it is a dead ReLU unit (its relu nodes output 0 for every sample of the step
// shown). It reads the step store (steps.js) and the graph, and draws the group panel's
// chart; it knows nothing else of the page.
//
// A group's parameters are the inputs of the step's structure (nodes made before the step,
// used by it: what an optimizer updates) whose scope is the group or inside it: an MLP's
// parameters carry their neuron's scope ("L0/N3", opgraph/nn.py), so a neuron's are its
// weights and bias, a layer's those of its neurons.

// The five numbers of a step's spread: the min, the quartiles and the max of |grad| over the
// group's parameters.
export const SPREAD_FIELDS = ["min", "q1", "median", "q3", "max"];

const perRecord = new WeakMap(); // a step's Record -> Map(group key -> Float64Array(5) | null)
const perStructure = new WeakMap(); // a Structure -> {graph, map: group key -> input indexes}

/**
 * The spread of |grad| of `group`'s parameters at every kept step that has their grads
 * (the store keeps every input's grad for its 10,000 steps): {steps, stats, params}, stats
 * holding the five SPREAD_FIELDS of step steps[i] at 5 * i. Null when fewer than two steps
 * have any (a program with one backward pass has nothing to spread over, as the timeline).
 * A step's five numbers are worked out once (records do not change once kept).
 */
export function gradSpread(store, group, graph) {
  const steps = [], stats = [];
  let params = 0;
  for (const record of store.records) {
    const structure = store.structures.get(record.structure);
    if (!structure || !record.inputGrad.length) continue; // a step a late joiner has the loss of only
    let cached = perRecord.get(record);
    if (!cached) perRecord.set(record, (cached = new Map()));
    let five = cached.get(group.key);
    if (five === undefined) {
      const indexes = paramsOf(structure, group, graph);
      five = indexes.length ? spreadOf(record.inputGrad, indexes) : null;
      cached.set(group.key, five);
    }
    if (!five) continue;
    params = Math.max(params, paramsOf(structure, group, graph).length);
    steps.push(record.step);
    for (const value of five) stats.push(value);
  }
  return steps.length > 1 ? { steps, stats, params } : null;
}

// The indexes into a step's inputs of the parameters inside `group`, per structure and graph.
function paramsOf(structure, group, graph) {
  let byGroup = perStructure.get(structure);
  if (!byGroup || byGroup.graph !== graph) perStructure.set(structure, (byGroup = { graph, map: new Map() }));
  let indexes = byGroup.map.get(group.key);
  if (indexes) return indexes;
  const found = [];
  for (let i = 0; i < structure.e; i++) {
    const node = graph.nodes.get(structure.inputs[i]);
    if (node && inside(node.unit, group)) found.push(i);
  }
  indexes = Int32Array.from(found);
  byGroup.map.set(group.key, indexes);
  return indexes;
}

function inside(unit, group) {
  for (let g = unit; g; g = g.parent) if (g === group) return true;
  return false;
}

// min, quartiles and max of |values[i]| for i in `indexes`; quantiles interpolated
// linearly between the sorted values (position q * (n - 1), as numpy's default).
function spreadOf(values, indexes) {
  const sorted = Float64Array.from(indexes, (i) => Math.abs(values[i])).sort();
  const at = (q) => {
    const position = q * (sorted.length - 1);
    const low = Math.floor(position), high = Math.ceil(position);
    return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
  };
  return Float64Array.of(sorted[0], at(0.25), at(0.5), at(0.75), sorted[sorted.length - 1]);
}

/**
 * The dead ReLU units of the graph as it shows its numbers now (a training step's, or the
 * only ones): the units (`reluUnits`) whose every relu node outputs 0
 * (not NaN: a step whose numbers were not kept is not dead). Returns {dead: Set of group
 * keys, within: Map group key -> how many dead units it holds, itself included, signature:
 * the dead keys as one string}. `record` is the training step shown (null without steps):
 * the result is kept while it and the graph's version stay the same.
 */
export function deadUnits(graph, record) {
  const cached = graph.deadCache;
  if (cached && cached.record === record && cached.full === record?.full && cached.version === graph.version) {
    return cached.result;
  }
  const dead = new Set(), within = new Map();
  for (const [group, nodes] of reluUnits(graph)) {
    if (!nodes.every((node) => node.data === 0)) continue;
    dead.add(group.key);
    for (let g = group; g && g.parent; g = g.parent) within.set(g.key, (within.get(g.key) ?? 0) + 1);
  }
  const result = { dead, within, signature: [...dead].join("\n") };
  graph.deadCache = { record, full: record?.full, version: graph.version, result };
  return result;
}

// The ReLU units: the groups holding relu nodes and parameters (leaves) of their own, as a
// neuron does (nn.py makes its weights and bias in its scope), with those relu nodes; per
// version of the graph. A loss's hinge (relu nodes, no parameters) is not a unit: all of
// it 0 is every sample past the margin, not a dead neuron.
function reluUnits(graph) {
  const cached = graph.reluCache;
  if (cached?.version === graph.version) return cached.units;
  const units = new Map();
  for (const group of graph.scopes.byPath.values()) {
    const relus = [];
    let params = 0;
    for (const id of group.ids) {
      const node = graph.nodes.get(id);
      if (node?.op === "relu") relus.push(node);
      else if (node && !node.op && !node.placeholder) params++;
    }
    if (relus.length && params) units.set(group, relus);
  }
  graph.reluCache = { version: graph.version, units };
  return units;
}

/**
 * Draw a spread on a canvas (the group panel's chart, or a box's sparkline): the min-max
 * band light, the quartiles' band darker, the median a line, |grad| on a log scale (it spans
 * orders of magnitude); a zero sits at the bottom. `shown`: the step to mark, or null.
 */
export function drawSpread(ctx, spread, x, y, w, h, shown = null) {
  const { steps, stats } = spread;
  let low = Infinity, high = -Infinity;
  for (const value of stats) {
    if (value > 0 && value < low) low = value;
    if (value > high) high = value;
  }
  if (!(high > 0)) { low = 1e-12; high = 1; } // every grad 0: a flat line at the bottom
  if (low === high) { low /= 10; high *= 10; }
  const logLow = Math.log10(low), span = Math.log10(high) - logLow;
  const yOf = (value) => (value > 0 ? y + h - ((Math.log10(value) - logLow) / span) * h : y + h);
  const first = steps[0], last = steps[steps.length - 1];
  const xOf = (step) => (last === first ? x + w / 2 : x + ((step - first) / (last - first)) * w);
  const band = (lowField, highField, colour) => {
    ctx.beginPath();
    for (let i = 0; i < steps.length; i++) ctx.lineTo(xOf(steps[i]), yOf(stats[5 * i + highField]));
    for (let i = steps.length - 1; i >= 0; i--) ctx.lineTo(xOf(steps[i]), yOf(stats[5 * i + lowField]));
    ctx.closePath();
    ctx.fillStyle = colour;
    ctx.fill();
  };
  band(0, 4, "rgba(28, 126, 214, 0.18)");
  band(1, 3, "rgba(28, 126, 214, 0.38)");
  ctx.beginPath();
  for (let i = 0; i < steps.length; i++) ctx.lineTo(xOf(steps[i]), yOf(stats[5 * i + 2]));
  ctx.strokeStyle = "#1c7ed6";
  ctx.lineWidth = 1.5;
  ctx.stroke();
  if (shown !== null && shown >= first && shown <= last) {
    ctx.fillStyle = "#d9480f";
    ctx.fillRect(xOf(shown) - 0.75, y, 1.5, h);
  }
  return { low, high };
}
