// The viewer's model of the traced graph: nodes, their rank layout, op groups for the
// aggregate view, and the backward passes. It knows nothing about the page.
//
// Layout by rank: a node's rank is the longest path from the leaves to it, so
// leaves sit in column 0 and every node sits right of all of its inputs. A node's row is
// placed once, when it arrives, and never moves: the drawing stays still as the graph grows.

export const COLUMN_WIDTH = 210; // world units between ranks (boxes are 172 wide)
export const ROW_HEIGHT = 68; // world units between rows of one rank
export const MAX_BANDS = 16; // columns of the aggregate view

export class Graph {
  constructor() {
    this.nodes = new Map(); // id -> node
    this.order = []; // nodes in arrival order (ids increase, so a topological order)
    this.nextRow = []; // per rank: the first free row
    this.maxRank = 0;
    this.edgeCount = 0;
    this.groups = new Map(); // "rank op" -> the nodes of one op in one rank
    this.groupsByRank = []; // per rank: its groups in arrival order
    this.groupEdges = new Map(); // "from>to" group keys -> {from, to, count}
    this.bandCache = null; // the overview's bands, for one version of the graph
    this.passes = []; // backward passes: {root, pass, steps: [{id, grad}], done, error?}
    this.latest = null; // the node of the last forward event
    this.changed = new Set(); // ids whose row in the node list needs redrawing
    this.version = 0; // bumped on every change, so the page redraws only when needed
    this.scopes = new ScopeTree(); // the nodes grouped by scope, for the hierarchical overview
    this.componentCount = 0; // weakly connected components: separate computations
    this.singletons = 0; // components of one node (a leaf not used yet)
  }

  get size() {
    return this.nodes.size;
  }

  /** The backward pass in progress, or the last one. */
  get lastPass() {
    return this.passes.length ? this.passes[this.passes.length - 1] : null;
  }

  /** Add a node from a `forward` or snapshot `node` map; a known id is updated in place. */
  addNode(event) {
    const known = this.nodes.get(event.id);
    if (known && !known.placeholder) {
      known.data = event.data;
      known.label = event.label ?? known.label;
      if (event.grad !== undefined) known.grad = event.grad;
      this.touch(known);
      return known;
    }
    const parents = Array.isArray(event.parents) ? event.parents : [];
    const node = known || {
      id: event.id, children: [], bwPass: 0, bwStep: -1, placeholder: false,
    };
    node.op = event.op ?? null;
    node.parents = parents;
    node.data = event.data;
    node.grad = event.grad ?? 0;
    node.label = event.label ?? "";
    node.const = Array.isArray(event.const) ? event.const : null;
    node.scope = typeof event.scope === "string" ? event.scope : "";
    if (known) { // a placeholder for a parent we had not seen becomes the real node
      node.placeholder = false;
      this.touch(node);
      return node;
    }
    for (const id of parents) {
      const parent = this.nodes.get(id) || this.placeholder(id);
      parent.children.push(node.id);
    }
    this.place(node);
    this.nodes.set(node.id, node);
    this.order.push(node);
    this.scopes.add(node, this.nodes);
    for (const id of parents) this.join(node, this.nodes.get(id));
    this.edgeCount += parents.length;
    this.latest = node;
    this.touch(node);
    return node;
  }

  // A parent the viewer never saw (it predates the viewer and the server forgot it).
  placeholder(id) {
    const node = {
      id, op: null, parents: [], children: [], data: NaN, grad: NaN, label: "",
      const: null, bwPass: 0, bwStep: -1, placeholder: true, scope: "",
    };
    this.place(node);
    this.nodes.set(id, node);
    this.order.push(node);
    this.scopes.add(node, this.nodes);
    return node;
  }

  // Rank: 1 + the largest rank among the parents. Row: as close as the free space of the
  // column allows to the mean row of the parents, so chains run straight.
  place(node) {
    let rank = 0;
    let rowSum = 0;
    let placed = 0;
    for (const id of node.parents) {
      const parent = this.nodes.get(id);
      if (!parent) continue;
      rank = Math.max(rank, parent.rank + 1);
      rowSum += parent.row;
      placed++;
    }
    const free = this.nextRow[rank] ?? 0;
    const row = placed ? Math.max(free, rowSum / placed) : free;
    node.rank = rank;
    node.row = row;
    node.x = rank * COLUMN_WIDTH;
    node.y = row * ROW_HEIGHT;
    this.nextRow[rank] = row + 1;
    this.maxRank = Math.max(this.maxRank, rank);
    node.component = node; // a component of its own until an edge joins it to another
    node.componentSize = 1;
    this.componentCount++;
    this.singletons++;
    this.addToGroup(node);
  }

