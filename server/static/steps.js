// The step store: a training run as frames (docs/protocol.md, "Steps: `structure` and
// `step`"). It knows nothing about the page; the viewer keeps one (`viewer.steps`) and
// feeds it the `structure`, `step` and snapshot `history` maps, already checked by
// validate.js for their shape; the store checks what needs its state (known structures and
// ids, the numbering) and decodes the binary arrays.
//
// API (for the timeline, the panel and the group views):
//   new StepStore({ historySteps = 10_000, windowSteps = 100 })
//   store.structureProblem(event, inSnapshot) / store.addStructure(event)
//       why a `structure` map is invalid, or null; then keep it. Returns the Structure.
//       Its ids must not be above the highest id announced (a stream can be endless: a
//       node the page dropped is still "known"). At most MAX_STRUCTURES structures and
//       MAX_STRUCTURE_ITEMS nodes and inputs in all are kept, the least recently used
//       dropped first (never the current one); a `step` of a dropped one is skipped
//       (counted in store.skipped), not kept.
//   store.stepProblem(event, inSnapshot) / store.addStep(event) -> the step's Record
//   store.historyProblem(event) / store.addHistory(event)   a snapshot's `history` (of a
//                                 structure the page does not have: the loss only)
//   store.noteId(id)              an id used by a `forward`/`node` (a step's nodes are new)
//   store.alias(id)               the graph's id for an id of the latest step's nodes
//                                 (first + offsets[i] -> the structure's ids[i]); others as is
//   store.records                 Record[] oldest first, at most historySteps:
//       { step, structure, pass, loss, inputData: Float64Array(e), inputGrad: Float64Array(e),
//         data: Float64Array(n + e) | null, grad: ... | null }  (data/grad: nodes then
//       inputs, kept only for the newest windowSteps records: `record.full`)
//   store.latest                  the newest Record (or null); store.current its Structure
//   store.record(step)            the Record of step number `step`, or null
//   store.structures              Map number -> Structure:
//       { number, n, e, ids: Float64Array(n), offsets: Uint32Array(n), inputs: Float64Array(e),
//         order: Uint32Array, root, first (the latest step's first id), index: Map id -> i }
//       index i < n: the structure's node i; i >= n: input i - n
//   store.nodesFor(structure, graph)   the graph's node objects by index (cached per graph)
//   store.show(record, graph)     write a record's numbers onto the graph's nodes (a few ms
//                                 for 65,000 nodes; graph.version is left alone, so nothing
//                                 is laid out again); a record out of the window writes the
//                                 inputs and marks the step's nodes NaN
//   store.series(id)              { steps, data, grad } of one node over the kept records
//                                 (an input: every record; a step's node: the window)
//   store.lossSeries()            { steps: Float64Array, loss: Float64Array }
//   store.movers(a, b, limit)     the nodes whose data moved most from Record a to Record b
//   store.bytes                   the memory its arrays take, for the status and the docs
//
// Binary arrays are little-endian (the protocol's order). The page reads them through
// typed arrays when the host is little-endian (every browser host opgraph knows) and
// through a DataView otherwise.

export const HISTORY_STEPS = 10_000;
export const WINDOW_STEPS = 100;
export const MAX_ITEMS = 500_000; // n + e of one structure (docs/protocol.md)
export const MAX_STRUCTURES = 1_000; // as a hub keeps (docs/protocol.md, "Hub memory")
export const MAX_STRUCTURE_ITEMS = 2_000_000; // nodes and inputs of all kept structures
const MAX_ID = Number.MAX_SAFE_INTEGER;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// --- binary arrays ----------------------------------------------------------------------

// A bin's bytes at offset 0 of a buffer of their own, so a typed array can view them
// aligned (msgpack.js already gives such copies; a foreign Uint8Array may not be one).
function aligned(bin) {
  return bin.byteOffset % 8 === 0 ? bin : bin.slice();
}

/** uint32 little-endian items of a bin. */
export function u4(bin) {
  const count = bin.length >> 2;
  if (LITTLE_ENDIAN) return new Uint32Array(aligned(bin).buffer, aligned(bin).byteOffset, count);
  const view = new DataView(bin.buffer, bin.byteOffset, bin.length);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = view.getUint32(4 * i, true);
  return out;
}

