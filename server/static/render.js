// Drawing on a canvas: the graph node by node (detail and focus views) or as op groups per
// rank (aggregate view). Everything here is in world units; `Camera` maps them to pixels.

import { COLUMN_WIDTH } from "./graph.js";
import { drawSpread } from "./spread.js";

export const NODE_W = 172;
export const NODE_H = 56;
const GROUP_W = 172;
const GROUP_GAP = 16;

const COLORS = {
  edge: "#a9b1bd",
  edgeDone: "#f0b27a",
  edgeGrad: "#d9480f",
  node: "#ffffff",
  nodeStroke: "#8792a2",
  leaf: "#eaf2ff",
  leafStroke: "#5b84c4",
  done: "#fff0df",
  doneStroke: "#e8892b",
  current: "#ffd2a1",
  currentStroke: "#d9480f",
  selected: "#1c7ed6",
  match: "#f5b700",
  latest: "#2f9e44",
  text: "#1f2430",
  muted: "#5c6677",
  pending: "#a0a7b4",
  group: "#f3f5f9",
  dead: "#495057", // a dead ReLU unit (spread.js): its tag, its outline, its tiny box
  deadFill: "#e9ecef",
};

const OP_SYMBOLS = { add: "+", mul: "×", pow: "^", neg: "−", sub: "−", div: "÷" };

/** Numbers as a learner reads them: 4 significant digits, exponents only when needed. */
export function formatNumber(value) {
  if (value === undefined || value === null) return "";
  if (Number.isNaN(value)) return "nan";
  if (value === Infinity) return "inf";
  if (value === -Infinity) return "-inf";
  if (value === 0) return "0";
  const size = Math.abs(value);
  if (size >= 1e5 || size < 1e-3) return value.toExponential(3).replace(/\.?0+e/, "e");
  return String(Number(value.toPrecision(4)));
}

/** A node's data and grad as shown; a parent this viewer never saw has neither. */
export function dataText(node) {
  return node.placeholder ? "?" : formatNumber(node.data);
}

export function gradText(node, look, pending = "…") {
  if (node.placeholder) return "?";
  return look.gradShown ? formatNumber(node.grad) : pending;
}

export function opText(node) {
  if (node.placeholder) return "?";
  if (!node.op) return "";
  const symbol = OP_SYMBOLS[node.op] ?? node.op;
  if (node.const && node.const.length) return `${symbol} ${node.const.map(formatNumber).join(", ")}`;
  return symbol;
}

export function nodeTitle(node) {
  return node.label || `#${node.id}`;
}

export class Camera {
  constructor() {
    this.scale = 1;
    this.x = 0; // screen position of world x = 0
    this.y = 0;
  }
  toWorld(sx, sy) {
    return [(sx - this.x) / this.scale, (sy - this.y) / this.scale];
  }
  zoomAt(sx, sy, factor) {
    const scale = Math.min(4, Math.max(0.005, this.scale * factor));
    const [wx, wy] = this.toWorld(sx, sy);
    this.scale = scale;
    this.x = sx - wx * scale;
    this.y = sy - wy * scale;
  }
  /** Show the world box whole, centred, no larger than 1:1 (small graphs stay readable). */
  fit(box, width, height, margin = 40) {
    const w = Math.max(1, box.right - box.left);
    const h = Math.max(1, box.bottom - box.top);
    this.scale = Math.min(1.25, (width - 2 * margin) / w, (height - 2 * margin) / h);
    this.scale = Math.max(0.005, this.scale);
    this.x = (width - w * this.scale) / 2 - box.left * this.scale;
    this.y = Math.max(margin, (height - h * this.scale) / 2) - box.top * this.scale;
  }
  centerOn(wx, wy, width, height) {
    this.scale = Math.max(this.scale, 0.6);
    this.x = width / 2 - wx * this.scale;
    this.y = height / 2 - wy * this.scale;
  }
}

/** The world box of a detail scene. */
export function sceneBox(scene) {
  let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
  for (const node of scene.nodes) {
    const p = scene.pos(node);
    left = Math.min(left, p.x); top = Math.min(top, p.y);
    right = Math.max(right, p.x + NODE_W); bottom = Math.max(bottom, p.y + NODE_H);
  }
  if (left === Infinity) return { left: 0, top: 0, right: NODE_W, bottom: NODE_H };
  return { left, top, right, bottom };
}

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, r);
}

function edgePath(ctx, x1, y1, x2, y2) {
  const bend = Math.max(30, (x2 - x1) * 0.45);
  ctx.moveTo(x1, y1);
  ctx.bezierCurveTo(x1 + bend, y1, x2 - bend, y2, x2, y2);
}

function arrowHead(ctx, x, y, direction, size) {
  ctx.moveTo(x, y);
  ctx.lineTo(x - direction * size, y - size * 0.6);
  ctx.lineTo(x - direction * size, y + size * 0.6);
  ctx.closePath();
}

/**
 * Draw a detail scene. `look(node)` says how to draw a node:
 * {state: "plain"|"done"|"current", gradShown: bool, selected, match, latest}.
 */