  /**
   * How many separate computations the graph holds: components of two nodes or more (a
   * leaf made but not used yet is not one, so the picture does not jump while a graph is
   * being built).
   */
  get separateGraphs() {
    return this.componentCount - this.singletons;
  }

  /** The node standing for `node`'s weakly connected component (union-find, halving). */
  componentOf(node) {
    while (node.component !== node) {
      node.component = node.component.component;
      node = node.component;
    }
    return node;
  }

  join(a, b) {
    if (!b) return;
    let x = this.componentOf(a), y = this.componentOf(b);
    if (x === y) return;
    this.singletons -= (x.componentSize === 1) + (y.componentSize === 1);
    if (x.componentSize < y.componentSize) [x, y] = [y, x];
    y.component = x;
    x.componentSize += y.componentSize;
    this.componentCount--;
  }

  // The overview counts nodes by op in each rank as they arrive (constant work per node);
  // `bands()` merges ranks into at most MAX_BANDS columns when it is drawn.
  addToGroup(node) {
    const op = node.placeholder ? "(unseen)" : node.op ?? "leaf";
    const key = `${node.rank} ${op}`;
    let group = this.groups.get(key);
    if (!group) {
      group = { key, rank: node.rank, op, count: 0, ids: [], bwPass: 0, bwDone: 0 };
      this.groups.set(key, group);
      (this.groupsByRank[node.rank] ??= []).push(group);
    }
    group.count++;
    group.ids.push(node.id);
    node.group = group;
    for (const id of node.parents) {
      const from = this.nodes.get(id)?.group;
      if (!from || from === group) continue;
      const edgeKey = `${from.key}>${key}`;
      const edge = this.groupEdges.get(edgeKey);
      if (edge) edge.count++;
      else this.groupEdges.set(edgeKey, { from, to: group, count: 1 });
    }
  }

  /**
   * The overview: ranks merged into bands of 1, 2, 4, 8... ranks so that at most MAX_BANDS
   * columns remain (a summed loss makes chains thousands of ranks long), one group per op
   * in each band, and the edges between groups.
   */
  bands() {
    if (this.bandCache?.version === this.version) return this.bandCache;
    let shift = 0;
    while (this.maxRank >> shift >= MAX_BANDS) shift++;
    const pass = this.lastPass?.pass;
    const groups = new Map();
    const byBand = [];
    const bandOf = new Map(); // rank group -> its band group
    this.groupsByRank.forEach((rankGroups, rank) => {
      const band = rank >> shift;
      for (const group of rankGroups ?? []) {
        const key = `${band} ${group.op}`;
        let merged = groups.get(key);
        if (!merged) {
          const first = band << shift;
          const ranks = shift ? `ranks ${first}–${first + (1 << shift) - 1}` : `rank ${first}`;
          merged = { key, band, op: group.op, ranks, count: 0, bwDone: 0, members: [] };
          groups.set(key, merged);
          (byBand[band] ??= []).push(merged);
        }
        merged.count += group.count;
        if (group.bwPass === pass) merged.bwDone += group.bwDone;
        merged.members.push(group);
        bandOf.set(group, merged);
      }
    });
    const edges = new Map();
    for (const edge of this.groupEdges.values()) {
      const from = bandOf.get(edge.from), to = bandOf.get(edge.to);
      if (from === to) continue;
      const key = `${from.key}>${to.key}`;
      const merged = edges.get(key);
      if (merged) merged.count += edge.count;
      else edges.set(key, { from, to, count: edge.count });
    }
    this.bandCache = { version: this.version, shift, groups, byBand, edges };
    return this.bandCache;
  }

  touch(node) {
    if (this.changed.size < 5000) this.changed.add(node.id);
    this.version++;
  }

  setData(id, data) {
    const node = this.nodes.get(id);
    if (!node) return;
    node.data = data;
    this.touch(node);
  }

  setLabel(id, label) {
    const node = this.nodes.get(id);
    if (!node) return;
    node.label = label;
    this.touch(node);
  }

  beginPass(root, pass) {
    this.passes.push({ root, pass, steps: [], done: false });
    if (this.passes.length > 20) this.passes.shift(); // keep the recent ones only
    this.version++;
  }

  /**
   * A pass that ended before this viewer joined, from a snapshot's `last_pass`: its steps
   * in order, each with the grad its node holds now (that pass's, as no pass came since).
   */
  passFromSnapshot({ pass, root, steps }) {
    const withGrads = steps.map((id) => ({ id, grad: this.nodes.get(id)?.grad ?? 0 }));
    return { root: root ?? null, pass, steps: withGrads, done: true };
  }

