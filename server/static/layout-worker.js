// The hierarchical overview's layout, off the page's thread (a module Web Worker). The page
// sends, for the root and each open group (deepest first), its units and the edges among
// them; this lays out each group on its own (units in columns by the longest path along
// the edges, separate components packed side by side and stacked) and sends back every
// unit's box in world units. A group whose content did not change keeps its layout.

import { FRAME_HEADER as HEADER, FRAME_PAD as PAD, UNIT_H, UNIT_W, pack } from "./groups.js";

const COLUMN_GAP = 64;
const ROW_GAP = 16;
const WRAP_UNITS = 40; // a column of more units is wrapped into sub-columns
const ASPECT = 1.6; // width over height of a component with wrapped columns: about a screen's
const WRAP_GAP = 40; // between sub-columns: room for the bus of a bundle of edges (render.js)
const cache = new Map(); // group key -> {signature, layout}

self.onmessage = (message) => {
  const { seq, requests } = message.data;
  const started = performance.now();
  const layouts = new Map(); // group key -> {w, h, boxes: [x, y, w, h] per unit, flat}
  for (const request of requests) {
    const sizes = sizesOf(request.units, layouts);
    const signature = signatureOf(request, sizes);
    let layout = cache.get(request.key);
    if (!layout || layout.signature !== signature) {
      layout = { signature, ...layoutGroup(sizes, request.edges) };
      cache.set(request.key, layout);
    }
    layouts.set(request.key, layout);
  }
  // Absolute boxes, from the root down: an open group's content sits inside its box.
  const byKey = new Map(requests.map((request) => [request.key, request]));
  let total = 0;
  for (const request of requests) total += request.units.length;
  const keys = [], boxes = new Float64Array(4 * total); // handed over, not copied
  const place = (request, left, top) => {
    const layout = layouts.get(request.key);
    request.units.forEach((unit, i) => {
      const x = left + layout.boxes[4 * i], y = top + layout.boxes[4 * i + 1];
      boxes.set([x, y, layout.boxes[4 * i + 2], layout.boxes[4 * i + 3]], 4 * keys.length);
      keys.push(unit.key);
      if (unit.open && byKey.has(unit.key)) place(byKey.get(unit.key), x + PAD, y + HEADER);
    });
  };
  const root = requests[requests.length - 1];
  if (root) place(root, 0, 0);
  const rootLayout = root ? layouts.get(root.key) : { w: UNIT_W, h: UNIT_H };
  const placed = boxes.slice(0, 4 * keys.length);
  self.postMessage({ seq, keys, boxes: placed, w: rootLayout.w, h: rootLayout.h, ms: performance.now() - started },
    [placed.buffer]);
};

// Each unit's [w, h], flat: a closed group or a node is one unit, an open group's box holds
// its laid-out content (laid out before it: requests come deepest first).
function sizesOf(units, layouts) {
  const sizes = new Float64Array(2 * units.length);
  units.forEach((unit, i) => {
    const inner = unit.open ? layouts.get(unit.key) : null;
    sizes[2 * i] = inner ? inner.w + 2 * PAD : UNIT_W;
    sizes[2 * i + 1] = inner ? inner.h + HEADER + PAD : UNIT_H;
  });
  return sizes;
}

function signatureOf(request, sizes) {
  let edgeSum = 0;
  for (let i = 2; i < request.edges.length; i += 3) edgeSum += request.edges[i];
  const units = request.units;
  let opened = "";
  units.forEach((unit, i) => { if (unit.open) opened += `${i}:${sizes[2 * i]}x${sizes[2 * i + 1]}`; });
  return `${units.length}|${request.edges.length}|${edgeSum}|${units[0]?.key}|${units[units.length - 1]?.key}|${opened}`;
}

/**
 * Boxes [x, y, w, h] (flat) for units of the given sizes, and the size of the whole. Linear
 * in units and edges, but for one sort per column: adjacency in flat arrays, no scan of
 * all units or edges per unit, so 100,000 groups are laid out in a fraction of a second.
 */
