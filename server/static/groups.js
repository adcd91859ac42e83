// The hierarchical overview: which groups of the scope tree are shown (open groups show
// what they hold), the edges between what is shown (aggregated, with counts), and the
// layout of each open group, computed in a Web Worker (layout-worker.js) so that the page
// never freezes. Also the detail view's layout of separate components.

import { MAX_BANDS, layoutSubgraph } from "./graph.js";

export const UNIT_W = 172; // a closed group or a node, in world units
export const UNIT_H = 56;
export const FRAME_HEADER = 44; // an open group's title bar, in world units
export const FRAME_PAD = 14; // around an open group's content
const COMPONENT_GAP = 120; // world units between separate computations
const SLICE_WORK = 2000; // units of work between two yields of a sliced generator
const SLICE_MS = 12; // a slice of sliced work runs this long at most, then lets the page draw

/**
 * The unscoped nodes in bands of ranks (as the plain overview merges ranks so that at most
 * MAX_BANDS columns remain), one group per op in each band, and per weakly connected
 * component when the graph has several (separate computations stay apart). `bandOf(node)`
 * is the key of an unscoped node's band.
 */
export function looseBands(graph) {
  const cached = graph.looseBandCache;
  if (cached?.version === graph.version) return cached;
  let shift = 0;
  while (graph.maxRank >> shift >= MAX_BANDS) shift++;
  const pass = graph.lastPass?.pass;
  const split = graph.separateGraphs > 1;
  const bands = new Map();
  const of = new Map(); // loose rank group (or, split, node id) -> its band
  const bandFor = (loose, component) => {
    const band = loose.rank >> shift;
    const key = split ? `r:${component}:${band} ${loose.op}` : `r:${band} ${loose.op}`;
    let merged = bands.get(key);
    if (!merged) {
      const first = band << shift;
      const ranks = shift ? `ranks ${first}–${first + (1 << shift) - 1}` : `rank ${first}`;
      merged = { kind: "band", key, band, op: loose.op, name: loose.op, ranks, count: 0, bwDone: 0,
        members: [], firstId: Infinity };
      bands.set(key, merged);
    }
    return merged;
  };
  for (const loose of graph.scopes.loose.values()) {
    if (!split) {
      const merged = bandFor(loose, 0);
      merged.count += loose.count;
      if (loose.bwPass === pass) merged.bwDone += loose.bwDone;
      merged.firstId = Math.min(merged.firstId, loose.ids[0]);
      merged.members.push(loose);
      of.set(loose, merged);
      continue;
    }
    for (const id of loose.ids) { // one by one: the nodes of a rank may be in several components
      const node = graph.nodes.get(id);
      const merged = bandFor(loose, graph.componentOf(node).id);
      merged.count++;
      if (pass !== undefined && node.bwPass === pass) merged.bwDone++;
      merged.firstId = Math.min(merged.firstId, id);
      if (merged.members.at(-1)?.loose !== loose) merged.members.push({ loose, ids: [] });
      merged.members.at(-1).ids.push(id);
      of.set(id, merged);
    }
  }
  const bandOf = split ? (node) => of.get(node.id) : (node) => of.get(node.unit);
  graph.looseBandCache = { version: graph.version, bands, bandOf, split };
  return graph.looseBandCache;
}

/**
 * What the overview shows with the groups of `open` (keys) opened: every shown unit (a
 * group, a band of unscoped nodes, or a node of an open group), the edges between them with
 * counts, and for the root and each open group the description the layout worker lays out.
 * A generator that yields every SLICE_WORK units of work and returns the description: the
 * page runs it a slice at a time between frames (`Slices`), so an open group of 20,000 nodes
 * is never described in one task of a tenth of a second or more.
 */
