// Every event is checked here before it touches the graph: a trace may come from anywhere
// (a recording someone sent, a script publishing to a hub), so the page trusts no field's
// type. `problemWith(event)` returns why an event is invalid, or null when the page may
// apply it. The rules are those of docs/protocol.md; fields the page does not know are
// ignored, as the protocol asks.

export const MAX_LABEL = 10_000; // characters of a label, a source or a session
export const MAX_NAME = 200; // characters of an op, plugin or engine name
export const MAX_PARENTS = 100_000;
export const MAX_CONST = 1_000;
export const MAX_OPS = 10_000; // entries of an ops map

const isId = (v) => Number.isSafeInteger(v) && v >= 0;
const isNumber = (v) => typeof v === "number"; // nan and inf are valid values of a node
const isText = (limit) => (v) => typeof v === "string" && v.length <= limit;
const isName = isText(MAX_NAME);
const isLabel = isText(MAX_LABEL);

// field -> [check, what it must be]
const ID = [isId, "a non-negative integer id"];
const COUNT = [isId, "a non-negative integer"];
const NUMBER = [isNumber, "a number"];
const LABEL = [isLabel, `a string of at most ${MAX_LABEL} characters`];
const NAME = [isName, `a string of at most ${MAX_NAME} characters`];
const OP = [(v) => v === null || isName(v), `nil or a string of at most ${MAX_NAME} characters`];
const PARENTS = [(v) => Array.isArray(v) && v.length <= MAX_PARENTS && v.every(isId),
  "a list of non-negative integer ids"];
const CONST = [(v) => Array.isArray(v) && v.length <= MAX_CONST && v.every(isNumber),
  "a list of numbers"];
const OPS = [isOps, `a map of at most ${MAX_OPS} op names to plugin names (strings)`];
const ROOT = [(v) => v === null || isId(v), "nil or a non-negative integer id"];

// kind -> {required fields, optional fields}; `seq` and `t` are checked for every kind.
const KINDS = {
  hello: { required: { protocol: NAME, version: NUMBER }, optional: { session: LABEL, engine: NAME, ops: OPS, pid: COUNT } },
  forward: { required: { id: ID, parents: PARENTS, data: NUMBER }, optional: { op: OP, label: LABEL, const: CONST } },
  node: { required: { id: ID, parents: PARENTS, data: NUMBER }, optional: { op: OP, label: LABEL, const: CONST, grad: NUMBER, pass: COUNT } },
  backward_begin: { required: { pass: COUNT }, optional: { root: ROOT } },
  backward: { required: { id: ID, grad: NUMBER }, optional: {} },
  backward_end: { required: {}, optional: { root: ROOT, pass: COUNT } },
  data: { required: { id: ID, data: NUMBER }, optional: {} },
  label: { required: { id: ID, label: LABEL }, optional: {} },
  dropped: { required: { count: COUNT }, optional: {} },
  snapshot_begin: { required: {}, optional: { nodes: COUNT, backward: [isPassInProgress, "a map {pass, root}"] } },
  snapshot_end: { required: {}, optional: {} },
  run: { required: { state: NAME }, optional: { source: LABEL, engine: NAME, ops: OPS } },
};

// The same rules as flat lists (this runs for every event): [field, check, what, required].
const RULES = new Map(Object.entries(KINDS).map(([kind, { required, optional }]) => {
  const rules = [
    ...Object.entries(required).map(([field, [check, what]]) => [field, check, what, true]),
    ...Object.entries(optional).map(([field, [check, what]]) => [field, check, what, false]),
  ];
  rules.hasParents = "parents" in required;
  return [kind, rules];
}));

function isOps(value) {
  if (!value || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) return false;
  const entries = Object.entries(value);
  return entries.length <= MAX_OPS && entries.every(([op, plugin]) => isName(op) && isName(plugin));
}

function isPassInProgress(value) {
  return value !== null && typeof value === "object" && isId(value.pass)
    && (value.root === undefined || value.root === null || isId(value.root));
}

/** Why `event` may not be applied (a sentence), or null when it is valid. */
export function problemWith(event) {
  if (!event || typeof event !== "object" || Array.isArray(event) || event instanceof Uint8Array) {
    return "an event must be a map";
  }
  const kind = event.type;
  if (typeof kind !== "string" || kind.length > MAX_NAME) return "an event needs a string 'type'";
  const name = `'${kind.slice(0, 40)}' event`;
  if (event.seq !== undefined && !isId(event.seq)) return `${name}: 'seq' must be a non-negative integer`;
  if (event.t !== undefined && !isNumber(event.t)) return `${name}: 't' must be a number`;
  const rules = RULES.get(kind);
  if (!rules) return null; // unknown kinds are ignored, not refused
  for (const [field, check, what, required] of rules) {
    const value = event[field];
    if (value === undefined) {
      if (required) return `${name}${at(event)}: '${field}' is missing`;
    } else if (!check(value)) {
      return `${name}${at(event)}: '${field}' must be ${what}`;
    }
  }
  if (rules.hasParents && event.parents.includes(event.id)) return `${name}${at(event)}: a node cannot be its own parent`;
  return null;
}

// "(id 12)" when the event has a valid id, so the message says which node it concerns.
function at(event) {
  return isId(event.id) ? ` (id ${event.id})` : "";
}