  /**
   * The last pass stands for a later one over the same nodes, numbered `pass` (a
   * values-only training step: steps.js): its number changes, what it reached stays. The
   * version stays too: the graph's shape and looks did not change.
   */
  renumberLastPass(pass) {
    const last = this.lastPass;
    const old = last.pass;
    last.pass = pass;
    for (const node of this.order) if (node.bwPass === old) node.bwPass = pass;
    for (const group of this.groups.values()) if (group.bwPass === old) group.bwPass = pass;
    for (const unit of this.scopes.byPath.values()) if (unit.bwPass === old) unit.bwPass = pass;
    for (const unit of this.scopes.loose.values()) if (unit.bwPass === old) unit.bwPass = pass;
  }

  /** A node's backward step ran: it now holds its grad for this pass. */
  backwardStep(id, grad) {
    let current = this.lastPass;
    if (!current || current.done) { // joined in the middle of a pass
      this.beginPass(null, (current?.pass ?? 0) + 1);
      current = this.lastPass;
    }
    const node = this.nodes.get(id);
    current.steps.push({ id, grad });
    if (!node) return;
    node.grad = grad;
    node.bwPass = current.pass;
    node.bwStep = current.steps.length - 1;
    this.countReached(node, current.pass);
    this.touch(node);
  }

  // A node's grad arrived: its overview group, and its scope and every enclosing scope,
  // count one more node reached by pass `pass` (how a group lights up as a pass goes).
  countReached(node, pass) {
    reached(node.group, pass);
    for (let unit = node.unit; unit && unit !== this.scopes.root; unit = unit.parent) reached(unit, pass);
  }

  /** The pass ended; `error` says why it failed (its grads were rolled back just before). */
  endPass(error) {
    const current = this.lastPass;
    if (current) {
      current.done = true;
      if (error !== undefined) current.error = error;
    }
    this.version++;
  }

  /**
   * A new graph of the newest `keep` nodes and the inputs they use (the parameters of a
   * training loop stay): how the page bounds its memory when a long run streams millions.
   */
  compacted(keep) {
    const ids = new Set();
    for (const node of this.order.slice(-keep)) {
      if (node.placeholder) continue;
      ids.add(node.id);
      for (const id of node.parents) ids.add(id);
    }
    const fresh = new Graph();
    fresh.passes = this.passes;
    for (const id of [...ids].sort((a, b) => a - b)) {
      const node = this.nodes.get(id);
      if (!node || node.placeholder) continue;
      const copy = fresh.addNode(node);
      copy.bwPass = node.bwPass;
      copy.bwStep = node.bwStep;
    }
    const pass = fresh.lastPass?.pass; // count the backward steps of the copies too
    for (const node of fresh.order) {
      if (node.bwPass !== pass || pass === undefined) continue;
      fresh.countReached(node, pass);
    }
    return fresh;
  }

  /**
   * Nodes whose label, id ("#12") or op ("op:tanh") matches the query: labels equal to the
   * query first, then those that contain it, each in id order.
   */
  search(query, limit = Infinity) {
    const q = query.trim().toLowerCase();
    const out = [];
    if (!q) return out;
    let test;
    if (/^#\d+$/.test(q)) {
      const id = Number(q.slice(1));
      test = (node) => node.id === id;
    } else if (q.startsWith("op:")) {
      const op = q.slice(3).trim();
      test = (node) => (node.op ?? "leaf").toLowerCase() === op;
    } else {
      test = (node) => node.label.toLowerCase().includes(q);
    }
    const exact = [];
    for (const node of this.order) {
      if (!test(node)) continue;
      if (node.label.toLowerCase() === q) exact.push(node);
      else out.push(node);
      if (exact.length + out.length >= limit) break;
    }
    return exact.concat(out);
  }

  /**
   * The subgraph around `center`, laid out by rank on its own: how it was computed (its
   * ancestors, up to `up` edges back) and where it goes (descendants, up to `down` edges on,
   * at most `fan` users per node so that a parameter used a thousand times does not flood
   * the view); at most `limit` nodes, nearest first.
   */
  neighbourhood(center, { up = 12, down = 3, fan = 6, limit = 250 } = {}) {
    const picked = new Set([center.id]);
    const walk = (depth, next, cap) => {
      let frontier = [center];
      for (let d = 1; d <= depth && frontier.length && picked.size < cap; d++) {
        const reached = [];
        for (const node of frontier) {
          for (const id of next(node)) {
            if (picked.size >= cap) break;
            const other = this.nodes.get(id);
            if (!other || picked.has(id)) continue;
            picked.add(id);
            reached.push(other);
          }
        }
        frontier = reached;
      }
    };
    walk(down, (node) => node.children.slice(0, node === center ? 2 * fan : fan), limit / 4);
    walk(up, (node) => node.parents, limit);
    const nodes = [...picked].sort((a, b) => a - b).map((id) => this.nodes.get(id));
    return layoutSubgraph(nodes);
  }
}