export function drawScene(ctx, camera, width, height, scene, look, gradEdgesOf) {
  ctx.save();
  ctx.setTransform(camera.scale * devicePixelRatio, 0, 0, camera.scale * devicePixelRatio,
    camera.x * devicePixelRatio, camera.y * devicePixelRatio);
  const [left, top] = camera.toWorld(0, 0);
  const [right, bottom] = camera.toWorld(width, height);
  const visible = (x1, y1, x2, y2) => x2 >= left && x1 <= right && y2 >= top && y1 <= bottom;
  const detail = camera.scale >= 0.3;

  // Edges first, underneath the nodes; each parent slot is its own port (x + x: two edges).
  ctx.lineWidth = 1.3 / Math.min(1, camera.scale);
  ctx.strokeStyle = COLORS.edge;
  ctx.beginPath();
  const doneEdges = [];
  for (const node of scene.nodes) {
    const p = scene.pos(node);
    const n = node.parents.length;
    for (let k = 0; k < n; k++) {
      const parent = scene.inside(node.parents[k]);
      if (!parent) continue;
      const q = scene.pos(parent);
      const x1 = q.x + NODE_W, y1 = q.y + NODE_H / 2;
      const x2 = p.x, y2 = p.y + (NODE_H * (k + 1)) / (n + 1);
      if (!visible(Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2))) continue;
      if (look(node).state !== "plain") doneEdges.push([x1, y1, x2, y2]);
      else edgePath(ctx, x1, y1, x2, y2);
    }
  }
  ctx.stroke();
  if (doneEdges.length) {
    ctx.strokeStyle = COLORS.edgeDone;
    ctx.beginPath();
    for (const [x1, y1, x2, y2] of doneEdges) edgePath(ctx, x1, y1, x2, y2);
    ctx.stroke();
  }
  // The edges the gradient just flowed along: from the current node back to its inputs.
  const gradEdges = gradEdgesOf();
  if (gradEdges.length) {
    ctx.strokeStyle = COLORS.edgeGrad;
    ctx.fillStyle = COLORS.edgeGrad;
    ctx.lineWidth = 3.2 / Math.min(1, camera.scale);
    for (const [parent, node, k] of gradEdges) {
      if (!scene.inside(parent.id)) continue;
      const p = scene.pos(node), q = scene.pos(parent);
      const n = node.parents.length;
      const x1 = q.x + NODE_W, y1 = q.y + NODE_H / 2;
      ctx.beginPath();
      edgePath(ctx, x1, y1, p.x, p.y + (NODE_H * (k + 1)) / (n + 1));
      ctx.stroke();
      ctx.beginPath();
      arrowHead(ctx, x1, y1, -1, 11 / Math.min(1, camera.scale));
      ctx.fill();
    }
  }

  if (!detail) {
    drawNodesZoomedOut(ctx, scene, look, visible, camera.scale);
    ctx.restore();
    return;
  }
  for (const node of scene.nodes) {
    const { x, y } = scene.pos(node);
    if (!visible(x, y, x + NODE_W, y + NODE_H)) continue;
    drawNode(ctx, node, x, y, look(node), camera.scale);
  }
  ctx.restore();
}

// Zoomed out, text is unreadable: plain boxes, one fill per colour (thousands of nodes).
function drawNodesZoomedOut(ctx, scene, look, visible, scale) {
  const batches = new Map();
  const rings = [];
  for (const node of scene.nodes) {
    const { x, y } = scene.pos(node);
    if (!visible(x, y, x + NODE_W, y + NODE_H)) continue;
    const l = look(node);
    const colour = l.state === "current" ? COLORS.currentStroke : l.state === "done"
      ? COLORS.doneStroke : node.op ? COLORS.nodeStroke : COLORS.leafStroke;
    let batch = batches.get(colour);
    if (!batch) batches.set(colour, (batch = []));
    batch.push(x, y);
    const ring = l.selected ? COLORS.selected : l.match ? COLORS.match : null;
    if (ring) rings.push([x, y, ring]);
  }
  for (const [colour, xy] of batches) {
    ctx.fillStyle = colour;
    ctx.beginPath();
    for (let i = 0; i < xy.length; i += 2) ctx.rect(xy[i], xy[i + 1], NODE_W, NODE_H);
    ctx.fill();
  }
  ctx.lineWidth = 4 / scale;
  for (const [x, y, ring] of rings) {
    ctx.strokeStyle = ring;
    ctx.strokeRect(x - 12 / scale, y - 12 / scale, NODE_W + 24 / scale, NODE_H + 24 / scale);
  }
}

function drawNode(ctx, node, x, y, look, scale) {
  let fill = node.op ? COLORS.node : COLORS.leaf;
  let stroke = node.op ? COLORS.nodeStroke : COLORS.leafStroke;
  let width = 1.4;
  if (look.state === "done") { fill = COLORS.done; stroke = node.op ? COLORS.doneStroke : stroke; }
  if (look.state === "current") { fill = COLORS.current; stroke = COLORS.currentStroke; width = 3; }
  roundRect(ctx, x, y, NODE_W, NODE_H, 8);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = width / Math.min(1, scale);
  ctx.strokeStyle = stroke;
  if (node.placeholder) ctx.setLineDash([5, 4]);
  ctx.stroke();
  ctx.setLineDash([]);
  const ring = look.selected ? COLORS.selected : look.match ? COLORS.match
    : look.latest ? COLORS.latest : null;
  if (ring) {
    roundRect(ctx, x - 5, y - 5, NODE_W + 10, NODE_H + 10, 11);
    ctx.lineWidth = 3 / Math.min(1, scale);
    ctx.strokeStyle = ring;
    ctx.stroke();
  }

  // Header: the label, and the op as a pill on the right.
  ctx.textBaseline = "middle";
  const op = opText(node);
  let labelRoom = NODE_W - 16;
  if (op) {
    ctx.font = "600 12px system-ui, sans-serif";
    const w = Math.min(80, ctx.measureText(op).width + 14);
    labelRoom -= w + 4;
    roundRect(ctx, x + NODE_W - w - 6, y + 5, w, 18, 9);
    ctx.fillStyle = "#e7ebf3";
    ctx.fill();
    ctx.fillStyle = "#2b3a55";
    ctx.textAlign = "center";
    ctx.fillText(op, x + NODE_W - w / 2 - 6, y + 14.5, w - 6);
  }
  ctx.textAlign = "left";
  ctx.font = "600 13px system-ui, sans-serif";
  ctx.fillStyle = node.label ? COLORS.text : COLORS.muted;
  ctx.fillText(nodeTitle(node), x + 8, y + 14.5, labelRoom);

  ctx.font = "12px ui-monospace, SFMono-Regular, Menlo, monospace";
  ctx.fillStyle = COLORS.muted;
  ctx.fillText("data", x + 8, y + 32);
  ctx.fillText("grad", x + 8, y + 47);
  ctx.fillStyle = COLORS.text;
  ctx.fillText(dataText(node), x + 46, y + 32, NODE_W - 52);
  ctx.fillStyle = look.gradShown ? (look.state === "plain" ? COLORS.text : COLORS.currentStroke)
    : COLORS.pending;
  ctx.fillText(gradText(node, look), x + 46, y + 47, NODE_W - 52);
}