function layoutGroup(sizes, edges) {
  const n = sizes.length / 2;
  const graph = adjacency(n, edges);
  const parent = new Int32Array(n); // union-find: the separate components
  for (let i = 0; i < n; i++) parent[i] = i;
  const find = (i) => { while (parent[i] !== i) i = parent[i] = parent[parent[i]]; return i; };
  for (let a = 0; a < n; a++) {
    for (let k = graph.outStart[a]; k < graph.outStart[a + 1]; k++) parent[find(a)] = find(graph.outputs[k]);
  }
  // Each component's units in index order, components in the order of their first unit.
  const members = new Map();
  for (let i = 0; i < n; i++) {
    const root = find(i);
    let list = members.get(root);
    if (!list) members.set(root, (list = []));
    list.push(i);
  }
  const boxes = new Float64Array(4 * n);
  const state = { rank: new Int32Array(n), row: new Float64Array(n), hasRow: new Uint8Array(n),
    sortKey: new Float64Array(n), waiting: new Int32Array(n), done: new Uint8Array(n) };
  const parts = [];
  for (const list of members.values()) parts.push(layoutComponent(list, sizes, graph, state, boxes));
  const placed = pack(parts);
  let w = 0, h = 0;
  parts.forEach((part, i) => {
    const { x, y } = placed[i];
    for (const unit of part.units) {
      boxes[4 * unit] += x;
      boxes[4 * unit + 1] += y;
    }
    w = Math.max(w, x + part.w);
    h = Math.max(h, y + part.h);
  });
  return { boxes, w, h };
}

// Inputs and outputs of each unit in compressed rows: unit i's outputs are
// outputs[outStart[i] .. outStart[i + 1]), its inputs likewise. Self-edges and edges
// naming no unit are left out.
function adjacency(n, edges) {
  const outStart = new Int32Array(n + 1), inStart = new Int32Array(n + 1);
  const valid = (a, b) => Number.isInteger(a) && Number.isInteger(b) && a >= 0 && b >= 0 && a < n && b < n && a !== b;
  for (let k = 0; k < edges.length; k += 3) {
    const a = edges[k], b = edges[k + 1];
    if (!valid(a, b)) continue;
    outStart[a + 1]++;
    inStart[b + 1]++;
  }
  for (let i = 0; i < n; i++) { outStart[i + 1] += outStart[i]; inStart[i + 1] += inStart[i]; }
  const outputs = new Int32Array(outStart[n]), inputs = new Int32Array(inStart[n]);
  const outFill = outStart.slice(0, n), inFill = inStart.slice(0, n);
  for (let k = 0; k < edges.length; k += 3) {
    const a = edges[k], b = edges[k + 1];
    if (!valid(a, b)) continue;
    outputs[outFill[a]++] = b;
    inputs[inFill[b]++] = a;
  }
  return { outStart, outputs, inStart, inputs };
}

// One component: each unit's column is the longest path to it from units with no input
// (Kahn's order; a cycle between groups is broken at its earliest unit), and units of a
// column are ordered by the mean row of their inputs, so chains run straight.
function layoutComponent(list, sizes, graph, state, boxes) {
  const order = kahnOrder(list, graph, state);
  const { inStart, inputs } = graph;
  const { rank, row, hasRow, sortKey } = state;
  // The units of each column, in Kahn's order (a counting sort by rank).
  let columns = 0;
  for (const i of order) columns = Math.max(columns, rank[i] + 1);
  const start = new Int32Array(columns + 1);
  for (const i of order) start[rank[i] + 1]++;
  for (let c = 0; c < columns; c++) start[c + 1] += start[c];
  const fill = start.slice(0, columns), byColumn = new Int32Array(order.length);
  for (const i of order) byColumn[fill[rank[i]]++] = i;
  const meanRow = (i) => { // the mean row of the unit's inputs already placed
    let sum = 0, count = 0;
    for (let k = inStart[i]; k < inStart[i + 1]; k++) {
      if (hasRow[inputs[k]]) { sum += row[inputs[k]]; count++; }
    }
    return count ? sum / count : i;
  };
  const sorted = [];
  for (let c = 0; c < columns; c++) {
    let column = byColumn.subarray(start[c], start[c + 1]);
    if (column.length > 1) {
      for (const i of column) sortKey[i] = meanRow(i);
      column = Array.from(column).sort((a, b) => sortKey[a] - sortKey[b] || a - b);
    }
    column.forEach((i, k) => { row[i] = k; hasRow[i] = 1; });
    sorted.push(column);
  }
  const wrap = wrapHeight(sorted, sizes);
  let x = 0, height = 0;
  for (const column of sorted) {
    const [width, bottom] = placeColumn(column, sizes, x, wrap, boxes);
    height = Math.max(height, bottom);
    x += width + COLUMN_GAP;
  }
  return { units: list, w: Math.max(0, x - COLUMN_GAP), h: height };
}