export function* describing(graph, open) {
  const tree = graph.scopes;
  const { bands, bandOf, split } = looseBands(graph);
  const units = new Map(); // key -> {key, kind, ref, container (a group), first}
  const containers = [tree.root]; // the root and the open groups shown, parents first
  const addUnit = (key, kind, ref, container, first) => units.set(key, { key, kind, ref, container, first });
  let work = 0;
  for (const band of bands.values()) addUnit(band.key, "band", band, tree.root, band.firstId);
  function* visit(group) {
    for (const child of group.children.values()) {
      addUnit(child.key, "group", child, group, child.firstId);
      if (open.has(child.key)) { containers.push(child); yield* visit(child); }
      if (++work % SLICE_WORK === 0) yield;
    }
    if (group === tree.root) return;
    for (const id of group.ids) {
      addUnit(`n:${id}`, "node", graph.nodes.get(id), group, id);
      if (++work % SLICE_WORK === 0) yield;
    }
  }
  yield* visit(tree.root);

  // The shown unit standing for a scope group: its outermost closed group, the group itself
  // included (null when it and every group around it are open: its nodes are shown).
  const shownScope = (group) => {
    let shown = null;
    for (let g = group; g && g.parent; g = g.parent) if (!open.has(g.key)) shown = g.key;
    return shown;
  };
  // (A node that arrived while the description is made, a slice at a time, may have no band
  // yet: its edges wait for the next description, which its arrival asks for.)
  const shownOf = (node) => {
    const unit = node.unit;
    if (unit.kind === "loose") return bandOf(node)?.key ?? null;
    return shownScope(unit) ?? `n:${node.id}`;
  };
  const edges = new Edges();
  const addEdge = (from, to, count) => {
    if (from !== null && to !== null && from !== to && units.has(from) && units.has(to)) edges.add(from, to, count);
  };
  // Edges between groups come from the tree's counts; those with an end in an open group
  // (whose nodes are shown) from the nodes of the open groups, each edge counted once.
  // Split by component, a rank group of unscoped nodes has no single band: edges that
  // touch unscoped nodes are then counted from those nodes.
  for (const link of tree.links.values()) {
    if (++work % SLICE_WORK === 0) yield;
    if (split && (link.from.kind === "loose" || link.to.kind === "loose")) continue;
    const from = link.from.kind === "loose" ? shownOf(graph.nodes.get(link.from.ids[0])) : shownScope(link.from);
    const to = link.to.kind === "loose" ? shownOf(graph.nodes.get(link.to.ids[0])) : shownScope(link.to);
    addEdge(from, to, link.count);
  }
  if (split) {
    for (const loose of tree.loose.values()) {
      for (const id of loose.ids) {
        if (++work % SLICE_WORK === 0) yield;
        const node = graph.nodes.get(id);
        const key = shownOf(node);
        if (key === null) continue;
        for (const parent of node.parents) {
          const other = graph.nodes.get(parent);
          if (other) addEdge(shownOf(other), key, 1);
        }
        for (const child of node.children) { // into scoped nodes shown as a group
          const other = graph.nodes.get(child);
          if (!other || other.unit.kind === "loose") continue;
          const to = shownOf(other);
          if (to !== null && !to.startsWith("n:")) addEdge(key, to, 1);
        }
      }
    }
  }
  for (const group of containers) {
    if (group === tree.root) continue;
    for (const id of group.ids) {
      if (++work % SLICE_WORK === 0) yield;
      const node = graph.nodes.get(id);
      const key = `n:${id}`;
      for (const parent of node.parents) {
        const other = graph.nodes.get(parent);
        if (other) addEdge(shownOf(other), key, 1);
      }
      for (const child of node.children) {
        const other = graph.nodes.get(child);
        if (!other) continue;
        if (split && other.unit.kind === "loose") continue; // counted from the unscoped node
        const to = shownOf(other);
        if (to !== null && !to.startsWith("n:")) addEdge(key, to, 1); // node to node: counted by the child
      }
    }
  }
  const requests = yield* layoutRequests(units, edges.list, containers, open);
  return { units, edges: edges.list, containers, bands, requests, open };
}