/** uint64 little-endian ids of a bin as numbers, or null if one is above 2^53 - 1. */
export function u8(bin) {
  const words = u4(bin);
  const out = new Float64Array(words.length >> 1);
  for (let i = 0; i < out.length; i++) {
    const high = words[2 * i + 1];
    if (high >= 0x200000) return null; // 2^53 and above: not exact in a JavaScript number
    out[i] = high * 4294967296 + words[2 * i];
  }
  return out;
}

/** float64 (or float32 when `dtype` is "f4") little-endian numbers of a bin, as float64. */
export function floats(bin, dtype) {
  const size = dtype === "f4" ? 4 : 8;
  const count = Math.floor(bin.length / size);
  if (LITTLE_ENDIAN) {
    const own = aligned(bin);
    if (size === 8) return new Float64Array(own.buffer, own.byteOffset, count);
    return Float64Array.from(new Float32Array(own.buffer, own.byteOffset, count));
  }
  const view = new DataView(bin.buffer, bin.byteOffset, bin.length);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = size === 8 ? view.getFloat64(8 * i, true) : view.getFloat32(4 * i, true);
  return out;
}

// --- the store --------------------------------------------------------------------------

export class StepStore {
  constructor({ historySteps = HISTORY_STEPS, windowSteps = WINDOW_STEPS } = {}) {
    this.historySteps = historySteps;
    this.windowSteps = windowSteps;
    this.structures = new Map(); // number -> Structure
    this.records = []; // Record, oldest first
    this.latest = null;
    this.current = null; // the latest step's structure
    this.lastStructure = 0; // the number of the last structure defined live
    this.lastStep = 0; // the number of the last step (kept or skipped)
    this.items = 0; // nodes and inputs of the kept structures
    this.skipped = 0; // steps of a structure no longer kept
    this.lastPass = 0; // the pass of the last step (or backward_begin, via notePass)
    this.maxId = -1; // the highest node id used so far
    this.justDefined = null; // a structure whose defining step has not come yet
    this.bytes = 0;
    this.version = 0; // bumped on every change, so views redraw only when needed
  }

  noteId(id) {
    if (id > this.maxId) this.maxId = id;
  }

  notePass(pass) {
    if (pass > this.lastPass) this.lastPass = pass;
  }

  /** The graph's id for `id` when it names a node of the latest step, else `id`. */
  alias(id) {
    const s = this.current;
    if (!s || id < s.first || s.first === s.ids[0]) return id;
    const offset = id - s.first;
    const offsets = s.offsets;
    let low = 0, high = s.n - 1;
    while (low <= high) { // offsets increase strictly: binary search
      const mid = (low + high) >> 1;
      if (offsets[mid] === offset) return s.ids[mid];
      if (offsets[mid] < offset) low = mid + 1;
      else high = mid - 1;
    }
    return id;
  }

  // --- structure ---

  /** Why a (shape-checked) `structure` map cannot be kept, or null. */
  structureProblem(event, inSnapshot = false) {
    if (!inSnapshot && event.structure !== this.lastStructure + 1) {
      return `'structure' must be ${this.lastStructure + 1} (one more than the previous structure's)`;
    }
    const ids = u8(event.ids), inputs = u8(event.inputs);
    if (!ids || !inputs) return "'ids' and 'inputs' must be ids of at most 2^53 - 1";
    const offsets = u4(event.offsets), order = u4(event.order);
    const n = ids.length, total = n + inputs.length;
    if (offsets[0] !== 0) return "'offsets[0]' must be 0";
    for (let i = 1; i < n; i++) {
      if (offsets[i] <= offsets[i - 1]) return "'offsets' must increase";
      if (ids[i] <= ids[i - 1]) return "'ids' must increase";
    }
    // Known nodes: none above the highest id announced (ids increase, so the last is the top).
    if (ids[n - 1] > this.maxId) return `'ids' names node ${ids[n - 1]}, which was never announced`;
    for (let i = 0; i < inputs.length; i++) {
      if (inputs[i] > this.maxId) return `'inputs' names node ${inputs[i]}, which was never announced`;
    }
    const seen = new Uint8Array(total);
    for (let i = 0; i < order.length; i++) {
      const k = order[i];
      if (k >= total) return `'order' index ${k} is not below ${total}`;
      if (seen[k]) return `'order' lists index ${k} twice`;
      seen[k] = 1;
    }
    if (event.root >= total) return `'root' must be an index below ${total}`;
    this.decoded = { event, ids, inputs, offsets, order }; // so addStructure decodes once
    return null;
  }

