// View: what is drawn and when: the view mode (detail, overview, focus), the overview laid
// out in the worker, the camera (fit, zoom, centre), how nodes and groups look (backward
// state, selection, matches), and one frame drawn at most every DRAW_INTERVAL_MS while a
// stream is applied. The drawing itself is render.js.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $ } from "./dom.js";
import { Slices, componentLayout, describing } from "./groups.js";
import {
  NODE_H, NODE_W, drawGroups, drawHierarchy, drawScene, layoutGroups, preparing, sceneBox, tinting,
} from "./render.js";
import { deadUnits, gradSpread } from "./spread.js";

const params = new URLSearchParams(location.search);
// Above this many nodes the whole-graph view shows op groups per rank instead of nodes.
const THRESHOLD = Number(params.get("threshold")) || 3000;
const DRAW_INTERVAL_MS = 100; // while a stream is being applied, draw ~10 times a second
const RELAYOUT_MS = 400; // while the graph grows, the overview is laid out again this often

export class View {
  get mode() {
    if (this.focus) return "focus";
    const view = $("view-mode").value;
    const overview = view === "aggregate" || (view === "auto" && this.graph.size > THRESHOLD);
    if (!overview) return "detail";
    // Scopes (or separate computations) shown as a tree of groups; one computation without
    // scopes as op groups per rank.
    const graph = this.graph;
    return graph.scopes.scoped > 0 || graph.separateGraphs > 1 ? "hierarchy" : "aggregate";
  }

  /**
   * The overview: lay it out again (in the worker) when the groups opened or the graph
   * changed. The description of what is shown (an open group of 20,000 nodes is 20,000 units
   * and their edges) is made a slice at a time (`Slices`), and so is what drawing the layout
   * needs (`preparing`): the page draws the picture it has and answers input meanwhile.
   */
  updateHierarchy() {
    const graph = this.graph;
    const asked = this.hasked;
    if (asked && asked.graph === graph && asked.open === this.openVersion && asked.version === graph.version) return;
    const job = this.describing;
    if (job && job.graph === graph && job.open === this.openVersion) return; // under way
    const now = performance.now();
    if (asked && asked.graph === graph && asked.open === this.openVersion && now - asked.at < RELAYOUT_MS) {
      if (!this.relayoutTimer) {
        this.relayoutTimer = setTimeout(() => { this.relayoutTimer = null; this.requestDraw(false); }, RELAYOUT_MS);
      }
      return;
    }
    job?.slices.cancel(); // made for other groups opened, or another graph
    const open = this.openVersion, version = graph.version;
    const slices = new Slices(describing(graph, new Set(this.open)), (view) => {
      this.describing = null;
      this.describeMs = slices.work;
      this.hasked = { graph, open, version, at: now };
      this.layout.post({ requests: view.requests }, { view, graph });
    }, () => { this.describing = null; }); // failed: described again at the next draw
    this.describing = { graph, open, slices };
  }

  /** A layout from the worker: drawn once its boxes and what drawing them needs are made, in slices. */
  layoutArrived(result, { view, graph }, release) {
    if (graph !== this.graph) { release(); return; }
    const boxes = new Map();
    const order = [];
    const next = { boxes, order, edges: view.edges, bands: view.bands,
      box: { left: 0, top: 0, right: Math.max(result.w, NODE_W), bottom: Math.max(result.h, NODE_H) } };
    const viewer = this;
    const steps = function* () { // the boxes, what drawing needs, their colours as they are now
      const b = result.boxes; // x, y, w, h of each unit (no copy per unit)
      for (let i = 0; i < result.keys.length; i++) {
        const key = result.keys[i], unit = view.units.get(key);
        if (!unit) continue;
        const at = 4 * i;
        const box = { x: b[at], y: b[at + 1], w: b[at + 2], h: b[at + 3], unit,
          open: unit.kind === "group" && view.open.has(key) }; // as laid out
        boxes.set(key, box);
        order.push(box);
        if (i % 2000 === 1999) yield;
      }
      next.prepared = yield* preparing(next);
      yield* tinting(next.prepared, viewer.currentLooks());
    };
    const slices = new Slices(steps(), () => {
      this.prepareMs = slices.work;
      if (graph === this.graph) {
        this.hview = next;
        this.layoutMs = result.ms;
        this.zoomToOpened(boxes);
        this.requestDraw();
      }
      release(); // the next layout may be asked for
    }, release);
  }