// For each container (deepest first, so the worker knows an open group's size before it
// places it): its units and the edges among them, an edge between units of two containers
// standing for an edge between the units that hold them in their lowest common container.
function* layoutRequests(units, edges, containers, open) {
  const byContainer = new Map(containers.map((c) => [c, { units: [], index: new Map(), lifted: false, ends: [] }]));
  let work = 0;
  for (const unit of units.values()) {
    byContainer.get(unit.container).units.push(unit);
    if (++work % SLICE_WORK === 0) yield;
  }
  const lift = (unit) => units.get(unit.container.key);
  for (const edge of edges) {
    if (++work % SLICE_WORK === 0) yield;
    let a = units.get(edge.from), b = units.get(edge.to);
    const direct = a.container === b.container;
    while (a.container !== b.container) {
      if (a.container.depth >= b.container.depth) a = lift(a);
      else b = lift(b);
    }
    if (a === b) continue;
    const entry = byContainer.get(a.container);
    entry.ends.push(a.key, b.key, edge.count);
    if (!direct) entry.lifted = true;
  }
  const requests = [];
  for (const container of [...containers].reverse()) {
    const entry = byContainer.get(container);
    entry.units.sort((a, b) => a.first - b.first);
    yield;
    entry.units.forEach((unit, i) => entry.index.set(unit.key, i));
    const pairs = [];
    for (const { from, to, count } of containerEdges(entry)) pairs.push(entry.index.get(from), entry.index.get(to), count);
    yield;
    requests.push({
      key: container.key,
      units: entry.units.map((unit) => ({
        key: unit.key, open: unit.kind === "group" && open.has(unit.key),
      })),
      edges: pairs,
    });
  }
  return requests;
}

// A container's edges, each pair of units once. `edges` holds each pair once already, so
// only edges lifted from deeper containers (two may lift to one pair) need adding up: a
// view with no open group (100,000 top groups) skips a map of 100,000 edges.
function containerEdges({ ends, lifted }) {
  const merged = lifted ? new Edges() : null;
  const list = [];
  for (let i = 0; i < ends.length; i += 3) {
    if (merged) merged.add(ends[i], ends[i + 1], ends[i + 2]);
    else list.push({ from: ends[i], to: ends[i + 1], count: ends[i + 2] });
  }
  return merged ? merged.list : list;
}

// Edges between unit keys with counts (keys are untrusted text: no separator is safe, so
// a map per source).
class Edges {
  constructor() {
    this.bySource = new Map();
    this.list = [];
  }
  add(from, to, count) {
    let targets = this.bySource.get(from);
    if (!targets) this.bySource.set(from, (targets = new Map()));
    const edge = targets.get(to);
    if (edge) { edge.count += count; return; }
    const fresh = { from, to, count };
    targets.set(to, fresh);
    this.list.push(fresh);
  }
}

/**
 * Runs a generator a slice of SLICE_MS at a time, each slice a task of its own, so that the
 * page draws and answers input in between; `done(value)` gets what it returned, `failed()`
 * is called if it threw (the error is logged, not thrown: the job's owner starts over).
 * `cancel()` drops it (a newer job replaced it).
 */
export class Slices {
  constructor(generator, done, failed) {
    this.generator = generator;
    this.done = done;
    this.failed = failed;
    this.cancelled = false;
    this.work = 0; // ms spent in its slices, for the figures of docs/viewer.md
    setTimeout(() => this.slice(), 0);
  }

  slice() {
    if (this.cancelled) return;
    const start = performance.now();
    let step;
    try {
      do step = this.generator.next();
      while (!step.done && performance.now() - start < SLICE_MS);
    } catch (error) {
      console.error("opgraph viewer: laying out the overview failed:", error);
      this.cancelled = true;
      this.failed();
      return;
    }
    this.work += performance.now() - start;
    if (step.done) this.done(step.value);
    else setTimeout(() => this.slice(), 0);
  }