// Kahn's order of a component's units, and each unit's rank (the longest path to it),
// in waves; a cycle is broken at its earliest unit not yet placed (`cursor` only moves
// forward, so the breaks cost one pass over the units in all).
function kahnOrder(list, graph, state) {
  const { outStart, outputs, inStart, inputs } = graph;
  const { rank, waiting, done } = state;
  const order = [];
  let ready = [];
  for (const i of list) {
    waiting[i] = inStart[i + 1] - inStart[i];
    if (waiting[i] === 0) ready.push(i);
  }
  let cursor = 0;
  while (order.length < list.length) {
    if (!ready.length) {
      while (done[list[cursor]]) cursor++;
      ready = [list[cursor]];
    }
    const next = [];
    for (const i of ready) {
      if (done[i]) continue;
      done[i] = 1;
      order.push(i);
      let r = 0;
      for (let k = inStart[i]; k < inStart[i + 1]; k++) {
        const j = inputs[k];
        if (done[j] && rank[j] + 1 > r) r = rank[j] + 1;
      }
      rank[i] = r;
      for (let k = outStart[i]; k < outStart[i + 1]; k++) {
        if (--waiting[outputs[k]] === 0) next.push(outputs[k]);
      }
    }
    ready = next;
  }
  return order;
}

// The height at which the component's tall columns are wrapped into sub-columns: the one
// that makes the whole about ASPECT times as wide as it is tall, so that an open group of
// 20,000 nodes fills a screen rather than being a strip (each column a square block made a
// row of blocks, a 6:1 strip, for a neuron of 100 samples by 6 steps). The width for a wrap
// height only shrinks as the height grows, so a bisection finds it; never less than
// WRAP_UNITS units (a short column stays one column), Infinity when no column is taller.
function wrapHeight(columns, sizes) {
  let tallest = 0;
  for (const column of columns) {
    let total = 0;
    for (const i of column) total += sizes[2 * i + 1] + ROW_GAP;
    tallest = Math.max(tallest, total - ROW_GAP);
  }
  let low = WRAP_UNITS * (UNIT_H + ROW_GAP);
  if (tallest <= low) return Infinity;
  let high = tallest;
  if (widthAt(columns, sizes, low) <= ASPECT * low) return low;
  for (let k = 0; k < 24 && high - low > UNIT_H; k++) {
    const middle = (low + high) / 2;
    if (widthAt(columns, sizes, middle) > ASPECT * middle) low = middle;
    else high = middle;
  }
  return high;
}

// The width of the columns wrapped at height `wrap` (as placeColumn places them).
function widthAt(columns, sizes, wrap) {
  let x = 0;
  for (const column of columns) {
    let left = 0, y = 0, width = 0;
    for (const i of column) {
      const w = sizes[2 * i], h = sizes[2 * i + 1];
      if (y > 0 && y + h > wrap) { left += width + WRAP_GAP; y = 0; width = 0; }
      y += h + ROW_GAP;
      width = Math.max(width, w);
    }
    x += left + width + COLUMN_GAP;
  }
  return x - COLUMN_GAP;
}

// A column's units top to bottom from `x`, wrapped into sub-columns `wrap` high. Returns the
// block's width and height.
function placeColumn(units, sizes, x, wrap, boxes) {
  let left = x, y = 0, width = 0, bottom = 0;
  for (const i of units) {
    const w = sizes[2 * i], h = sizes[2 * i + 1];
    if (y > 0 && y + h > wrap) { left += width + WRAP_GAP; y = 0; width = 0; }
    boxes.set([left, y, w, h], 4 * i);
    y += h + ROW_GAP;
    width = Math.max(width, w);
    bottom = Math.max(bottom, y - ROW_GAP);
  }
  return [left + width - x, bottom];
}