  // The first layout showing a group just opened (`zoomTo`, set by toggleGroup) brings it into
  // view whole: the camera fits its box, as large as the window allows (up to 1:1).
  zoomToOpened(boxes) {
    const box = this.zoomTo ? boxes.get(this.zoomTo) : null;
    if (!box?.open || !this.width) return;
    this.zoomTo = null;
    this.follow = false;
    this.camera.fit({ left: box.x, top: box.y, right: box.x + box.w, bottom: box.y + box.h }, this.width, this.height);
  }

  /**
   * The stamp of what looks depend on: the graph (a backward step, new nodes), the
   * selection, the step shown and the search. It changes when one of them did, and a look
   * worked out under one stamp is kept until the next (`cachedLookUnit`, the overview's box
   * colours).
   */
  refreshLooks() {
    const graph = this.graph;
    const seen = this.lookInputs;
    if (!seen || seen.graph !== graph || seen.version !== graph.version || seen.selected !== this.selected
      || seen.step !== this.stepIndex || seen.matches !== this.matchSet || seen.kind !== this.lastKind
      || seen.movers !== this.moverSet || seen.dead !== this.deadUnits().signature) {
      this.lookInputs = { graph, version: graph.version, selected: this.selected, step: this.stepIndex,
        matches: this.matchSet, kind: this.lastKind, movers: this.moverSet, dead: this.deadUnits().signature };
      this.lookStamp = (this.lookStamp ?? 0) + 1;
    }
    return this.lookStamp;
  }

  /** How units and nodes look now, each look worked out once per stamp (render.js). */
  currentLooks() {
    return {
      unit: (unit) => this.cachedLookUnit(unit),
      node: (node) => this.cachedLook(node),
      spread: (unit) => (unit.kind === "group" ? this.groupSpread(unit.ref) : null),
      stamp: this.refreshLooks(),
    };
  }

  /** A group's grad spread over the training steps (spread.js), kept until a step arrives. */
  groupSpread(group) {
    const cached = group.spreadCache;
    if (cached && cached.version === this.steps.version && cached.graph === this.graph) return cached.spread;
    const spread = gradSpread(this.steps, group, this.graph);
    group.spreadCache = { version: this.steps.version, graph: this.graph, spread };
    return spread;
  }

  /** The dead ReLU units at the numbers shown (spread.js): a training step changes them. */
  deadUnits() {
    return deadUnits(this.graph, this.shownRecord);
  }

  /** A shown unit's look, worked out once per stamp (kept on the unit). */
  cachedLookUnit(unit) {
    if (unit.lookStamp === this.lookStamp) return unit.look;
    this.looksWorked++;
    unit.lookStamp = this.lookStamp;
    return (unit.look = this.lookUnit(unit));
  }

  /** A node's look in the overview (an open group's node), worked out once per stamp. */
  cachedLook(node) {
    if (node.lookStamp === this.lookStamp) return node.look;
    this.looksWorked++;
    node.lookStamp = this.lookStamp;
    return (node.look = this.look(node));
  }

  /** How a shown group looks: its backward state, and whether it is selected. */
  lookUnit(unit) {
    const ref = unit.ref;
    const pass = this.graph.lastPass;
    const reached = unit.kind === "band" ? ref.bwDone : pass && ref.bwPass === pass.pass ? ref.bwDone : 0;
    const progress = ref.count ? reached / ref.count : 0;
    let state = reached >= ref.count ? "done" : reached > 0 ? "partial" : "plain";
    if (this.currentUnits?.has(unit.key)) state = "current";
    const dead = unit.kind === "group" && this.deadUnits().dead.has(unit.key);
    return { state, progress, reached, selected: this.selected === unit.key, match: false, dead };
  }