// --- the aggregate view ---------------------------------------------------------------------

/** Positions of the op groups: one column per band of ranks, stacked in arrival order. */
export function layoutGroups(graph) {
  const boxes = new Map();
  let bottom = 0;
  let bands = 0;
  const overview = graph.bands();
  overview.byBand.forEach((groups, band) => {
    let y = 0;
    bands = Math.max(bands, band);
    for (const group of groups ?? []) {
      const h = 34 + Math.min(70, 7 * Math.log2(group.count + 1));
      boxes.set(group.key, { x: band * COLUMN_WIDTH, y, w: GROUP_W, h, group });
      y += h + GROUP_GAP;
    }
    bottom = Math.max(bottom, y);
  });
  const box = { left: 0, top: 0, right: bands * COLUMN_WIDTH + GROUP_W, bottom };
  return { boxes, box, edges: overview.edges };
}

export function drawGroups(ctx, camera, width, height, layout, selectedKey) {
  ctx.save();
  ctx.setTransform(camera.scale * devicePixelRatio, 0, 0, camera.scale * devicePixelRatio,
    camera.x * devicePixelRatio, camera.y * devicePixelRatio);
  const [left, top] = camera.toWorld(0, 0);
  const [right, bottom] = camera.toWorld(width, height);
  const unit = 1 / Math.min(1, camera.scale);

  // Edges between groups, thicker for more edges; one stroke per thickness (strokes are
  // what costs, not path segments).
  const buckets = [];
  for (const edge of layout.edges.values()) {
    const a = layout.boxes.get(edge.from.key), b = layout.boxes.get(edge.to.key);
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    if (Math.max(x1, x2) < left || Math.min(x1, x2) > right) continue;
    if (Math.max(y1, y2) < top || Math.min(y1, y2) > bottom) continue;
    (buckets[Math.round(Math.log2(edge.count + 1))] ??= []).push([x1, y1, x2, y2]);
  }
  ctx.strokeStyle = "rgba(120, 130, 150, 0.35)";
  buckets.forEach((edges, size) => {
    ctx.lineWidth = (0.8 + size * 0.6) * unit;
    ctx.beginPath();
    for (const [x1, y1, x2, y2] of edges) edgePath(ctx, x1, y1, x2, y2);
    ctx.stroke();
  });

  const tiny = camera.scale * GROUP_W < 12; // a few pixels wide: plain boxes will do
  const labels = []; // zoomed out: labelled at a readable size below, where they fit
  for (const { x, y, w, h, group } of layout.boxes.values()) {
    if (x > right || x + w < left || y > bottom || y + h < top) continue;
    const selected = group.key === selectedKey;
    ctx.fillStyle = group.op === "leaf" ? COLORS.leafStroke : COLORS.nodeStroke;
    if (tiny && !selected) {
      ctx.fillRect(x, y, w, h);
      if (group.bwDone) {
        ctx.fillStyle = COLORS.doneStroke;
        ctx.fillRect(x, y + h * (1 - group.bwDone / group.count), w, h * (group.bwDone / group.count));
      }
      continue;
    }
    roundRect(ctx, x, y, w, h, 6);
    ctx.fillStyle = group.op === "leaf" ? COLORS.leaf : COLORS.group;
    ctx.fill();
    ctx.lineWidth = (selected ? 3 : 1.2) * unit;
    ctx.strokeStyle = selected ? COLORS.selected : COLORS.nodeStroke;
    ctx.stroke();
    // How much of the group the current backward pass has reached.
    if (group.bwDone) {
      ctx.fillStyle = COLORS.doneStroke;
      ctx.fillRect(x + 6, y + h - 4, (w - 12) * (group.bwDone / group.count), 3);
    }
    if (camera.scale < 0.85) { // world-size text would be too small to read
      labels.push({ x, y, w, h, group });
    } else {
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      ctx.font = "600 13px system-ui, sans-serif";
      ctx.fillStyle = COLORS.text;
      ctx.fillText(group.op, x + 8, y + 15, w - 16);
      ctx.font = "12px system-ui, sans-serif";
      ctx.fillStyle = COLORS.muted;
      ctx.fillText(`${group.count.toLocaleString("en-US")} nodes · ${group.ranks}`,
        x + 8, y + 31, w - 16);
    }
  }
  ctx.restore();
  drawScreenLabels(ctx, camera, labels);
}