  addStructure(event) {
    const d = this.decoded?.event === event ? this.decoded : null;
    this.decoded = null;
    const ids = d?.ids ?? u8(event.ids), inputs = d?.inputs ?? u8(event.inputs);
    const n = ids.length, e = inputs.length;
    const index = new Map();
    for (let i = 0; i < n; i++) index.set(ids[i], i);
    for (let i = 0; i < e; i++) if (!index.has(inputs[i])) index.set(inputs[i], n + i);
    const structure = {
      number: event.structure, n, e, ids, inputs, index, root: event.root,
      offsets: d?.offsets ?? u4(event.offsets), order: d?.order ?? u4(event.order),
      first: ids[0], nodes: null, nodesGraph: null,
    };
    this.forget(this.structures.get(structure.number));
    this.structures.set(structure.number, structure);
    this.bytes += structureBytes(structure);
    this.items += n + e;
    this.bound(structure);
    this.lastStructure = Math.max(this.lastStructure, structure.number);
    this.justDefined = structure;
    for (let i = 0; i < n; i++) this.noteId(ids[i]);
    this.version++;
    return structure;
  }

  forget(structure) {
    if (!structure) return;
    this.structures.delete(structure.number);
    this.bytes -= structureBytes(structure);
    this.items -= structure.n + structure.e;
  }

  // At most MAX_STRUCTURES structures and MAX_STRUCTURE_ITEMS items: the least recently
  // used go first (a Map iterates in insertion order; a used one is moved to its end).
  bound(keep) {
    for (const structure of this.structures.values()) {
      if (this.structures.size <= MAX_STRUCTURES && this.items <= MAX_STRUCTURE_ITEMS) break;
      if (structure !== keep && structure !== this.current) this.forget(structure);
    }
  }

  used(structure) {
    this.structures.delete(structure.number);
    this.structures.set(structure.number, structure);
  }

  // --- step ---

  /** Why a (shape-checked) `step` map cannot be kept, or null. */
  stepProblem(event, inSnapshot = false) {
    const structure = this.structures.get(event.structure);
    if (!structure) {
      return event.structure <= this.lastStructure && !inSnapshot ? null // dropped: addStep skips it
        : `'structure' ${event.structure} was never defined`;
    }
    const size = event.dtype === "f4" ? 4 : 8;
    const bytes = (structure.n + structure.e) * size;
    if (event.data.length !== bytes || event.grad.length !== bytes) {
      return `'data' and 'grad' must hold ${structure.n + structure.e} numbers of ${size} bytes`;
    }
    if (event.first + structure.offsets[structure.n - 1] > MAX_ID) return "'first' + the last offset is above 2^53 - 1";
    if (inSnapshot) return null;
    const last = this.lastStep;
    if (last && event.step !== last + 1) return `'step' must be ${last + 1}`;
    if (this.justDefined === structure) { // the step that defined it: its nodes were announced
      if (event.first !== structure.ids[0]) return "'first' must be the first id of the structure's step";
      if (event.pass > this.lastPass) return `'pass' must be a pass sent before (at most ${this.lastPass})`;
      return null;
    }
    if (event.first <= this.maxId) return `'first' must be above every id used before (${this.maxId})`;
    if (this.lastPass && event.pass !== this.lastPass + 1) return `'pass' must be ${this.lastPass + 1}`;
    return null;
  }

