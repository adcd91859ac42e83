// The viewer's model of the traced graph: nodes, their rank layout, op groups for the
// aggregate view, and the backward passes. It knows nothing about the page.
//
// Layout by rank (DESIGN.md): a node's rank is the longest path from the leaves to it, so
// leaves sit in column 0 and every node sits right of all of its inputs. A node's row is
// placed once, when it arrives, and never moves: the drawing stays still as the graph grows.

export const COLUMN_WIDTH = 230; // world units between ranks
export const ROW_HEIGHT = 68; // world units between rows of one rank

export class Graph {
  constructor() {
    this.nodes = new Map(); // id -> node
    this.order = []; // nodes in arrival order (ids increase, so a topological order)
    this.nextRow = []; // per rank: the first free row
    this.maxRank = 0;
    this.edgeCount = 0;
    this.groups = new Map(); // "rank op" -> group of the aggregate view
    this.groupsByRank = []; // per rank: its groups in arrival order
    this.groupEdges = new Map(); // "from>to" group keys -> {from, to, count}
    this.passes = []; // backward passes: {root, pass, steps: [{id, grad}], done}
    this.latest = null; // the node of the last forward event
    this.changed = new Set(); // ids whose row in the node list needs redrawing
    this.version = 0; // bumped on every change, so the page redraws only when needed
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
    this.edgeCount += parents.length;
    this.latest = node;
    this.touch(node);
    return node;
  }

  // A parent the viewer never saw (it predates the viewer and the server forgot it).
  placeholder(id) {
    const node = {
      id, op: null, parents: [], children: [], data: NaN, grad: NaN, label: "",
      const: null, bwPass: 0, bwStep: -1, placeholder: true,
    };
    this.place(node);
    this.nodes.set(id, node);
    this.order.push(node);
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
    this.addToGroup(node);
  }

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
      if (!from) continue;
      const edgeKey = `${from.key}>${key}`;
      const edge = this.groupEdges.get(edgeKey);
      if (edge) edge.count++;
      else this.groupEdges.set(edgeKey, { from, to: group, count: 1 });
    }
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
    const group = node.group;
    if (group.bwPass !== current.pass) {
      group.bwPass = current.pass;
      group.bwDone = 0;
    }
    group.bwDone++;
    this.touch(node);
  }

  endPass() {
    const current = this.lastPass;
    if (current) current.done = true;
    this.version++;
  }

  /** Nodes whose label, id ("#12") or op ("op:tanh") matches the query, in id order. */
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
    for (const node of this.order) {
      if (test(node)) {
        out.push(node);
        if (out.length >= limit) break;
      }
    }
    return out;
  }

  /**
   * The subgraph around `center`: its ancestors and descendants up to `depth` edges away,
   * at most `limit` nodes (nearest first), laid out by rank on its own.
   */
  neighbourhood(center, depth = 4, limit = 250) {
    const picked = new Map([[center.id, 0]]);
    let frontier = [center];
    for (let d = 1; d <= depth && picked.size < limit; d++) {
      const next = [];
      for (const node of frontier) {
        for (const id of [...node.parents, ...node.children]) {
          if (picked.has(id) || picked.size >= limit) continue;
          const other = this.nodes.get(id);
          if (!other) continue;
          picked.set(id, d);
          next.push(other);
        }
      }
      frontier = next;
    }
    const nodes = [...picked.keys()].sort((a, b) => a - b).map((id) => this.nodes.get(id));
    return layoutSubgraph(nodes);
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