// Op names at a fixed 11 px on the screen, for groups drawn too small for world-size text.
function drawScreenLabels(ctx, camera, labels) {
  ctx.save();
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  ctx.font = "600 11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  ctx.fillStyle = COLORS.text;
  for (const { x, y, w, h, group } of labels) {
    const sw = w * camera.scale, sh = h * camera.scale;
    if (sw < 34 || sh < 11) continue;
    const sx = x * camera.scale + camera.x, sy = y * camera.scale + camera.y;
    const lines = [group.op, `${group.count.toLocaleString("en-US")} nodes`, group.ranks];
    const room = Math.max(1, Math.floor((sh - 2) / 12));
    lines.slice(0, room).forEach((line, i) => {
      ctx.font = i ? "11px system-ui, sans-serif" : "600 11px system-ui, sans-serif";
      ctx.fillText(line, sx + 5, sy + 8 + i * 12, sw - 10);
    });
  }
  ctx.restore();
}


const FRAME_FILLS = ["#f6f8fb", "#edf1f7", "#e4eaf3"];
const EDGE_COLOUR = "rgba(120, 130, 150, 0.45)";
const BUNDLE_MIN = 24; // a unit with more edges than this on one side has them drawn as a bundle
const BUS = 12; // world units between a bundle's bus and the boxes it reaches
const COMB = 8; // world units between a bundle's comb and the boxes (the rows' gap is 16)
const SPARKLINE_PX = 100; // a box this wide on the screen, or wider, shows its sparkline
const TINY_LINES = 3000; // edges drawn one by one between boxes a few pixels wide, at most

/**
 * Draw the hierarchical overview: open groups as frames holding what they hold, closed
 * groups (and bands of unscoped nodes) as boxes that fill with colour as a backward pass
 * reaches their nodes, the nodes of open groups, and the edges between what is shown,
 * thicker for more edges. `view.order`: boxes in drawing order (a frame before its content).
 *
 * The work of a frame is bounded by what is in view, whatever the number of groups: the
 * boxes are sorted by column and row once per layout (`prepareView`), so a frame visits only
 * those in view; the many edges of one unit (an input shared by 20,000 groups, a loss summed
 * over 2,000 samples) are drawn as one bundle; what is smaller than a pixel is merged or
 * left out. Returns what was drawn (the tests' counters, `opgraphViewer.drawCounts`).
 *
 * `looks`: {unit(unit), node(node), stamp}, how a unit and a node look; `stamp` changes
 * whenever a look may have (view.js), so a box's colour is kept from one frame to the next
 * until then: panning works out no colour at all.
 */
export function drawHierarchy(ctx, camera, width, height, view, looks) {
  const { unit: lookUnit, node: lookNode } = looks;
  const prepared = (view.prepared ??= prepareView(view));
  ctx.save();
  const ratio = devicePixelRatio;
  ctx.setTransform(camera.scale * ratio, 0, 0, camera.scale * ratio, camera.x * ratio, camera.y * ratio);
  const [left, top] = camera.toWorld(0, 0);
  const [right, bottom] = camera.toWorld(width, height);
  const sight = { left, top, right, bottom, scale: camera.scale };
  const unit = 1 / Math.min(1, camera.scale);
  const counts = { frames: 0, boxes: 0, runs: 0, lines: 0, hidden: 0, trunks: 0, buses: 0, stubs: 0, labels: 0,
    dead: 0, sparklines: 0 };
  const labels = [];
  const readable = camera.scale >= 0.85;

  for (const box of prepared.frames) { // the frames of open groups, outermost first
    if (!overlaps(box, sight)) continue;
    counts.frames++;
    const look = lookUnit(box.unit);
    roundRect(ctx, box.x, box.y, box.w, box.h, 10);
    ctx.fillStyle = FRAME_FILLS[box.unit.ref.depth % FRAME_FILLS.length];
    ctx.fill();
    ctx.lineWidth = (look.selected ? 3 : 1.2) * unit;
    ctx.strokeStyle = look.selected ? COLORS.selected : look.state === "plain" ? COLORS.nodeStroke : COLORS.doneStroke;
    ctx.stroke();
    if (look.dead) counts.dead++;
    const title = `▾ ${unitName(box.unit)} · ${box.unit.ref.count.toLocaleString("en-US")} nodes${look.dead ? " · dead" : ""}`;
    if (box.w * camera.scale >= 34) labels.push({ box, lines: [title] });
  }

  const shown = [];
  forEachShown(prepared, sight, (box) => shown.push(box));
  const tiny = camera.scale * prepared.unitW < 12;
  const edgeCounts = drawEdges(ctx, prepared, sight, shown, counts, tiny);
  // Under the boxes: an edge's middle may fall on a box (a layer's grid of neurons), whose
  // name must stay readable.
  drawEdgeCounts(ctx, camera, edgeCounts);

  counts.boxes = shown.length;
  if (tiny) counts.runs = drawTinyBoxes(ctx, shown, sight, looks);
  else if (!readable) counts.sparklines = drawSmallBoxes(ctx, shown, camera, looks, labels);
  else for (const box of shown) counts.sparklines += drawBox(ctx, box, camera, looks);
  for (const box of shown) if (box.unit.kind === "group" && lookUnit(box.unit).dead) counts.dead++;
  ctx.restore();
  counts.labels = drawBoxLabels(ctx, camera, labels, readable);
  return counts;
}

function overlaps(box, sight) {
  return box.x <= sight.right && box.x + box.w >= sight.left && box.y <= sight.bottom && box.y + box.h >= sight.top;
}

