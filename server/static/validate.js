// Every event is checked here before it touches the graph: a trace may come from anywhere
// (a recording someone sent, a script publishing to a hub), so the page trusts no field's
// type. `problemWith(event)` returns why an event is invalid, or null when the page may
// apply it. The rules are those of docs/protocol.md; fields the page does not know are
// ignored, as the protocol asks.

// String lengths count Unicode code points, as Python's len() does on the engine's and the
// hub's side (docs/protocol.md), not UTF-16 units: a label of 6,000 emoji is 6,000 long.
export const MAX_LABEL = 10_000; // characters of a label, a source, a session or an error
export const MAX_NAME = 200; // characters of an op, plugin or engine name
export const MAX_PARENTS = 100_000;
export const MAX_CONST = 1_000;
export const MAX_OPS = 10_000; // entries of an ops map
export const MAX_SCOPE = 1_000; // characters of a scope path ("L0/N3")

const isId = (v) => Number.isSafeInteger(v) && v >= 0;
const isNumber = (v) => typeof v === "number"; // nan and inf are valid values of a node

/** Whether string `v` has at most `limit` code points. */
export function fits(v, limit) {
  if (v.length <= limit) return true; // never fewer UTF-16 units than code points
  if (v.length > 2 * limit) return false; // never more than two units per code point
  let points = 0;
  for (const _ of v) if (++points > limit) return false; // a string iterates by code point
  return true;
}

const isText = (v, limit) => typeof v === "string" && fits(v, limit);
const isName = (v) => isText(v, MAX_NAME);
const isLabel = (v) => isText(v, MAX_LABEL);
const isScope = (v) => isText(v, MAX_SCOPE);

const ID = "a non-negative integer id";
const COUNT = "a non-negative integer";
const NUMBER = "a number";
const LABEL = `a string of at most ${MAX_LABEL} characters`;
const NAME = `a string of at most ${MAX_NAME} characters`;

// Each check returns what is wrong with one field ("'id' must be ..."), or null. Written
// out kind by kind, with plain property reads: this runs for every event of a stream.
function need(value, check, field, what) {
  if (value === undefined) return `'${field}' is missing`;
  return check(value) ? null : `'${field}' must be ${what}`;
}

function may(value, check, field, what) {
  return value === undefined || check(value) ? null : `'${field}' must be ${what}`;
}

function isParents(v) {
  if (!Array.isArray(v) || v.length > MAX_PARENTS) return false;
  for (let i = 0; i < v.length; i++) if (!isId(v[i])) return false;
  return true;
}

function isConst(v) {
  if (!Array.isArray(v) || v.length > MAX_CONST) return false;
  for (let i = 0; i < v.length; i++) if (!isNumber(v[i])) return false;
  return true;
}

const isOp = (v) => v === null || isName(v);
const isRoot = (v) => v === null || isId(v);

function isOps(value) {
  if (!value || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) return false;
  const entries = Object.entries(value);
  return entries.length <= MAX_OPS && entries.every(([op, plugin]) => isName(op) && isName(plugin));
}

function isPassInProgress(value) {
  return value !== null && typeof value === "object" && isId(value.pass)
    && (value.root === undefined || value.root === null || isId(value.root));
}

// A `forward` or a snapshot's `node`.
function nodeProblem(e) {
  return need(e.id, isId, "id", ID)
    ?? need(e.parents, isParents, "parents", "a list of non-negative integer ids")
    ?? need(e.data, isNumber, "data", NUMBER)
    ?? may(e.op, isOp, "op", `nil or ${NAME}`)
    ?? may(e.label, isLabel, "label", LABEL)
    ?? may(e.const, isConst, "const", "a list of numbers")
    ?? may(e.scope, isScope, "scope", `a string of at most ${MAX_SCOPE} characters`)
    ?? (e.parents.includes(e.id) ? "a node cannot be its own parent" : null);
}

// Steps (docs/protocol.md, "Steps"): the shape of `structure`, `step` and snapshot `history`
// maps, their binary arrays' lengths included; steps.js checks what needs the page's state.
export const MAX_STEP_ITEMS = 500_000; // n + e of a structure
const isBin = (v) => v instanceof Uint8Array;
const isPositive = (v) => Number.isSafeInteger(v) && v >= 1;
const POSITIVE = "an integer from 1";
const bins = (size) => (v) => isBin(v) && v.length % size === 0;

function structureProblem(e) {
  const problem = need(e.structure, isPositive, "structure", POSITIVE)
    ?? need(e.ids, bins(8), "ids", "a bin of uint64 ids")
    ?? need(e.offsets, bins(4), "offsets", "a bin of uint32 offsets")
    ?? need(e.inputs, bins(8), "inputs", "a bin of uint64 ids")
    ?? need(e.order, bins(4), "order", "a bin of uint32 indexes")
    ?? need(e.root, isId, "root", "an index");
  if (problem) return problem;
  const n = e.ids.length / 8;
  if (n === 0) return "a structure must have at least one node";
  if (e.offsets.length / 4 !== n) return "'offsets' must have as many items as 'ids'";
  if (n + e.inputs.length / 8 > MAX_STEP_ITEMS) return `a structure holds at most ${MAX_STEP_ITEMS} nodes and inputs`;
  if (e.order.length / 4 > n + e.inputs.length / 8) return "'order' must list each node or input at most once";
  return null;
}