  addStep(event) {
    const structure = this.structures.get(event.structure);
    this.justDefined = null;
    this.lastStep = Math.max(this.lastStep, event.step);
    this.notePass(event.pass);
    if (!structure) { // a structure dropped to bound memory: the step's numbers cannot be read
      this.skipped++;
      return null;
    }
    this.used(structure);
    const data = floats(event.data, event.dtype), grad = floats(event.grad, event.dtype);
    const n = structure.n;
    const record = {
      step: event.step, structure: structure.number, pass: event.pass, loss: data[structure.root],
      inputData: data.slice(n), inputGrad: grad.slice(n), data, grad, full: true,
    };
    structure.first = event.first;
    this.noteId(event.first + structure.offsets[n - 1]);
    this.current = structure;
    this.insert(record);
    this.latest = this.records[this.records.length - 1];
    this.version++;
    return record;
  }

  // Records stay in step order: a snapshot's step may replace one this viewer had.
  insert(record) {
    const records = this.records;
    let at = records.length;
    while (at > 0 && records[at - 1].step >= record.step) at--;
    if (records[at]?.step === record.step) this.drop(records.splice(at, 1)[0]);
    records.splice(at, 0, record);
    this.bytes += recordBytes(record);
    while (records.length > this.historySteps) this.drop(records.shift());
    // Every node's numbers only for the newest windowSteps records.
    const old = records.length - 1 - this.windowSteps;
    if (old >= 0 && records[old].full) {
      this.bytes -= recordBytes(records[old]);
      records[old].data = records[old].grad = null;
      records[old].full = false;
      this.bytes += recordBytes(records[old]);
    }
  }

  drop(record) {
    this.bytes -= recordBytes(record);
  }

  /** The Record of step number `step`, or null (binary search: records are in step order). */
  record(step) {
    const records = this.records;
    let low = 0, high = records.length - 1;
    while (low <= high) {
      const mid = (low + high) >> 1;
      const s = records[mid].step;
      if (s === step) return records[mid];
      if (s < step) low = mid + 1;
      else high = mid - 1;
    }
    return null;
  }

  // --- history (a snapshot) ---

  /** Why a (shape-checked) snapshot `history` map cannot be used, or null. */
  historyProblem(event) {
    const structure = this.structures.get(event.structure); // absent: the loss is still used
    const steps = u8(event.steps);
    if (!steps) return "'steps' must be integers of at most 2^53 - 1";
    const h = steps.length;
    if (event.loss.length !== 8 * h) return `'loss' must hold ${h} numbers`;
    if (event.from > h) return `'from' must be at most ${h}`;
    for (let i = 1; i < h; i++) if (steps[i] <= steps[i - 1]) return "'steps' must increase";
    if (!structure) return null;
    const rows = (h - event.from) * structure.e * 8;
    if (event.data.length !== rows || event.grad.length !== rows) {
      return `'data' and 'grad' must hold ${h - event.from} rows of ${structure.e} numbers`;
    }
    return null;
  }

  /** Fill the records a late joiner missed: the loss of each kept step, and the inputs'
   * numbers of those of the current structure; records this viewer has are kept. */
  addHistory(event) {
    const structure = this.structures.get(event.structure) ?? null; // null: the loss only
    const steps = u8(event.steps), loss = floats(event.loss);
    const data = floats(event.data), grad = floats(event.grad);
    const e = structure?.e ?? 0;
    const records = steps.length > this.historySteps ? this.historySteps : steps.length;
    for (let i = steps.length - records; i < steps.length; i++) {
      if (this.record(steps[i])) continue;
      const row = i - event.from;
      const own = row >= 0 && structure !== null;
      this.insert({
        step: steps[i], structure: own ? structure.number : 0, pass: 0, loss: loss[i],
        inputData: own ? data.slice(row * e, row * e + e) : new Float64Array(0),
        inputGrad: own ? grad.slice(row * e, row * e + e) : new Float64Array(0),
        data: null, grad: null, full: false,
      });
    }
    this.latest = this.records[this.records.length - 1] ?? null;
    if (steps.length) this.lastStep = Math.max(this.lastStep, steps[steps.length - 1]);
    this.version++;
  }

  // --- reading ---