/**
 * What drawing the overview needs, made once per layout: the closed boxes sorted by column
 * (left side) and row, the frames of open groups, and the edges routed: a unit's edges on
 * one side, when it has more than BUNDLE_MIN, make one bundle (a trunk from the unit to a
 * comb, a bus down each column of the boxes it reaches, a stub into each box), the others
 * are drawn one by one.
 */
export function prepareView(view) {
  const steps = preparing(view);
  let step;
  do step = steps.next();
  while (!step.done);
  return step.value;
}

/** `prepareView` as a generator that yields now and then: the page runs it in slices. */
export function* preparing(view) {
  const frames = [], closed = [];
  for (const box of view.order) (box.open ? frames : closed).push(box);
  closed.sort((a, b) => a.x - b.x || a.y - b.y);
  yield;
  const columns = []; // runs of `closed` with one left side: {x, start, end}
  let unitW = 0, unitH = 0;
  closed.forEach((box, i) => {
    if (columns.length && columns[columns.length - 1].x === box.x) columns[columns.length - 1].end = i + 1;
    else columns.push({ x: box.x, start: i, end: i + 1 });
    unitW = Math.max(unitW, box.w);
    unitH = Math.max(unitH, box.h);
  });
  yield;
  const routes = yield* routeEdges(view);
  return { frames, closed, columns, unitW: unitW || NODE_W, unitH: unitH || NODE_H, ...routes };
}

// Calls `visit` for each closed box in view, column by column, top to bottom: binary searches
// for the first column and row in view, so the cost is that of the boxes in view.
function forEachShown(prepared, sight, visit) {
  const { closed, columns, unitW, unitH } = prepared;
  let c = lowerBound(columns.length, (i) => columns[i].x < sight.left - unitW);
  for (; c < columns.length && columns[c].x <= sight.right; c++) {
    const { start, end } = columns[c];
    let i = start + lowerBound(end - start, (k) => closed[start + k].y < sight.top - unitH);
    for (; i < end && closed[i].y <= sight.bottom; i++) {
      if (overlaps(closed[i], sight)) visit(closed[i]);
    }
  }
}