function reached(group, pass) {
  if (group.bwPass !== pass) {
    group.bwPass = pass;
    group.bwDone = 0;
  }
  group.bwDone++;
}

/**
 * The nodes grouped by their scope path ("L0/N3": layer 0, neuron 3), a tree whose groups
 * hold sub-groups and nodes, kept as nodes arrive (constant work per node). Nodes without a
 * scope are counted by rank and op instead (`loose`), as the plain overview does. `links`
 * counts the edges between two different groups, which is all the overview needs to draw
 * them aggregated at any depth.
 */
export class ScopeTree {
  constructor() {
    this.nextIndex = 0;
    this.root = this.makeGroup(null, "");
    this.byPath = new Map([["", this.root]]); // path -> group
    this.byScope = new Map(); // a scope string as sent -> its group (the same path may be spelled twice)
    this.loose = new Map(); // "rank op" -> the unscoped nodes of one op in one rank
    this.links = new Map(); // "i>j" unit indices -> {from, to, count}
    this.scoped = 0; // nodes with a scope
  }

  makeGroup(parent, name) {
    const path = parent && parent.path ? `${parent.path}/${name}` : name;
    return {
      kind: "scope", index: this.nextIndex++, key: `s:${path}`, name, path, parent,
      depth: parent ? parent.depth + 1 : 0, children: new Map(), ids: [], count: 0,
      firstId: Infinity, bwPass: 0, bwDone: 0,
    };
  }

  /** The group of a scope path, made (with its missing ancestors) on first use. */
  groupOf(scope) {
    let group = this.byScope.get(scope);
    if (group) return group;
    group = this.root;
    for (const name of scope.split("/")) {
      if (!name) continue; // "a//b" and "/a/" are "a/b" and "a"
      let child = group.children.get(name);
      if (!child) {
        child = this.makeGroup(group, name);
        group.children.set(name, child);
        this.byPath.set(child.path, child);
      }
      group = child;
    }
    if (this.byScope.size < 100_000) this.byScope.set(scope, group);
    return group;
  }

  add(node, nodes) {
    let unit = node.scope ? this.groupOf(node.scope) : this.root;
    if (unit !== this.root) {
      unit.ids.push(node.id);
      for (let group = unit; group; group = group.parent) {
        group.count++;
        if (node.id < group.firstId) group.firstId = node.id;
      }
      this.scoped++;
    } else {
      const op = node.placeholder ? "(unseen)" : node.op ?? "leaf";
      const key = `${node.rank} ${op}`;
      unit = this.loose.get(key);
      if (!unit) {
        unit = { kind: "loose", index: this.nextIndex++, rank: node.rank, op, count: 0, ids: [],
          parent: null, bwPass: 0, bwDone: 0 };
        this.loose.set(key, unit);
      }
      unit.count++;
      unit.ids.push(node.id);
    }
    node.unit = unit;
    for (const id of node.parents) {
      const from = nodes.get(id)?.unit;
      if (!from || from === unit) continue;
      const key = `${from.index}>${unit.index}`;
      const link = this.links.get(key);
      if (link) link.count++;
      else this.links.set(key, { from, to: unit, count: 1 });
    }
  }

  /** Groups whose path contains `query` (case-insensitive), shallow ones first. */
  search(query, limit = 200) {
    const q = query.trim().toLowerCase();
    const out = [];
    if (!q) return out;
    for (const group of this.byPath.values()) {
      if (group !== this.root && group.path.toLowerCase().includes(q)) out.push(group);
    }
    out.sort((a, b) => a.depth - b.depth || a.firstId - b.firstId);
    return out.slice(0, limit);
  }
}

/** Positions for a subset of nodes, laid out by rank among themselves. */
export function layoutSubgraph(nodes) {
  const inside = new Set(nodes.map((n) => n.id));
  const rank = new Map();
  const row = new Map();
  const nextRow = [];
  const positions = new Map();
  for (const node of nodes) { // id order: inputs before the nodes that use them
    let r = 0, rowSum = 0, placed = 0;
    for (const id of node.parents) {
      if (!inside.has(id)) continue;
      r = Math.max(r, rank.get(id) + 1);
      rowSum += row.get(id);
      placed++;
    }
    const free = nextRow[r] ?? 0;
    const y = placed ? Math.max(free, rowSum / placed) : free;
    nextRow[r] = y + 1;
    rank.set(node.id, r);
    row.set(node.id, y);
    positions.set(node.id, { x: r * COLUMN_WIDTH, y: y * ROW_HEIGHT });
  }
  return { nodes, positions, inside };
}