  // The keys of the groups holding the node of the current backward step.
  findCurrentUnits() {
    const node = this.currentStepNode();
    const keys = new Set();
    if (node) for (let unit = node.unit; unit && unit.parent; unit = unit.parent) keys.add(unit.key);
    return keys;
  }

  /** The detail view's positions when the graph has separate components (else null). */
  detailPositions() {
    const graph = this.graph;
    const cache = this.componentCache;
    const now = performance.now();
    // A costly layout (a big graph forced into the detail view) is redone at most every
    // twenty times its cost; a cheap one whenever the graph changed.
    if (cache && cache.graph === graph
      && (cache.version === graph.version || (cache.cost > 4 && now - cache.at < cache.cost * 20))) {
      return cache.positions;
    }
    const positions = componentLayout(graph);
    this.componentCache = { graph, version: graph.version, positions, at: now, cost: performance.now() - now };
    return positions;
  }

  /** Bring a node into view: centre on it unless it is already well inside the window. */
  centerOn(node, onlyIfHidden = false) {
    const scene = this.scene();
    if (!scene || !scene.inside(node.id)) return;
    const p = scene.pos(node);
    if (onlyIfHidden) {
      const [left, top] = this.camera.toWorld(40, 40);
      const [right, bottom] = this.camera.toWorld(this.width - 40, this.height - 40);
      const readable = this.camera.scale >= 0.3;
      if (readable && p.x >= left && p.x + NODE_W <= right && p.y >= top && p.y + NODE_H <= bottom) return;
    }
    this.follow = false;
    this.camera.centerOn(p.x + NODE_W / 2, p.y + NODE_H / 2, this.width, this.height);
  }

  zoom(factor) {
    this.follow = false;
    this.camera.zoomAt(this.width / 2, this.height / 2, factor);
    this.requestDraw();
  }

  fitView() {
    this.follow = true;
    this.fitCamera();
    this.requestDraw();
  }

  resize() {
    const stage = $("stage");
    this.width = stage.clientWidth;
    this.height = stage.clientHeight;
    this.canvas.width = Math.round(this.width * devicePixelRatio);
    this.canvas.height = Math.round(this.height * devicePixelRatio);
    this.canvas.style.width = `${this.width}px`;
    this.canvas.style.height = `${this.height}px`;
    if (this.follow) this.fitCamera();
    this.draw();
  }

  /**
   * Draw on the next frame. While a stream is still being applied (`urgent` false), draw at
   * most every DRAW_INTERVAL_MS: the time goes to applying events instead, and input still
   * gets its turn between slices. What the user does (`urgent`) is drawn at once.
   */
  requestDraw(urgent = true) {
    if (urgent) this.urgentDraw = true;
    if (this.drawRequested) return;
    this.drawRequested = true;
    requestAnimationFrame(() => this.frame());
  }

  frame() {
    const now = performance.now();
    const busy = this.frames.length > 0 || (!this.paused && this.waiting > 0);
    if (busy && !this.urgentDraw && now - (this.lastDraw ?? 0) < DRAW_INTERVAL_MS) {
      requestAnimationFrame(() => this.frame());
      return;
    }
    this.drawRequested = false;
    this.urgentDraw = false;
    this.lastDraw = now;
    this.draw();
  }

  /** The nodes drawn one by one: the whole graph, or the focused neighbourhood. */
  scene() {
    if (this.focus) {
      const sub = this.focus.sub;
      return {
        nodes: sub.nodes,
        pos: (node) => sub.positions.get(node.id),
        inside: (id) => (sub.inside.has(id) ? this.graph.nodes.get(id) : null),
      };
    }
    const nodes = this.graph.nodes;
    const positions = this.detailPositions(); // separate components side by side
    const pos = positions ? (node) => positions.get(node.id) ?? node : (node) => node;
    return { nodes: this.graph.order, pos, inside: (id) => nodes.get(id) };
  }