/** The first index in [0, n) where `before(i)` is false (`before` true, then false). */
function lowerBound(n, before) {
  let lo = 0, hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (before(mid)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function* routeEdges(view) {
  const usable = [];
  const outs = new Map(), ins = new Map(); // unit key -> its edges on that side
  let work = 0;
  for (const edge of view.edges) {
    if (++work % 2000 === 0) yield;
    const a = view.boxes.get(edge.from), b = view.boxes.get(edge.to);
    if (!a || !b) continue;
    usable.push([edge, a, b]);
    outs.set(edge.from, (outs.get(edge.from) ?? 0) + 1);
    ins.set(edge.to, (ins.get(edge.to) ?? 0) + 1);
  }
  const lines = []; // x1, y1, x2, y2, count for each edge drawn on its own
  const fanOut = new Map(), fanIn = new Map(); // hub box -> {hub, count, members}
  const join = (bundles, hub, member, count) => {
    let bundle = bundles.get(hub);
    if (!bundle) bundles.set(hub, (bundle = { hub, count: 0, members: [] }));
    bundle.count += count;
    bundle.members.push(member);
  };
  for (const [edge, a, b] of usable) {
    if (++work % 2000 === 0) yield;
    const out = outs.get(edge.from), into = ins.get(edge.to);
    if (out > BUNDLE_MIN && out >= into) join(fanOut, a, b, edge.count);
    else if (into > BUNDLE_MIN) join(fanIn, b, a, edge.count);
    else lines.push(a.x + a.w, a.y + a.h / 2, b.x, b.y + b.h / 2, edge.count);
  }
  const trunks = [], buses = [], seen = new Set();
  const stubs = new Map(); // box -> 1: a stub on its left (a bundle reaches it), 2: on its right, 3: both
  const bundles = []; // what each bundle stands for: {hub, side, count, members}
  for (const [hubs, side] of [[fanOut, "out"], [fanIn, "in"]]) {
    for (const bundle of hubs.values()) {
      work += bundle.members.length;
      if (work > 2000) { work = 0; yield; }
      const shape = shapeBundle(bundle, side);
      trunks.push(...shape.trunk, bundle.count);
      for (const segment of shape.segments) { // buses and combs shared by bundles: drawn once
        const key = segment.join(",");
        if (!seen.has(key)) { seen.add(key); buses.push(...segment); }
      }
      for (const box of bundle.members) stubs.set(box, (stubs.get(box) ?? 0) | (side === "out" ? 1 : 2));
      bundles.push({ hub: bundle.hub.unit.key, side, count: bundle.count, members: bundle.members.length });
    }
  }
  return { lines, trunks, buses, stubs, bundles };
}

// A bundle's lines: its members grouped by the side of their box it reaches (a column, or a
// sub-column of a wrapped one), a bus beside each, a comb joining the buses above the
// members (below them for a bundle into the hub), and the trunk between the comb and the hub.
function shapeBundle(bundle, side) {
  const out = side === "out";
  const byPort = new Map();
  let top = Infinity, bottom = -Infinity;
  for (const box of bundle.members) {
    const x = out ? box.x - BUS : box.x + box.w + BUS;
    const mid = box.y + box.h / 2;
    let bus = byPort.get(x);
    if (!bus) byPort.set(x, (bus = { x, first: mid, last: mid }));
    bus.first = Math.min(bus.first, mid);
    bus.last = Math.max(bus.last, mid);
    top = Math.min(top, box.y);
    bottom = Math.max(bottom, box.y + box.h);
  }
  const list = [...byPort.values()].sort((a, b) => a.x - b.x);
  const comb = out ? top - COMB : bottom + COMB;
  const segments = list.map((bus) => [bus.x, comb, bus.x, out ? bus.last : bus.first]);
  if (list.length > 1) segments.push([list[0].x, comb, list[list.length - 1].x, comb]);
  const hub = bundle.hub;
  const trunk = out ? [hub.x + hub.w, hub.y + hub.h / 2, list[0].x, comb]
    : [list[list.length - 1].x, comb, hub.x, hub.y + hub.h / 2];
  return { trunk, segments };
}

// The edges in view: those drawn one by one and the bundles' trunks as curves, in buckets of
// similar counts (one stroke per bucket), then the buses, combs and stubs as one thin path.
// What would be under a pixel long on the screen is left out. Returns the counts to write.
//
// The rasteriser is what costs with thousands of edges (an open group of 20,000 nodes): a
// stroke wider than a device pixel is outlined as a polygon, one at most a pixel wide is drawn
// as a hairline, about six times faster, so single edges are hairlines when zoomed out. Once
// boxes are a few pixels wide (`tiny`), edges drawn one by one are a grey haze: past
// TINY_LINES of them in view, they are left out (counted as `hidden`) until the camera zooms
// in, and the boxes (and the bundles) are the picture.
function drawEdges(ctx, prepared, sight, shown, counts, tiny) {
  const unit = 1 / Math.min(1, sight.scale);
  const buckets = [];
  const labelled = []; // how many edges each drawn edge stands for, written at its middle
  const inView = (flat, labels) => {
    const found = [];
    for (let i = 0; i < flat.length; i += 5) {
      const x1 = flat[i], y1 = flat[i + 1], x2 = flat[i + 2], y2 = flat[i + 3];
      if (Math.max(x1, x2) < sight.left || Math.min(x1, x2) > sight.right) continue;
      if (Math.max(y1, y2) < sight.top || Math.min(y1, y2) > sight.bottom) continue;
      if ((Math.abs(x2 - x1) + Math.abs(y2 - y1)) * sight.scale < 1) continue;
      found.push(i);
      const count = flat[i + 4];
      if (labels && count > 1 && labelled.length < 300) labelled.push([(x1 + x2) / 2, (y1 + y2) / 2, count]);
    }
    return found;
  };
  const collect = (flat, found) => {
    for (const i of found) (buckets[Math.round(Math.log2(flat[i + 4] + 1))] ??= []).push(i, flat);
  };
  // Counts are written once zoomed in enough to read them; a bundle's at any zoom (it is
  // what a picture of thousands of groups is about).
  const trunks = inView(prepared.trunks, true);
  collect(prepared.trunks, trunks);
  counts.trunks = trunks.length;
  const lines = inView(prepared.lines, sight.scale >= 0.3);
  if (tiny && lines.length > TINY_LINES) counts.hidden = lines.length;
  else { collect(prepared.lines, lines); counts.lines = lines.length; }
  ctx.strokeStyle = EDGE_COLOUR;
  buckets.forEach((edges, size) => {
    // a single edge (size 1) zoomed out: a hairline
    ctx.lineWidth = size <= 1 && sight.scale < 1 ? 1 / sight.scale : (0.8 + size * 0.6) * unit;
    ctx.beginPath();
    for (let k = 0; k < edges.length; k += 2) {
      const i = edges[k], flat = edges[k + 1];
      edgePath(ctx, flat[i], flat[i + 1], flat[i + 2], flat[i + 3]);
    }
    ctx.stroke();
  });
  ctx.lineWidth = 1.4 * unit;
  ctx.beginPath();
  const buses = prepared.buses;
  for (let i = 0; i < buses.length; i += 4) {
    const x1 = buses[i], y1 = buses[i + 1], x2 = buses[i + 2], y2 = buses[i + 3];
    if (Math.max(x1, x2) < sight.left || Math.min(x1, x2) > sight.right) continue;
    if (Math.max(y1, y2) < sight.top || Math.min(y1, y2) > sight.bottom) continue;
    counts.buses++;
    ctx.moveTo(x1, y1);
    ctx.lineTo(x2, y2);
  }
  if (BUS * sight.scale >= 3) { // stubs of the boxes in view, once they are a few pixels long
    for (const box of shown) {
      const sides = prepared.stubs.get(box);
      if (!sides) continue;
      const mid = box.y + box.h / 2;
      if (sides & 1) { ctx.moveTo(box.x - BUS, mid); ctx.lineTo(box.x, mid); counts.stubs++; }
      if (sides & 2) { ctx.moveTo(box.x + box.w, mid); ctx.lineTo(box.x + box.w + BUS, mid); counts.stubs++; }
    }
  }
  ctx.stroke();
  // Where two overlap, the one of the thicker edge on top (bucket by bucket, as drawn).
  const size = (count) => Math.round(Math.log2(count + 1));
  return labelled.sort((a, b) => size(a[2]) - size(b[2]));
}

// Boxes a few pixels wide: one colour each, and boxes of one colour that touch on the screen
// (a column of sub-pixel gaps) merged into one rectangle. A box keeps its colour until the
// looks' stamp changes. Each rectangle is its own fillRect: one path of a few hundred tall
// rectangles costs the browser's rasteriser 30 to 50 ms a frame, separate rectangles ~1 ms.
function drawTinyBoxes(ctx, shown, sight, looks) {
  const byColour = new Map();
  let run = null, runs = 0;
  const gap = 1 / sight.scale; // a pixel, in world units
  const stamp = looks.stamp;
  for (const box of shown) {
    if (box.tintStamp !== stamp) {
      box.tint = tinyColour(box, looks.unit, looks.node);
      box.tintStamp = stamp;
    }
    const colour = box.tint;
    if (run && run.colour === colour && run.x === box.x && run.w === box.w && box.y - run.bottom < gap) {
      run.bottom = Math.max(run.bottom, box.y + box.h);
      continue;
    }
    if (run) byColour.get(run.colour).push(run);
    run = { colour, x: box.x, w: box.w, y: box.y, bottom: box.y + box.h };
    if (!byColour.has(colour)) byColour.set(colour, []);
    runs++;
  }
  if (run) byColour.get(run.colour).push(run);
  for (const [colour, list] of byColour) {
    ctx.fillStyle = colour;
    for (const r of list) ctx.fillRect(r.x, r.y, r.w, r.bottom - r.y);
  }
  return runs;
}

/**
 * Works out the colour of every closed box of a prepared view for the looks' stamp, yielding
 * now and then: the page runs it in slices before it first draws a layout, so that the first
 * frame of an open group of 20,000 nodes does not work out 20,000 looks.
 */
export function* tinting(prepared, looks) {
  let work = 0;
  for (const box of prepared.closed) {
    if (box.tintStamp === looks.stamp) continue;
    box.tint = tinyColour(box, looks.unit, looks.node);
    box.tintStamp = looks.stamp;
    if (++work % 2000 === 0) yield;
  }
}

function tinyColour(box, lookUnit, lookNode) {
  if (box.unit.kind === "node") {
    const look = lookNode(box.unit.ref);
    return look.selected ? COLORS.selected : look.state === "current" ? COLORS.currentStroke
      : look.state === "done" ? COLORS.doneStroke : box.unit.ref.op ? COLORS.nodeStroke : COLORS.leafStroke;
  }
  const look = lookUnit(box.unit);
  return look.selected ? COLORS.selected : look.dead ? COLORS.dead : look.state !== "plain" ? COLORS.doneStroke
    : box.unit.ref.op === "leaf" ? COLORS.leafStroke : COLORS.nodeStroke;
}

// Boxes too small for world-size text: rounded boxes batched by fill and outline (one fill
// or stroke per style, whatever the number of boxes), names written at a fixed screen size.
function drawSmallBoxes(ctx, shown, camera, looks, labels) {
  const { unit: lookUnit, node: lookNode } = looks;
  const unit = 1 / Math.min(1, camera.scale);
  const batches = new Map(); // "fill|rect|line colour width" -> boxes
  const add = (style, box) => {
    let list = batches.get(style);
    if (!list) batches.set(style, (list = []));
    list.push(box);
  };
  const bars = [];
  for (const box of shown) {
    if (box.unit.kind === "node") {
      const look = lookNode(box.unit.ref);
      add(`rect ${look.state === "current" ? COLORS.currentStroke : look.state === "done" ? COLORS.doneStroke
        : box.unit.ref.op ? COLORS.nodeStroke : COLORS.leafStroke}`, box);
      if (look.selected || look.match) add(`line ${look.selected ? COLORS.selected : COLORS.match} 3`, box);
      continue;
    }
    const look = lookUnit(box.unit);
    add(`fill ${unitFill(box, look)}`, box);
    add(`line ${unitStroke(look)} ${unitStrokeWidth(look)}`, box);
    if (look.progress > 0) bars.push([box, look.progress]);
    pushLabel(labels, box, camera, look.dead);
  }
  const fillsFirst = [...batches].sort(([a], [b]) => a.startsWith("line") - b.startsWith("line"));
  for (const [style, list] of fillsFirst) { // outlines over every fill, as box by box
    const [kind, colour, lineWidth] = style.split(" ");
    ctx.beginPath(); // (rounded corners only where they show: they cost more to fill)
    for (const { x, y, w, h } of list) {
      if (kind === "rect" || w * camera.scale < 60) ctx.rect(x, y, w, h);
      else ctx.roundRect(x, y, w, h, 6);
    }
    if (kind !== "line") { ctx.fillStyle = colour; ctx.fill(); continue; }
    ctx.lineWidth = Number(lineWidth) * unit;
    ctx.strokeStyle = colour;
    ctx.stroke();
  }
  ctx.fillStyle = COLORS.doneStroke; // how much of each group the backward pass has reached
  for (const [{ x, y, w, h }, progress] of bars) ctx.fillRect(x + 6, y + h - 5, (w - 12) * Math.min(1, progress), 4);
  let sparklines = 0; // on boxes wide enough on the screen to read one
  for (const box of shown) {
    if (box.unit.kind !== "group" || box.w * camera.scale < SPARKLINE_PX) continue;
    sparklines += drawSparkline(ctx, box, looks);
  }
  return sparklines;
}

function unitFill(box, look) {
  if (look.dead) return COLORS.deadFill;
  if (look.state === "current" || look.state === "done") return COLORS.current;
  if (look.state !== "plain") return COLORS.done; // a group lights up as its gradients arrive
  return box.unit.kind === "band" && box.unit.ref.op === "leaf" ? COLORS.leaf : COLORS.group;
}

function unitStroke(look) {
  return look.selected ? COLORS.selected : look.state === "current" ? COLORS.currentStroke
    : look.dead ? COLORS.dead : look.match ? COLORS.match : look.state === "plain" ? COLORS.nodeStroke : COLORS.doneStroke;
}

function unitStrokeWidth(look) {
  return look.selected ? 3 : look.state === "current" ? 2.5 : 1.2;
}

// A box's name and node count, made once per layout (toLocaleString is slow enough to
// matter for a few hundred boxes a frame); a new layout comes at most 0.4 s after a change.
function unitLines(box) {
  if (box.lines) return box.lines;
  const ref = box.unit.ref;
  box.lines = [`${box.unit.kind === "group" ? "▸ " : ""}${unitName(box.unit)}`,
    `${ref.count.toLocaleString("en-US")} nodes${ref.ranks ? ` · ${ref.ranks}` : ""}`];
  return box.lines;
}

// A box's name, to be written at a fixed screen size, if it has room for one.
function pushLabel(labels, box, camera, dead) {
  if (box.w * camera.scale < 34 || box.h * camera.scale < 11) return;
  const lines = unitLines(box);
  labels.push({ box, lines: dead ? [lines[0], `dead · ${lines[1]}`] : lines });
}

// Zoomed in: one box, with its text at world size; a dead ReLU unit tagged "dead", a group
// whose parameters have gradients a sparkline of their spread over the steps (spread.js).
// Returns 1 if it drew a sparkline.
function drawBox(ctx, box, camera, looks) {
  const { x, y, w, h } = box;
  if (box.unit.kind === "node") {
    drawNode(ctx, box.unit.ref, x, y, looks.node(box.unit.ref), camera.scale);
    return 0;
  }
  const unit = 1 / Math.min(1, camera.scale);
  const look = looks.unit(box.unit);
  roundRect(ctx, x, y, w, h, 6);
  ctx.fillStyle = unitFill(box, look);
  ctx.fill();
  ctx.lineWidth = unitStrokeWidth(look) * unit;
  ctx.strokeStyle = unitStroke(look);
  ctx.stroke();
  if (look.progress > 0) { // how much of the group the backward pass has reached
    ctx.fillStyle = COLORS.doneStroke;
    ctx.fillRect(x + 6, y + h - 5, (w - 12) * Math.min(1, look.progress), 4);
  }
  const lines = unitLines(box);
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  let nameRoom = w - 16;
  if (look.dead) {
    nameRoom -= 44;
    roundRect(ctx, x + w - 46, y + 9, 38, 16, 8);
    ctx.fillStyle = COLORS.dead;
    ctx.fill();
    ctx.font = "600 11px system-ui, sans-serif";
    ctx.fillStyle = "#ffffff";
    ctx.textAlign = "center";
    ctx.fillText("dead", x + w - 27, y + 17.5, 34);
    ctx.textAlign = "left";
  }
  ctx.font = "600 13px system-ui, sans-serif";
  ctx.fillStyle = COLORS.text;
  ctx.fillText(lines[0], x + 8, y + 17, nameRoom);
  const spread = looks.spread?.(box.unit);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = COLORS.muted;
  ctx.fillText(lines[1], x + 8, y + 37, w - 16 - (spread ? 72 : 0));
  return drawSparkline(ctx, box, looks);
}

// The spread of a group's parameters' gradients over the steps (spread.js), small, in the
// lower right corner of its box. Returns 1 if the group has one.
function drawSparkline(ctx, box, looks) {
  const { x, y, w, h } = box;
  const spread = w >= 150 && h >= 50 ? looks.spread?.(box.unit) : null;
  if (!spread) return 0;
  ctx.save();
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(x + w - 72, y + 28, 64, 18);
  drawSpread(ctx, spread, x + w - 71, y + 29, 62, 16);
  ctx.restore();
  return 1;
}

// Edge counts at a fixed 10 px on the screen, on a light patch so they read over lines.
function drawEdgeCounts(ctx, camera, counts) {
  ctx.save();
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  ctx.font = "10px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (const [x, y, count] of counts) {
    const sx = x * camera.scale + camera.x, sy = y * camera.scale + camera.y;
    const text = count.toLocaleString("en-US");
    const w = ctx.measureText(text).width + 6;
    ctx.fillStyle = "rgba(246, 248, 251, 0.9)";
    ctx.fillRect(sx - w / 2, sy - 6, w, 12);
    ctx.fillStyle = COLORS.muted;
    ctx.fillText(text, sx, sy);
  }
  ctx.restore();
}

/** A shown unit's name: a group's last path segment, a band's op. */
export function unitName(unit) {
  if (unit.kind === "band") return unit.ref.op;
  if (unit.kind === "node") return nodeTitle(unit.ref);
  return unit.ref.name;
}

// Labels at a fixed 11 px on the screen (frames' titles always; boxes when zoomed out).
function drawBoxLabels(ctx, camera, labels, readable) {
  let written = 0;
  ctx.save();
  ctx.setTransform(devicePixelRatio, 0, 0, devicePixelRatio, 0, 0);
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  ctx.fillStyle = COLORS.text;
  for (const { box, lines } of labels) {
    const sw = box.w * camera.scale, sh = box.h * camera.scale;
    if (sw < 34 || (!box.open && sh < 11)) continue;
    const sx = box.x * camera.scale + camera.x, sy = box.y * camera.scale + camera.y;
    const room = box.open ? 1 : Math.max(1, Math.floor((sh - 2) / 12));
    lines.slice(0, room).forEach((line, i) => {
      ctx.font = i ? "11px system-ui, sans-serif" : `600 ${box.open && readable ? 13 : 11}px system-ui, sans-serif`;
      ctx.fillText(line, sx + 6, sy + (box.open ? Math.min(16, 22 * camera.scale) : 8) + i * 12, sw - 10);
    });
    written++;
  }
  ctx.restore();
  return written;
}
