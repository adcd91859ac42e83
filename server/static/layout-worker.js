// The hierarchical overview's layout, off the page's thread (a module Web Worker). The page
// sends, for the root and each open group (deepest first), its units and the edges among
// them; this lays out each group on its own (units in columns by the longest path along
// the edges, separate components packed side by side and stacked) and sends back every
// unit's box in world units. A group whose content did not change keeps its layout.

import { FRAME_HEADER as HEADER, FRAME_PAD as PAD, UNIT_H, UNIT_W, pack } from "./groups.js";

const COLUMN_GAP = 64;
const ROW_GAP = 16;
const cache = new Map(); // group key -> {signature, layout}

self.onmessage = (message) => {
  const { seq, requests } = message.data;
  const started = performance.now();
  const layouts = new Map(); // group key -> {w, h, boxes}
  const sizeOf = (unit) => {
    if (!unit.open) return [UNIT_W, UNIT_H];
    const inner = layouts.get(unit.key);
    return inner ? [inner.w + 2 * PAD, inner.h + HEADER + PAD] : [UNIT_W, UNIT_H];
  };
  for (const request of requests) {
    const sizes = request.units.map(sizeOf);
    const signature = signatureOf(request, sizes);
    let layout = cache.get(request.key);
    if (!layout || layout.signature !== signature) {
      layout = { signature, ...layoutGroup(sizes, request.edges) };
      cache.set(request.key, layout);
    }
    layouts.set(request.key, layout);
  }
  // Absolute boxes, from the root down: an open group's content sits inside its box.
  const keys = [], boxes = [];
  const place = (request, left, top) => {
    const layout = layouts.get(request.key);
    request.units.forEach((unit, i) => {
      const [x, y, w, h] = layout.boxes[i];
      keys.push(unit.key);
      boxes.push(left + x, top + y, w, h);
      if (unit.open && byKey.has(unit.key)) place(byKey.get(unit.key), left + x + PAD, top + y + HEADER);
    });
  };
  const byKey = new Map(requests.map((request) => [request.key, request]));
  const root = requests[requests.length - 1];
  if (root) place(root, 0, 0);
  const rootLayout = root ? layouts.get(root.key) : { w: UNIT_W, h: UNIT_H };
  self.postMessage({ seq, keys, boxes, w: rootLayout.w, h: rootLayout.h, ms: performance.now() - started });
};

function signatureOf(request, sizes) {
  let edgeSum = 0;
  for (let i = 2; i < request.edges.length; i += 3) edgeSum += request.edges[i];
  const units = request.units;
  return `${units.length}|${request.edges.length}|${edgeSum}|${units[0]?.key}|${units[units.length - 1]?.key}|` +
    sizes.map(([w, h], i) => (units[i].open ? `${i}:${w}x${h}` : "")).join("");
}

/** Boxes [x, y, w, h] for units of the given sizes, and the size of the whole. */
function layoutGroup(sizes, edges) {
  const n = sizes.length;
  const parent = Array.from({ length: n }, (_, i) => i); // union-find: components
  const find = (i) => { while (parent[i] !== i) i = parent[i] = parent[parent[i]]; return i; };
  const inputs = Array.from({ length: n }, () => []);
  const outputs = Array.from({ length: n }, () => []);
  for (let k = 0; k < edges.length; k += 3) {
    const a = edges[k], b = edges[k + 1];
    if (a === undefined || b === undefined || a === b) continue;
    outputs[a].push(b);
    inputs[b].push(a);
    parent[find(a)] = find(b);
  }
  const members = new Map();
  for (let i = 0; i < n; i++) {
    const root = find(i);
    if (!members.has(root)) members.set(root, []);
    members.get(root).push(i);
  }
  const boxes = new Array(n);
  const parts = [];
  for (const list of members.values()) parts.push(layoutComponent(list, sizes, inputs, outputs, boxes));
  const placed = pack(parts);
  let w = 0, h = 0;
  parts.forEach((part, i) => {
    const { x, y } = placed[i];
    for (const unit of part.units) {
      boxes[unit][0] += x;
      boxes[unit][1] += y;
    }
    w = Math.max(w, x + part.w);
    h = Math.max(h, y + part.h);
  });
  return { boxes, w, h };
}

// One component: each unit's column is the longest path to it from units with no input
// (Kahn's order; a cycle between groups is broken at its earliest unit), and units of a
// column are ordered by the mean row of their inputs, so chains run straight.
function layoutComponent(list, sizes, inputs, outputs, boxes) {
  const rank = new Map();
  const waiting = new Map(list.map((i) => [i, inputs[i].length]));
  const order = [];
  let ready = list.filter((i) => waiting.get(i) === 0);
  const left = new Set(list);
  while (left.size) {
    if (!ready.length) ready = [smallest(left)]; // a cycle: break it at its earliest unit
    const next = [];
    for (const i of ready) {
      if (!left.has(i)) continue;
      left.delete(i);
      order.push(i);
      let r = 0;
      for (const j of inputs[i]) if (rank.has(j)) r = Math.max(r, rank.get(j) + 1);
      rank.set(i, r);
      for (const j of outputs[i]) {
        waiting.set(j, waiting.get(j) - 1);
        if (waiting.get(j) === 0) next.push(j);
      }
    }
    ready = next;
  }
  const columns = [];
  for (const i of order) (columns[rank.get(i)] ??= []).push(i);
  const row = new Map();
  let x = 0, height = 0;
  for (const column of columns) {
    if (!column) continue;
    const key = (i) => {
      let sum = 0, count = 0;
      for (const j of inputs[i]) if (row.has(j)) { sum += row.get(j); count++; }
      return count ? sum / count : i;
    };
    const keyed = column.map((i) => [key(i), i]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let y = 0, width = 0;
    keyed.forEach(([, i], k) => {
      const [w, h] = sizes[i];
      boxes[i] = [x, y, w, h];
      row.set(i, k);
      y += h + ROW_GAP;
      width = Math.max(width, w);
    });
    height = Math.max(height, y - ROW_GAP);
    x += width + COLUMN_GAP;
  }
  return { units: list, w: Math.max(0, x - COLUMN_GAP), h: height };
}

function smallest(set) {
  let min = Infinity;
  for (const i of set) if (i < min) min = i;
  return min;
}