  fitCamera() {
    if (!this.width) return;
    const mode = this.mode;
    const box = mode === "aggregate" ? layoutGroups(this.graph).box
      : mode === "hierarchy" ? this.hview?.box ?? { left: 0, top: 0, right: NODE_W, bottom: NODE_H }
        : sceneBox(this.scene());
    this.camera.fit(box, this.width, this.height);
  }

  /** How a node looks right now: its backward state, and whether its grad is known yet. */
  look(node) {
    const pass = this.graph.lastPass;
    const look = {
      state: "plain", gradShown: true, selected: node.id === this.selected,
      match: this.matchSet.has(node.id) || this.moverSet.has(node.id), latest: false,
    };
    if (this.lastKind === "forward" && node === this.graph.latest) look.latest = true;
    if (!pass || node.bwPass !== pass.pass) return look;
    if (this.stepIndex !== null) {
      if (node.bwStep < this.stepIndex) look.state = "done";
      else if (node.bwStep === this.stepIndex) look.state = "current";
      else look.gradShown = false;
    } else {
      const current = !pass.done && node.bwStep === pass.steps.length - 1;
      look.state = current ? "current" : "done";
    }
    return look;
  }

  /** The node whose backward step is shown as current, if any. */
  currentStepNode() {
    const pass = this.graph.lastPass;
    if (!pass || !pass.steps.length) return null;
    if (this.stepIndex !== null) return this.graph.nodes.get(pass.steps[this.stepIndex].id);
    if (pass.done) return null;
    return this.graph.nodes.get(pass.steps[pass.steps.length - 1].id);
  }

  gradEdges() {
    const node = this.currentStepNode();
    if (!node) return [];
    const out = [];
    node.parents.forEach((id, k) => {
      const parent = this.graph.nodes.get(id);
      if (parent) out.push([parent, node, k]);
    });
    return out;
  }

  draw() {
    const { ctx, width, height } = this;
    if (!width) return;
    if (this.focus && this.focus.version !== this.graph.version && !this.paused) {
      this.focus.sub = this.graph.neighbourhood(this.focus.center);
      this.focus.version = this.graph.version;
    }
    const mode = this.mode;
    if (mode !== this.drawnMode && mode !== "focus") this.follow = true; // a new picture: fit it
    this.drawnMode = mode;
    if (this.follow) this.fitCamera();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (mode === "hierarchy") {
      this.updateHierarchy();
      this.currentUnits = this.findCurrentUnits();
      if (this.hview) {
        this.looksWorked = 0;
        const looks = this.currentLooks();
        // what was drawn, and how many looks were worked out: counters for the tests
        this.drawCounts = drawHierarchy(ctx, this.camera, width, height, this.hview, looks);
        this.drawCounts.looks = this.looksWorked;
        this.canvas.dataset.groups = String(this.hview.order.length);
        this.hview.drawn = true;
        this.firstGroupsAt ??= performance.now(); // for the figures of docs/viewer.md
      }
    } else if (mode === "aggregate") {
      const layout = layoutGroups(this.graph);
      drawGroups(ctx, this.camera, width, height, layout, this.selected);
    } else {
      drawScene(ctx, this.camera, width, height, this.scene(), (node) => this.look(node),
        () => this.gradEdges());
    }
    this.canvas.dataset.view = mode;
    $("empty").hidden = this.graph.size > 0 || this.staging !== null;
    this.updateStatus(mode);
    this.updateTimeline();
    this.updateList();
    this.tree.update();
    if (this.shownVersion !== this.graph.version) {
      this.shownVersion = this.graph.version;
      if (this.selected !== null) this.renderDetails();
    }
  }
}