  cancel() {
    this.cancelled = true;
  }
}

/** Where the layout worker's script is: beside this file, or (a notebook widget) a URL made of
 * its bundled code (widget.js). */
export const layoutWorker = { url: null };

/** Asks layout-worker.js for layouts, one request at a time; the newest one wins. */
export class LayoutClient {
  constructor(onLayout) {
    this.onLayout = onLayout;
    this.worker = null; // started with the first request (most graphs never need it)
    this.busy = false;
    this.next = null;
    this.seq = 0;
  }

  start() {
    const url = layoutWorker.url ?? new URL("./layout-worker.js", import.meta.url);
    this.worker = new Worker(url, { type: "module" });
    // Busy until the page has taken the layout in (`release`): it prepares it in slices.
    this.worker.onmessage = (message) => {
      const seq = this.seq;
      this.onLayout(message.data, this.context, () => {
        if (seq !== this.seq || !this.busy) return; // a failed worker was started again since
        this.busy = false;
        this.postNext();
      });
    };
    // A worker that failed (or could not load) is started again for the next request.
    this.worker.onerror = (event) => {
      console.error(`opgraph viewer: the overview's layout worker failed: ${event.message ?? "it did not load"}`);
      this.worker.terminate();
      this.worker = null;
      this.busy = false;
    };
  }

  /**
   * Lay out `request`; `context` comes back with the layout (what it was made from), and a
   * function to call once the layout is taken in.
   */
  post(request, context) {
    this.next = [request, context];
    if (!this.busy) this.postNext();
  }

  postNext() {
    if (!this.next) return;
    const [request, context] = this.next;
    this.next = null;
    if (!this.worker) this.start();
    this.busy = true;
    this.context = context;
    this.worker.postMessage({ ...request, seq: ++this.seq });
  }
}

/**
 * The detail view's positions when the graph has separate components (separate requests,
 * separate passes): each laid out by rank on its own, then packed in rows, left to right,
 * never merged into one column. null when there is one component (the graph's own layout).
 */
export function componentLayout(graph) {
  if (graph.separateGraphs <= 1) return null;
  const members = new Map(); // component root -> its nodes in arrival order
  for (const node of graph.order) {
    const root = graph.componentOf(node);
    let list = members.get(root);
    if (!list) members.set(root, (list = []));
    list.push(node);
  }
  const parts = [];
  for (const nodes of members.values()) {
    nodes.sort((a, b) => a.id - b.id);
    const sub = layoutSubgraph(nodes);
    let right = 0, bottom = 0;
    for (const p of sub.positions.values()) {
      right = Math.max(right, p.x + UNIT_W);
      bottom = Math.max(bottom, p.y + UNIT_H);
    }
    parts.push({ positions: sub.positions, w: right, h: bottom });
  }
  const placed = pack(parts);
  const positions = new Map();
  placed.forEach(({ x, y }, i) => {
    for (const [id, p] of parts[i].positions) positions.set(id, { x: x + p.x, y: y + p.y });
  });
  return positions;
}

/**
 * Places boxes {w, h} in rows ("shelves"), in order, each row at most about as wide as
 * the square of their total area: separate things side by side and stacked, never one
 * long column nor one long row.
 */
export function pack(parts, gap = COMPONENT_GAP) {
  let area = 0, widest = 0;
  for (const part of parts) {
    area += (part.w + gap) * (part.h + gap);
    widest = Math.max(widest, part.w);
  }
  const rowWidth = Math.max(widest, Math.sqrt(area) * 1.4);
  const out = [];
  let x = 0, y = 0, rowHeight = 0;
  for (const part of parts) {
    if (x > 0 && x + part.w > rowWidth) { x = 0; y += rowHeight + gap; rowHeight = 0; }
    out.push({ x, y });
    x += part.w + gap;
    rowHeight = Math.max(rowHeight, part.h);
  }
  return out;
}