  /** The graph's node objects by structure index (nodes, then inputs); null where missing. */
  nodesFor(structure, graph) {
    if (structure.nodesGraph === graph && structure.nodesVersion === graph.size) return structure.nodes;
    const nodes = new Array(structure.n + structure.e);
    for (let i = 0; i < structure.n; i++) nodes[i] = graph.nodes.get(structure.ids[i]) ?? null;
    for (let i = 0; i < structure.e; i++) nodes[structure.n + i] = graph.nodes.get(structure.inputs[i]) ?? null;
    structure.nodes = nodes;
    structure.nodesGraph = graph;
    structure.nodesVersion = graph.size; // nodes added since (a placeholder replaced) recheck
    return nodes;
  }

  /** Write a record's numbers on the graph's nodes; returns whether every node got its own. */
  show(record, graph) {
    const structure = this.structures.get(record.structure);
    if (!structure) return false;
    const nodes = this.nodesFor(structure, graph);
    const n = structure.n;
    if (record.full) {
      const { data, grad } = record;
      for (let i = 0; i < nodes.length; i++) {
        const node = nodes[i];
        if (node) { node.data = data[i]; node.grad = grad[i]; }
      }
    } else {
      for (let i = 0; i < n; i++) {
        const node = nodes[i];
        if (node) { node.data = NaN; node.grad = NaN; }
      }
      const { inputData, inputGrad } = record;
      for (let i = 0; i < inputData.length; i++) {
        const node = nodes[n + i];
        if (node) { node.data = inputData[i]; node.grad = inputGrad[i]; }
      }
    }
    // graph.version stays: it says the graph's shape changed, which would lay it out again.
    return record.full;
  }

  /** One node's numbers over the kept records: every record for an input, the window for a step's node. */
  series(id) {
    const steps = [], data = [], grad = [];
    let structure = null, index = -1;
    for (const record of this.records) {
      if (structure?.number !== record.structure) {
        structure = this.structures.get(record.structure) ?? null;
        index = structure?.index.get(id) ?? -1;
      }
      if (index < 0) continue;
      if (index >= structure.n && record.inputData.length) {
        steps.push(record.step);
        data.push(record.inputData[index - structure.n]);
        grad.push(record.inputGrad[index - structure.n]);
      } else if (record.full) {
        steps.push(record.step);
        data.push(record.data[index]);
        grad.push(record.grad[index]);
      }
    }
    return { steps, data, grad };
  }

  lossSeries() {
    const steps = new Float64Array(this.records.length), loss = new Float64Array(this.records.length);
    this.records.forEach((record, i) => { steps[i] = record.step; loss[i] = record.loss; });
    return { steps, loss };
  }

  /**
   * The nodes whose data moved most from record `a` to record `b` (of one structure): every
   * node when both are in the window, else the inputs. [{ index, id, from, to, delta, grad }]
   * by |delta| descending, at most `limit`.
   */
  movers(a, b, limit = 10) {
    if (!a || !b || a.structure !== b.structure) return [];
    const structure = this.structures.get(a.structure);
    if (!structure) return [];
    const full = a.full && b.full;
    const from = full ? a.data : a.inputData, to = full ? b.data : b.inputData;
    const gradTo = full ? b.grad : b.inputGrad;
    const base = full ? 0 : structure.n;
    const top = []; // kept sorted, at most `limit`: one pass over 65,000 nodes, no big sort
    for (let i = 0; i < from.length; i++) {
      const delta = to[i] - from[i];
      const size = Math.abs(delta);
      if (!(size > 0)) continue;
      if (top.length === limit && size <= Math.abs(top[limit - 1].delta)) continue;
      const index = base + i;
      const id = index < structure.n ? structure.ids[index] : structure.inputs[index - structure.n];
      let at = top.length;
      while (at > 0 && Math.abs(top[at - 1].delta) < size) at--;
      top.splice(at, 0, { index, id, from: from[i], to: to[i], delta, grad: gradTo[i] });
      if (top.length > limit) top.pop();
    }
    return top;
  }
}

function structureBytes(s) {
  return 8 * s.n + 4 * s.n + 8 * s.e + 4 * s.order.length + 64 * (s.n + s.e); // the arrays and the index
}

function recordBytes(r) {
  return 8 * (r.inputData.length + r.inputGrad.length) + (r.full ? 8 * (r.data.length + r.grad.length) : 0) + 100;
}