const isDtype = (v) => v === "f4" || v === "f8";

function stepProblem(e) {
  const size = e.dtype === "f4" ? 4 : 8;
  return need(e.step, isPositive, "step", POSITIVE)
    ?? need(e.structure, isPositive, "structure", POSITIVE)
    ?? need(e.first, isId, "first", ID)
    ?? need(e.pass, isPositive, "pass", POSITIVE)
    ?? may(e.dtype, isDtype, "dtype", '"f4" or absent')
    ?? need(e.data, bins(size), "data", `a bin of float${8 * size} numbers`)
    ?? need(e.grad, bins(size), "grad", `a bin of float${8 * size} numbers`)
    ?? (e.data.length > MAX_STEP_ITEMS * size || e.grad.length !== e.data.length
      ? `'data' and 'grad' must hold as many numbers, at most ${MAX_STEP_ITEMS}` : null);
}

function historyProblem(e) {
  return need(e.structure, isPositive, "structure", POSITIVE)
    ?? need(e.steps, bins(8), "steps", "a bin of uint64 step numbers")
    ?? need(e.loss, bins(8), "loss", "a bin of float64 numbers")
    ?? need(e.from, isId, "from", COUNT)
    ?? need(e.data, bins(8), "data", "a bin of float64 numbers")
    ?? need(e.grad, bins(8), "grad", "a bin of float64 numbers")
    ?? (e.grad.length !== e.data.length ? "'data' and 'grad' must hold as many numbers" : null);
}

const OPS = `a map of at most ${MAX_OPS} op names to plugin names (strings)`;

const KINDS = {
  hello: (e) => need(e.protocol, isName, "protocol", NAME) ?? need(e.version, isNumber, "version", NUMBER)
    ?? may(e.session, isLabel, "session", LABEL) ?? may(e.engine, isName, "engine", NAME)
    ?? may(e.ops, isOps, "ops", OPS) ?? may(e.pid, isId, "pid", COUNT),
  forward: nodeProblem,
  node: (e) => nodeProblem(e) ?? may(e.grad, isNumber, "grad", NUMBER) ?? may(e.pass, isId, "pass", COUNT),
  backward_begin: (e) => need(e.pass, isId, "pass", COUNT) ?? may(e.root, isRoot, "root", `nil or ${ID}`),
  backward: (e) => need(e.id, isId, "id", ID) ?? need(e.grad, isNumber, "grad", NUMBER),
  backward_end: (e) => may(e.pass, isId, "pass", COUNT) ?? may(e.root, isRoot, "root", `nil or ${ID}`)
    ?? may(e.error, isLabel, "error", LABEL),
  data: (e) => need(e.id, isId, "id", ID) ?? need(e.data, isNumber, "data", NUMBER),
  label: (e) => need(e.id, isId, "id", ID) ?? need(e.label, isLabel, "label", LABEL),
  dropped: (e) => need(e.count, isId, "count", COUNT),
  snapshot_begin: (e) => may(e.nodes, isId, "nodes", COUNT)
    ?? may(e.backward, isPassInProgress, "backward", "a map {pass, root}"),
  snapshot_end: () => null,
  structure: structureProblem,
  step: stepProblem,
  history: historyProblem,
  run: (e) => need(e.state, isName, "state", NAME) ?? may(e.source, isLabel, "source", LABEL)
    ?? may(e.engine, isName, "engine", NAME) ?? may(e.ops, isOps, "ops", OPS),
};

/**
 * What is wrong with a snapshot's `last_pass` ({pass, root, steps}, docs/protocol.md) in a
 * snapshot of `nodes` nodes, or null. The pass reached each node once: `steps` lists at
 * most `nodes` distinct ids. Checked apart from its `snapshot_begin`, so that a bad one
 * loses only itself, not the snapshot.
 */
export function lastPassProblem(value, nodes) {
  if (!value || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
    return "'last_pass' must be a map {pass, root, steps}";
  }
  const steps = value.steps;
  const limit = isId(nodes) ? nodes : Infinity;
  const problem = need(value.pass, isId, "last_pass.pass", COUNT)
    ?? may(value.root, isRoot, "last_pass.root", `nil or ${ID}`)
    ?? need(steps, (v) => Array.isArray(v) && v.length <= limit && v.every(isId),
      "last_pass.steps", "a list of at most as many node ids as the snapshot has nodes");
  if (problem) return problem;
  return new Set(steps).size === steps.length ? null : "'last_pass.steps' must not list a node twice";
}

/** Why `event` may not be applied (a sentence), or null when it is valid. */
export function problemWith(event) {
  if (!event || typeof event !== "object" || Array.isArray(event) || event instanceof Uint8Array) {
    return "an event must be a map";
  }
  const kind = event.type;
  if (typeof kind !== "string" || kind.length > MAX_NAME) return "an event needs a string 'type'";
  const problem = may(event.seq, isId, "seq", COUNT) ?? may(event.t, isNumber, "t", NUMBER)
    ?? (Object.hasOwn(KINDS, kind) ? KINDS[kind](event) : null); // unknown kinds: ignored
  if (problem === null) return null;
  const at = isId(event.id) ? ` (id ${event.id})` : ""; // which node it concerns
  return `'${kind.slice(0, 40)}' event${at}: ${problem}`;
}
