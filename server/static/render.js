// Drawing on a canvas: the graph node by node (detail and focus views) or as op groups per
// rank (aggregate view). Everything here is in world units; `Camera` maps them to pixels.

import { COLUMN_WIDTH } from "./graph.js";

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

/**
 * Draw the hierarchical overview: open groups as frames holding what they hold, closed
 * groups (and bands of unscoped nodes) as boxes that fill with colour as a backward pass
 * reaches their nodes, the nodes of open groups, and the edges between what is shown,
 * thicker for more edges. `view.order`: boxes in drawing order (a frame before its content).
 */
export function drawHierarchy(ctx, camera, width, height, view, lookUnit, lookNode) {
  ctx.save();
  const ratio = devicePixelRatio;
  ctx.setTransform(camera.scale * ratio, 0, 0, camera.scale * ratio, camera.x * ratio, camera.y * ratio);
  const [left, top] = camera.toWorld(0, 0);
  const [right, bottom] = camera.toWorld(width, height);
  const shown = (b) => b.x <= right && b.x + b.w >= left && b.y <= bottom && b.y + b.h >= top;
  const unit = 1 / Math.min(1, camera.scale);
  const labels = [];
  const readable = camera.scale >= 0.85;

  for (const box of view.order) { // the frames of open groups, outermost first
    if (!box.open || !shown(box)) continue;
    const look = lookUnit(box.unit);
    roundRect(ctx, box.x, box.y, box.w, box.h, 10);
    ctx.fillStyle = FRAME_FILLS[box.unit.ref.depth % FRAME_FILLS.length];
    ctx.fill();
    ctx.lineWidth = (look.selected ? 3 : 1.2) * unit;
    ctx.strokeStyle = look.selected ? COLORS.selected : look.state === "plain" ? COLORS.nodeStroke : COLORS.doneStroke;
    ctx.stroke();
    labels.push({ box, lines: [`▾ ${unitName(box.unit)} · ${box.unit.ref.count.toLocaleString("en-US")} nodes`] });
  }

  // Edges between shown units, in buckets of similar counts (one stroke per bucket).
  const buckets = [];
  for (const edge of view.edges) {
    const a = view.boxes.get(edge.from), b = view.boxes.get(edge.to);
    if (!a || !b) continue;
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    if (Math.max(x1, x2) < left || Math.min(x1, x2) > right) continue;
    if (Math.max(y1, y2) < top || Math.min(y1, y2) > bottom) continue;
    (buckets[Math.round(Math.log2(edge.count + 1))] ??= []).push([x1, y1, x2, y2, edge.count]);
  }
  ctx.strokeStyle = "rgba(120, 130, 150, 0.45)";
  const counts = []; // how many edges each drawn edge stands for, written at its middle
  buckets.forEach((edges, size) => {
    ctx.lineWidth = (0.8 + size * 0.6) * unit;
    ctx.beginPath();
    for (const [x1, y1, x2, y2, count] of edges) {
      edgePath(ctx, x1, y1, x2, y2);
      if (count > 1 && counts.length < 300) counts.push([(x1 + x2) / 2, (y1 + y2) / 2, count]);
    }
    ctx.stroke();
  });
  // Under the boxes: an edge's middle may fall on a box (a layer's grid of neurons), whose
  // name must stay readable.
  if (camera.scale >= 0.3) drawEdgeCounts(ctx, camera, counts);

  const tiny = camera.scale * NODE_W < 12; // a few pixels wide: plain boxes will do
  for (const box of view.order) {
    if (box.open || !shown(box)) continue;
    const { x, y, w, h } = box;
    if (box.unit.kind === "node") {
      const node = box.unit.ref;
      if (tiny || !readable) {
        const look = lookNode(node);
        ctx.fillStyle = look.state === "current" ? COLORS.currentStroke : look.state === "done"
          ? COLORS.doneStroke : node.op ? COLORS.nodeStroke : COLORS.leafStroke;
        ctx.fillRect(x, y, w, h);
      } else {
        drawNode(ctx, node, x, y, lookNode(node), camera.scale);
      }
      continue;
    }
    const look = lookUnit(box.unit);
    const ref = box.unit.ref;
    const lit = look.state !== "plain"; // a group lights up as its gradients arrive
    if (tiny && !look.selected) {
      ctx.fillStyle = lit ? COLORS.doneStroke : ref.op === "leaf" ? COLORS.leafStroke : COLORS.nodeStroke;
      ctx.fillRect(x, y, w, h);
      continue;
    }
    roundRect(ctx, x, y, w, h, 6);
    ctx.fillStyle = look.state === "current" ? COLORS.current : look.state === "done" ? COLORS.current
      : lit ? COLORS.done : box.unit.kind === "band" && ref.op === "leaf" ? COLORS.leaf : COLORS.group;
    ctx.fill();
    ctx.lineWidth = (look.selected ? 3 : look.state === "current" ? 2.5 : 1.2) * unit;
    ctx.strokeStyle = look.selected ? COLORS.selected : look.state === "current" ? COLORS.currentStroke
      : look.match ? COLORS.match : look.state === "plain" ? COLORS.nodeStroke : COLORS.doneStroke;
    ctx.stroke();
    if (look.progress > 0) { // how much of the group the backward pass has reached
      ctx.fillStyle = COLORS.doneStroke;
      ctx.fillRect(x + 6, y + h - 5, (w - 12) * Math.min(1, look.progress), 4);
    }
    const lines = [`${box.unit.kind === "group" ? "▸ " : ""}${unitName(box.unit)}`,
      `${ref.count.toLocaleString("en-US")} nodes${ref.ranks ? ` · ${ref.ranks}` : ""}`];
    if (!readable) { labels.push({ box, lines }); continue; }
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.font = "600 13px system-ui, sans-serif";
    ctx.fillStyle = COLORS.text;
    ctx.fillText(lines[0], x + 8, y + 17, w - 16);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = COLORS.muted;
    ctx.fillText(lines[1], x + 8, y + 35, w - 16);
  }
  ctx.restore();
  drawBoxLabels(ctx, camera, labels, readable);
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
  }
  ctx.restore();
}
