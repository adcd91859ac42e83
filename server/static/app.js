// The viewer page: receives trace events, applies them to the graph a slice at a time
// (so the tab never freezes), draws, and wires up the controls.

import { Graph } from "./graph.js";
import { Reader } from "./msgpack.js";
import { GroupTree } from "./tree.js";
import { FRAME_HEADER, LayoutClient, componentLayout, describeView, looseBands } from "./groups.js";
import {
  Camera, NODE_H, NODE_W, dataText, drawGroups, drawHierarchy, drawScene, gradText, layoutGroups,
  nodeTitle, opText, sceneBox,
} from "./render.js";
import { LiveSource, ownStreamUrl, readRecording, requestedStreamUrl, shownUrl } from "./source.js";
import { problemWith } from "./validate.js";

const params = new URLSearchParams(location.search);
// Above this many nodes the whole-graph view shows op groups per rank instead of nodes.
const THRESHOLD = Number(params.get("threshold")) || 3000;
// Past this many nodes the page keeps only the newest half (and the inputs they use).
const MAX_NODES = Number(params.get("max_nodes")) || 400_000;
const LIST_LIMIT = 400; // rows in the node list; search narrows it down
const SLICE_MS = 12; // work per slice before the page gets to draw and handle input
const DECODE_AHEAD = 20_000; // events decoded ahead of those applied; the rest stay bytes
const DRAW_INTERVAL_MS = 100; // while a stream is being applied, draw ~10 times a second
const RELAYOUT_MS = 400; // while the graph grows, the overview is laid out again this often
const $ = (id) => document.getElementById(id);

class Viewer {
  constructor() {
    this.canvas = $("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.camera = new Camera();
    this.follow = true; // fit the camera to the graph as it grows, until the user moves it
    this.frames = []; // Readers of received bytes not yet decoded
    this.pending = []; // decoded events waiting to be applied (while paused)
    this.pendingHead = 0;
    this.paused = false;
    this.rate = 0; // playback speed of a recording in events/s; 0: as fast as possible
    this.allowance = 0;
    this.source = null;
    this.streamUrl = ownStreamUrl(location); // the page's own server; another only by choice
    this.recording = null; // {name, bytes} while playing a recording
    this.scheduled = false;
    this.drawRequested = false;
    this.eventsThisSecond = 0;
    this.eventsPerSecond = 0;
    this.layout = new LayoutClient((result, view) => this.layoutArrived(result, view));
    this.tree = new GroupTree($("group-tree"), this);
    this.resetSession();
    this.bindControls();
    new ResizeObserver(() => this.resize()).observe($("stage"));
    setInterval(() => this.tickRate(), 1000);
    const channel = new MessageChannel();
    channel.port1.onmessage = () => this.pump();
    this.wakePort = channel.port2;
  }

  /** Forget everything about the current session: a new server or a new recording. */
  resetSession() {
    this.graph = new Graph();
    this.staging = null; // a snapshot being received
    this.session = null;
    this.ops = new Map(); // op name -> plugin name
    this.engineName = "";
    this.protocolVersion = null;
    this.lastSeq = 0;
    this.gaps = 0;
    this.dropped = 0;
    this.rejected = 0; // invalid events, not applied
    this.selected = null; // a node id, or a group key in the overview
    this.focus = null; // {center, sub}: the neighbourhood view of a big graph
    this.stepIndex = null; // stepping through the last backward pass
    this.query = "";
    this.matches = [];
    this.matchIndex = -1;
    this.matchSet = new Set();
    this.matchesVersion = -1;
    this.lastKind = "";
    this.listKey = null;
    this.shownVersion = -1;
    this.follow = true;
    this.open = new Set(); // keys of the scope groups opened in the overview
    this.openVersion = 0;
    this.hview = null; // the hierarchical overview as last laid out
    this.hasked = null; // what the last layout request was made from
    this.componentCache = null;
    if (this.canvas) this.requestDraw();
  }

  // --- receiving ------------------------------------------------------------------------

  receive(bytes) {
    this.frames.push(new Reader(bytes));
    this.wake();
  }

  wake() {
    if (this.scheduled) return;
    this.scheduled = true;
    this.wakePort.postMessage(0);
  }

  // Decode and apply events for one slice of time, then give the page back to the browser.
  pump() {
    this.scheduled = false;
    const deadline = performance.now() + SLICE_MS;
    let waitForAllowance = false;
    this.refillAllowance();
    while (performance.now() < deadline) {
      if (!this.paused && this.pendingHead < this.pending.length) {
        if (this.allowance < 1) { waitForAllowance = true; break; }
        this.allowance--;
        this.apply(this.pending[this.pendingHead++]);
        continue;
      }
      const reader = this.frames[0];
      if (!reader || this.waiting >= DECODE_AHEAD) break; // the rest waits as bytes
      if (reader.done) { this.frames.shift(); continue; }
      try {
        this.pending.push(reader.next());
        this.eventsThisSecond++;
      } catch (err) {
        this.notice(`Could not read the trace: ${err.message}`);
        this.frames.shift();
      }
    }
    if (this.pendingHead > 4096 && this.pendingHead * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.pendingHead);
      this.pendingHead = 0;
    }
    this.requestDraw(false);
    const work = (this.frames.length && this.waiting < DECODE_AHEAD)
      || (!this.paused && this.waiting > 0);
    if (waitForAllowance) setTimeout(() => this.wake(), Math.max(4, 1000 / this.rate));
    else if (work) this.wake();
  }

  // Events a recording may apply now at its playback speed (live streams: no limit).
  refillAllowance() {
    const now = performance.now();
    if (!this.rate || !this.recording) { this.allowance = Infinity; this.lastRefill = now; return; }
    if (!Number.isFinite(this.allowance)) this.allowance = 0;
    const elapsed = (now - (this.lastRefill ?? now)) / 1000;
    this.allowance = Math.min(this.allowance + elapsed * this.rate, Math.max(1, this.rate / 4));
    this.lastRefill = now;
  }

  get waiting() {
    return this.pending.length - this.pendingHead;
  }

  waitingText() {
    const events = `${this.waiting.toLocaleString("en-US")} events`;
    const bytes = this.frames.reduce((sum, reader) => sum + reader.bytes.length - reader.offset, 0);
    if (!bytes) return events;
    return `${events} and ${(bytes / 1e6).toFixed(1)} MB`;
  }

  /** Apply one protocol event (docs/protocol.md) to the model, once it proved valid. */
  apply(event) {
    const problem = problemWith(event);
    if (problem) return this.reject(problem, event);
    const type = event.type;
    if (this.refused && type !== "hello") return; // a stream this viewer cannot read
    if (!this.checkSeq(event)) return;
    const target = this.staging ?? this.graph;
    switch (type) {
      case "hello": return this.hello(event);
      case "forward":
        this.graph.addNode(event);
        if (this.graph.size > MAX_NODES) this.compact();
        break;
      case "snapshot_begin":
        this.staging = new Graph();
        this.snapshotTotal = event.nodes ?? 0;
        this.snapshotPass = event.backward ?? null; // a pass in progress at the snapshot
        break;
      case "node": target.addNode(event); break;
      case "snapshot_end": this.finishSnapshot(event); break;
      case "backward_begin": this.graph.beginPass(event.root, event.pass); break;
      case "backward": this.graph.backwardStep(event.id, event.grad); break;
      case "backward_end": this.graph.endPass(); break;
      case "data": this.graph.setData(event.id, event.data); break;
      case "label": this.graph.setLabel(event.id, event.label); break;
      case "dropped": this.dropped += event.count ?? 0; break;
      case "run": this.run(event); break;
      default: return; // unknown kinds are ignored: the protocol grows by adding them
    }
    this.lastKind = type;
  }

  // An invalid event changes nothing: it is counted and its reason shown in the status bar.
  // A stream whose hello is invalid is refused as a whole, as a stream of another protocol.
  reject(problem, event) {
    this.rejected++;
    this.lastRejection = problem;
    console.warn(`opgraph viewer: rejected an invalid event: ${problem}`);
    if (event?.type === "hello") this.refuse(`The stream's hello is invalid (${problem}); it was not read.`);
    this.requestDraw();
  }

  refuse(text) {
    this.refused = true;
    this.source?.stop();
    this.frames = [];
    this.notice(text);
  }

  // Live events, of every kind known or not, count up by one; anything at or below the
  // last seq was already applied. hello and the snapshot markers repeat a seq instead.
  checkSeq(event) {
    if (UNNUMBERED.has(event.type) || event.seq === undefined) return true;
    if (event.seq <= this.lastSeq) return false;
    if (event.seq > this.lastSeq + 1) this.gaps += event.seq - this.lastSeq - 1;
    this.lastSeq = event.seq;
    return true;
  }

  hello(event) {
    this.refused = event.protocol !== "opgraph" || event.version !== 1;
    if (this.refused) {
      this.refuse(`This viewer speaks opgraph protocol 1; the server sent ` +
        `${event.protocol} version ${event.version}. Upgrade the page or the server.`);
      return;
    }
    if (this.session !== null && event.session !== this.session) {
      const source = this.recording ? "recording" : "server";
      this.resetSession();
      this.notice(`New ${source} session: the view was cleared.`);
    }
    this.session = event.session;
    this.ops = new Map(Object.entries(event.ops ?? {}));
    this.engineName = event.engine ?? "";
    this.protocolVersion = event.version;
    this.lastSeq = event.seq ?? 0;
    this.lastKind = "hello";
  }

  finishSnapshot(event) {
    const old = this.graph;
    const fresh = this.staging ?? new Graph();
    this.staging = null;
    // Keep the backward passes seen so far, so stepping still works after a resync.
    fresh.passes = old.passes;
    const pass = fresh.lastPass;
    if (pass) {
      pass.steps.forEach((step, index) => {
        const node = fresh.nodes.get(step.id);
        if (node) { node.bwPass = pass.pass; node.bwStep = index; }
      });
    }
    // The snapshot was taken during a pass this viewer has not seen begin: the backward
    // maps that follow continue it (docs/protocol.md, "Snapshot").
    const inProgress = this.snapshotPass;
    this.snapshotPass = null;
    if (inProgress && typeof inProgress.pass === "number" && pass?.pass !== inProgress.pass) {
      fresh.beginPass(inProgress.root ?? null, inProgress.pass);
    }
    this.graph = fresh;
    this.lastSeq = event.seq ?? this.lastSeq;
    if (this.selected !== null && typeof this.selected === "number" && !fresh.nodes.has(this.selected)) {
      this.selected = null;
    }
    if (this.focus) this.setFocus(fresh.nodes.get(this.focus.center.id) ?? null);
    this.listKey = null;
    this.matchesVersion = -1;
    if (fresh.size > MAX_NODES) this.compact();
  }

  compact() {
    const keep = Math.floor(MAX_NODES / 2);
    this.graph = this.graph.compacted(keep);
    if (this.focus) this.setFocus(this.graph.nodes.get(this.focus.center.id) ?? null);
    if (typeof this.selected === "number" && !this.graph.nodes.has(this.selected)) this.selected = null;
    this.matchesVersion = -1;
    this.notice(`Over ${MAX_NODES.toLocaleString("en-US")} nodes: kept the newest ` +
      `${keep.toLocaleString("en-US")} and the inputs they use.`);
  }

  run(event) {
    if (event.state === "start") {
      for (const [op, plugin] of Object.entries(event.ops ?? {})) this.ops.set(op, plugin);
      this.notice(`Run ${event.source ?? ""} started`);
    } else if (event.state === "end") {
      this.notice(`Run ${event.source ?? ""} ended`);
    }
  }

  // --- sources --------------------------------------------------------------------------

  startLive() {
    const url = this.streamUrl;
    this.recording = null;
    this.showRecordingControls(false);
    this.source?.stop();
    this.source = null;
    this.showStreamUrl(url);
    if (!url) {
      this.setConnection("offline", "no server: open a recording");
      return;
    }
    this.source = new LiveSource(url, {
      onFrame: (bytes) => this.receive(bytes),
      onState: (state, detail) => this.setConnection(state, detail),
    });
    this.source.start();
  }

  /** Leave what is shown and connect to `url` (the user chose it). */
  switchStream(url) {
    this.streamUrl = url;
    this.frames = [];
    this.pending = [];
    this.pendingHead = 0;
    this.refused = false;
    this.resetSession();
    this.startLive();
  }

  // The status bar names a stream that is not the page's own server, for as long as it is
  // shown: what the page draws then comes from elsewhere.
  showStreamUrl(url) {
    const element = $("st-url");
    const foreign = url !== null && url !== ownStreamUrl(location);
    element.hidden = !foreign;
    element.textContent = foreign ? `stream: ${shownUrl(url)} (not this page's server)` : "";
  }

  /**
   * A link with `?ws=URL` asks the page to show another stream than its own server's. It
   * never connects by itself: the page names the URL and waits for the user to choose.
   */
  offerRequestedStream() {
    const requested = requestedStreamUrl(location);
    if (!requested) return;
    if (requested.error) {
      this.notice(`Ignored the link's ws= parameter: ${requested.error}`);
      return;
    }
    if (requested.url === this.streamUrl) return; // the page's own stream anyway
    $("ws-prompt-url").textContent = shownUrl(requested.url);
    $("ws-prompt").hidden = false;
    $("ws-connect").onclick = () => {
      $("ws-prompt").hidden = true;
      this.switchStream(requested.url);
    };
    $("ws-dismiss").onclick = () => { $("ws-prompt").hidden = true; };
  }

  // A Content-Security-Policy that forbids the connection (connect-src): say so, and stop
  // retrying, rather than "disconnected" forever.
  connectionRefusedByPolicy(event) {
    if (event.effectiveDirective !== "connect-src" || !this.source) return;
    const url = this.source.url;
    this.source.stop();
    this.source = null;
    this.setConnection("refused", `this page's Content-Security-Policy does not allow ` +
      `connecting to ${shownUrl(url)}`);
  }

  async openRecording(file) {
    const bytes = await readRecording(file);
    this.playRecording(file.name, bytes);
  }

  playRecording(name, bytes) {
    this.source?.stop();
    this.source = null;
    this.frames = [];
    this.pending = [];
    this.pendingHead = 0;
    this.resetSession();
    this.recording = { name, bytes };
    this.setPaused(false);
    this.showRecordingControls(true);
    this.setConnection("recording", name);
    this.showStreamUrl(null);
    this.receive(bytes);
  }

  showRecordingControls(shown) {
    $("speed").hidden = !shown;
    $("restart").hidden = !shown;
    $("live").hidden = !shown || !this.streamUrl;
  }

  setConnection(state, detail = "") {
    const element = $("st-conn");
    const text = {
      connecting: "connecting…",
      open: "connected",
      retrying: "disconnected, retrying…",
      closed: "disconnected",
      error: "error",
      offline: "offline",
      refused: `refused: ${detail}`,
      unreachable: detail,
      recording: `recording: ${detail}`,
    }[state] ?? state;
    element.dataset.state = state;
    element.textContent = text;
    element.title = detail;
  }

  // --- controls -------------------------------------------------------------------------

  setPaused(paused) {
    this.paused = paused;
    if (!paused) this.stepIndex = null;
    $("pause").textContent = paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(paused));
    this.listNow = true; // update the list on the next draw
    this.requestDraw();
    this.wake();
  }

  togglePause() {
    this.setPaused(!this.paused);
  }

  /** Step through the last backward pass: `to` is an index, or a move from the current one. */
  step(to) {
    const pass = this.graph.lastPass;
    if (!pass || !pass.steps.length) {
      this.notice("No backward pass to step through yet.");
      return;
    }
    if (!this.paused) this.setPaused(true);
    const last = pass.steps.length - 1;
    let index;
    if (to === "first") index = 0;
    else if (to === "last") index = last;
    else index = (this.stepIndex ?? last + (to > 0 ? 0 : 1)) + to;
    this.stepIndex = Math.max(0, Math.min(last, index));
    const node = this.graph.nodes.get(pass.steps[this.stepIndex].id);
    if (node) this.select(node, { center: true });
    this.listNow = true; // update the list on the next draw
    this.requestDraw();
  }

  leaveStepping() {
    if (this.stepIndex === null) return false;
    this.stepIndex = null;
    this.listNow = true; // update the list on the next draw
    this.requestDraw();
    return true;
  }

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

  select(node, { center = false } = {}) {
    this.selected = node ? node.id : null;
    if (node && center) {
      if (this.mode === "aggregate" || this.mode === "hierarchy") this.setFocus(node);
      this.centerOn(node, true);
    }
    this.renderDetails();
    this.updateListMarks();
    this.requestDraw();
  }

  selectGroup(group) {
    this.selected = group ? group.key : null;
    this.renderDetails();
    this.tree.changed();
    this.requestDraw();
  }

  /** Open a scope group of the overview (show what it holds) or close it. */
  toggleGroup(key, open = !this.open.has(key)) {
    if (open === this.open.has(key)) return;
    if (open) this.open.add(key);
    else this.open.delete(key);
    this.openVersion++;
    this.tree.changed();
    this.requestDraw();
  }

  /** The overview: lay it out again (in the worker) when the groups opened or the graph changed. */
  updateHierarchy() {
    const graph = this.graph;
    const asked = this.hasked;
    if (asked && asked.graph === graph && asked.open === this.openVersion && asked.version === graph.version) return;
    const now = performance.now();
    if (asked && asked.graph === graph && asked.open === this.openVersion && now - asked.at < RELAYOUT_MS) {
      if (!this.relayoutTimer) {
        this.relayoutTimer = setTimeout(() => { this.relayoutTimer = null; this.requestDraw(false); }, RELAYOUT_MS);
      }
      return;
    }
    const view = describeView(graph, this.open);
    this.hasked = { graph, open: this.openVersion, version: graph.version, at: now };
    this.layout.post({ requests: view.requests }, { view, graph });
  }

  layoutArrived(result, { view, graph }) {
    if (graph !== this.graph) return;
    const boxes = new Map();
    const order = [];
    result.keys.forEach((key, i) => {
      const unit = view.units.get(key);
      if (!unit) return;
      const [x, y, w, h] = result.boxes.slice(4 * i, 4 * i + 4);
      const box = { x, y, w, h, unit, open: unit.kind === "group" && this.open.has(key) };
      boxes.set(key, box);
      order.push(box);
    });
    this.hview = { boxes, order, edges: view.edges, bands: view.bands,
      box: { left: 0, top: 0, right: Math.max(result.w, NODE_W), bottom: Math.max(result.h, NODE_H) } };
    this.layoutMs = result.ms;
    this.requestDraw();
  }

  /** How a shown group looks: its backward state, and whether it is selected. */
  lookUnit(unit) {
    const ref = unit.ref;
    const pass = this.graph.lastPass;
    const reached = unit.kind === "band" ? ref.bwDone : pass && ref.bwPass === pass.pass ? ref.bwDone : 0;
    const progress = ref.count ? reached / ref.count : 0;
    let state = reached >= ref.count ? "done" : reached > 0 ? "partial" : "plain";
    if (this.currentUnits?.has(unit.key)) state = "current";
    return { state, progress, reached, selected: this.selected === unit.key, match: false };
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

  /** Show the neighbourhood of a node on its own (for graphs too big to draw whole). */
  setFocus(node) {
    if (!node) {
      this.focus = null;
    } else {
      this.focus = { center: node, sub: this.graph.neighbourhood(node), version: this.graph.version };
      this.follow = true;
    }
    $("leave-focus").hidden = !this.focus;
    this.listKey = null;
    this.requestDraw();
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

  search(query) {
    this.query = query;
    this.matchIndex = -1;
    this.tree.changed();
    this.updateMatches(true);
    this.listKey = null;
    this.requestDraw();
  }

  updateMatches(force = false) {
    if (!force && this.matchesVersion === this.graph.version) return;
    this.matchesVersion = this.graph.version;
    this.matches = this.query ? this.graph.search(this.query) : [];
    this.matchSet = new Set(this.matches.length <= 20000 ? this.matches.map((n) => n.id) : []);
    const info = this.query
      ? `${this.matches.length ? Math.max(1, this.matchIndex + 1) : 0} of ${this.matches.length}`
      : "";
    $("search-info").textContent = info;
  }

  /** Jump to the next (or previous) node matching the search. */
  nextMatch(direction = 1) {
    this.updateMatches(true);
    if (!this.matches.length) {
      $("search-info").textContent = this.query ? "no match" : "";
      return;
    }
    const n = this.matches.length;
    this.matchIndex = (this.matchIndex + direction + n) % n;
    this.select(this.matches[this.matchIndex], { center: true });
    $("search-info").textContent = `${this.matchIndex + 1} of ${n}`;
  }

  notice(text) {
    const element = $("notice");
    element.textContent = text;
    element.hidden = false;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => { element.hidden = true; }, 5000);
  }

  bindControls() {
    $("pause").onclick = () => this.togglePause();
    $("step-first").onclick = () => this.step("first");
    $("step-back").onclick = () => this.step(-1);
    $("step-forward").onclick = () => this.step(1);
    $("step-last").onclick = () => this.step("last");
    $("fit").onclick = () => this.fitView();
    $("leave-focus").onclick = () => this.setFocus(null);
    $("view-mode").onchange = () => { this.setFocus(null); this.fitView(); };
    $("open").onclick = () => $("file").click();
    $("file").onchange = () => {
      const file = $("file").files[0];
      if (file) this.openRecording(file);
      $("file").value = "";
    };
    $("speed").onchange = () => { this.rate = Number($("speed").value); this.wake(); };
    $("restart").onclick = () => this.recording && this.playRecording(this.recording.name, this.recording.bytes);
    $("live").onclick = () => this.switchStream(this.streamUrl);
    $("help-button").onclick = () => this.toggleHelp(true);
    $("help-close").onclick = () => this.toggleHelp(false);
    const search = $("search");
    search.oninput = () => this.search(search.value);
    search.onkeydown = (event) => {
      if (event.key === "Enter") { event.preventDefault(); this.nextMatch(event.shiftKey ? -1 : 1); }
      if (event.key !== "Escape") return;
      event.preventDefault();
      if (search.value) { search.value = ""; this.search(""); return; }
      search.blur();
      this.escape();
    };
    $("node-list").onclick = (event) => {
      const row = event.target.closest("tr[data-id]");
      if (row) this.select(this.graph.nodes.get(Number(row.dataset.id)), { center: true });
    };
    $("node-list").onkeydown = (event) => {
      const row = event.target.closest("tr[data-id]");
      if (!row || event.key !== "Enter") return;
      event.preventDefault();
      this.select(this.graph.nodes.get(Number(row.dataset.id)), { center: true });
    };
    $("details").onclick = (event) => this.detailsClick(event);
    document.addEventListener("keydown", (event) => this.keydown(event));
    document.addEventListener("securitypolicyviolation", (event) => this.connectionRefusedByPolicy(event));
    document.addEventListener("dragover", (event) => event.preventDefault());
    document.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer?.files?.[0];
      if (file) this.openRecording(file);
    });
    this.bindPointer();
  }

  detailsClick(event) {
    const target = event.target.closest("[data-goto],[data-focus],[data-toggle]");
    if (!target) return;
    if (target.dataset.toggle !== undefined) {
      this.toggleGroup(target.dataset.toggle);
      this.renderDetails();
      return;
    }
    if (target.dataset.focus !== undefined) {
      const node = this.graph.nodes.get(Number(target.dataset.focus));
      if (node) { this.setFocus(node); this.select(node); }
      return;
    }
    this.select(this.graph.nodes.get(Number(target.dataset.goto)), { center: true });
  }

  keydown(event) {
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Enter" && event.target === document.body && typeof this.selected === "string"
      && this.selected.startsWith("s:")) { // open or close the selected group
      event.preventDefault();
      this.toggleGroup(this.selected);
      return;
    }
    const actions = {
      " ": () => this.togglePause(),
      k: () => this.togglePause(),
      ArrowRight: () => this.step(event.shiftKey ? 10 : 1),
      ArrowLeft: () => this.step(event.shiftKey ? -10 : -1),
      PageDown: () => this.step(100),
      PageUp: () => this.step(-100),
      Home: () => this.step("first"),
      End: () => this.step("last"),
      "/": () => $("search").focus(),
      f: () => this.fitView(),
      "+": () => this.zoom(1.25),
      "=": () => this.zoom(1.25),
      "-": () => this.zoom(0.8),
      g: () => this.focusSelected(),
      v: () => this.cycleView(),
      o: () => $("file").click(),
      r: () => this.recording && this.playRecording(this.recording.name, this.recording.bytes),
      "?": () => this.toggleHelp(),
      Escape: () => this.escape(),
    };
    const action = actions[event.key.length === 1 ? event.key.toLowerCase() : event.key]
      ?? actions[event.key];
    if (!action) return;
    event.preventDefault();
    action();
  }

  escape() {
    if (!$("help").hidden) return this.toggleHelp(false);
    if (this.leaveStepping()) return;
    if (this.focus) return this.setFocus(null);
    this.select(null);
  }

  focusSelected() {
    const node = typeof this.selected === "number" ? this.graph.nodes.get(this.selected) : null;
    if (node) this.setFocus(node);
  }

  cycleView() {
    const select = $("view-mode");
    select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
    select.onchange();
  }

  toggleHelp(show = $("help").hidden) {
    $("help").hidden = !show;
    if (show) $("help-close").focus();
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

  bindPointer() {
    const canvas = this.canvas;
    let drag = null;
    canvas.addEventListener("pointerdown", (event) => {
      drag = { x: event.offsetX, y: event.offsetY, moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drag) return this.hover(event.offsetX, event.offsetY);
      const dx = event.offsetX - drag.x, dy = event.offsetY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return;
      drag.moved = true;
      this.follow = false;
      this.camera.x += dx;
      this.camera.y += dy;
      drag.x = event.offsetX;
      drag.y = event.offsetY;
      this.requestDraw();
    });
    canvas.addEventListener("pointerup", (event) => {
      if (drag && !drag.moved) this.click(event.offsetX, event.offsetY);
      drag = null;
    });
    canvas.addEventListener("pointerleave", () => this.hover(null));
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.follow = false;
      this.camera.zoomAt(event.offsetX, event.offsetY, Math.exp(-event.deltaY * 0.0015));
      this.requestDraw();
    }, { passive: false });
    canvas.addEventListener("dblclick", (event) => {
      const hit = this.hit(event.offsetX, event.offsetY);
      if (hit?.node) { this.setFocus(hit.node); this.select(hit.node); }
    });
  }

  hit(sx, sy) {
    const [x, y] = this.camera.toWorld(sx, sy);
    if (this.mode === "hierarchy") {
      const order = this.hview?.order ?? [];
      for (let i = order.length - 1; i >= 0; i--) { // the innermost first
        const box = order[i];
        if (x < box.x || x > box.x + box.w || y < box.y || y > box.y + box.h) continue;
        if (box.open && y > box.y + FRAME_HEADER) continue; // inside a frame: its content, or nothing
        return box.unit.kind === "node" ? { node: box.unit.ref } : { unit: box.unit };
      }
      return null;
    }
    if (this.mode === "aggregate") {
      for (const box of layoutGroups(this.graph).boxes.values()) {
        if (x >= box.x && x <= box.x + box.w && y >= box.y && y <= box.y + box.h) return { group: box.group };
      }
      return null;
    }
    const scene = this.scene();
    for (const node of scene.nodes) {
      const p = scene.pos(node);
      if (x >= p.x && x <= p.x + NODE_W && y >= p.y && y <= p.y + NODE_H) return { node };
    }
    return null;
  }

  /** A tooltip with the numbers of the node (or group) under the pointer. */
  hover(sx, sy) {
    const tip = $("tooltip");
    const hit = sx === null ? null : this.hit(sx, sy);
    if (!hit) { tip.hidden = true; return; }
    if (hit.node) {
      const node = hit.node;
      const look = this.look(node);
      const op = node.op ? ` · ${opText(node)}` : node.placeholder ? " · unseen" : " · leaf";
      tip.textContent = `${nodeTitle(node)}${op}\ndata ${dataText(node)}\n` +
        `grad ${gradText(node, look, "not reached yet")}`;
    } else if (hit.unit) {
      const ref = hit.unit.ref;
      const look = this.lookUnit(hit.unit);
      tip.textContent = `${ref.path ?? `${ref.op} · ${ref.ranks}`}\n${ref.count.toLocaleString("en-US")} nodes` +
        (look.reached ? `\n${look.reached.toLocaleString("en-US")} reached by the backward pass` : "");
    } else {
      const group = hit.group;
      tip.textContent = `${group.op} · ${group.ranks}\n${group.count.toLocaleString("en-US")} nodes`;
    }
    tip.style.left = `${sx + 14}px`;
    tip.style.top = `${sy + 14}px`;
    tip.hidden = false;
  }

  click(sx, sy) {
    const hit = this.hit(sx, sy);
    if (hit?.unit) {
      if (hit.unit.kind === "group") this.toggleGroup(hit.unit.key);
      this.selectGroup(hit.unit.ref);
    } else if (hit?.group) this.selectGroup(hit.group);
    else this.select(hit?.node ?? null);
  }

  // --- drawing --------------------------------------------------------------------------

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
      match: this.matchSet.has(node.id), latest: false,
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
        this.drawCounts = drawHierarchy(ctx, this.camera, width, height, this.hview, (unit) => this.lookUnit(unit),
          (node) => this.look(node)); // what was drawn: counters for the tests
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
    this.updateList();
    this.tree.update();
    if (this.shownVersion !== this.graph.version) {
      this.shownVersion = this.graph.version;
      if (this.selected !== null) this.renderDetails();
    }
  }

  updateStatus(mode) {
    const graph = this.graph;
    const nodes = graph.size.toLocaleString("en-US");
    $("st-proto").textContent = this.protocolVersion
      ? `opgraph v${this.protocolVersion}${this.engineName ? ` · ${this.engineName}` : ""}`
      : "protocol –";
    $("st-rate").textContent = `${this.eventsPerSecond.toLocaleString("en-US")} ev/s`;
    $("st-nodes").textContent = this.staging
      ? `${nodes} nodes (loading snapshot ${this.staging.size.toLocaleString("en-US")} of ${(this.snapshotTotal ?? 0).toLocaleString("en-US")})`
      : `${nodes} nodes`;
    $("st-nodes").dataset.count = String(graph.size);
    const title = `opgraph · ${nodes} nodes${this.paused ? " · paused" : ""}`;
    if (document.title !== title) document.title = title;
    const pass = graph.lastPass;
    let passText = "no backward pass seen";
    if (pass) {
      const where = this.stepIndex !== null ? `step ${this.stepIndex + 1} of ${pass.steps.length}`
        : pass.done ? `done, ${pass.steps.length} steps` : `running, ${pass.steps.length} steps`;
      passText = `backward pass ${pass.pass}: ${where}`;
    }
    $("st-pass").textContent = passText;
    // `gaps`: events missing from the sequence without a `dropped` to say so (never, unless
    // something is wrong between the server and this page).
    const missing = this.gaps ? `, ${this.gaps.toLocaleString("en-US")} missing` : "";
    $("st-dropped").textContent = `${this.dropped.toLocaleString("en-US")} dropped${missing}`;
    $("st-dropped").classList.toggle("warn", this.dropped > 0 || this.gaps > 0);
    const rejected = $("st-rejected");
    rejected.hidden = this.rejected === 0;
    setText(rejected, this.rejected
      ? `${this.rejected.toLocaleString("en-US")} invalid events rejected, the last: ${this.lastRejection}` : "");
    $("st-paused").textContent = this.paused ? `paused · ${this.waitingText()} waiting` : "";
    const stepInfo = this.stepIndex !== null && pass ? `step ${this.stepIndex + 1}/${pass.steps.length}` : "";
    $("step-info").textContent = stepInfo;
    const current = this.currentStepNode();
    const view = { detail: "every node", aggregate: "op groups by rank", focus: "a node's neighbourhood",
      hierarchy: "groups by scope" }[mode];
    this.canvas.setAttribute("aria-label",
      `Computation graph of ${nodes} nodes, showing ${view}.` +
      (current ? ` Backward step at ${nodeTitle(current)}.` : ""));
  }

  // --- the node list and the details panel (the page's text, for search, screen readers
  // and tests, whatever the canvas shows) -------------------------------------------------

  listedNodes() {
    if (this.query) return this.matches.slice(0, LIST_LIMIT);
    if (this.focus) return this.focus.sub.nodes.slice(0, LIST_LIMIT);
    return this.graph.order.slice(0, LIST_LIMIT);
  }

  updateList() {
    const now = performance.now();
    const due = this.listKey === null || this.listNow || now - (this.listUpdated ?? 0) >= 150;
    if (!due) return;
    this.listNow = false;
    this.listUpdated = now;
    if (this.query) this.updateMatches();
    const graph = this.graph;
    const total = this.query ? this.matches.length : this.focus ? this.focus.sub.nodes.length : graph.size;
    const key = `${this.query}|${this.focus?.center.id}|${this.focus?.version}`;
    const listed = this.listedNodes();
    const body = $("node-list").tBodies[0];
    if (key === this.listKey && this.listGraph === graph && this.startsWithShown(listed)) {
      // The same list, maybe longer: add the new rows, redraw the rows of changed nodes.
      const fragment = document.createDocumentFragment();
      for (const node of listed.slice(this.listIds.length)) {
        fragment.append(this.makeRow(node));
        this.listIds.push(node.id);
      }
      body.append(fragment);
      for (const id of graph.changed) {
        const row = this.rows.get(id);
        if (row) this.fillRow(row, graph.nodes.get(id));
      }
    } else {
      this.listKey = key;
      this.listGraph = graph;
      this.rows = new Map();
      this.listIds = listed.map((node) => node.id);
      const fragment = document.createDocumentFragment();
      for (const node of listed) fragment.append(this.makeRow(node));
      body.replaceChildren(fragment);
      this.listMarks = null;
      this.selectedRow = this.currentRow = null;
    }
    graph.changed.clear();
    const what = this.query ? "matches" : this.focus ? "in the neighbourhood" : "nodes";
    setText($("list-count"), `${total.toLocaleString("en-US")} ${what}`);
    setText($("list-more"), total > LIST_LIMIT
      ? `Showing the first ${LIST_LIMIT}; search to find the others.` : "");
    this.updateListMarks();
  }

  startsWithShown(listed) {
    const ids = this.listIds;
    if (listed.length < ids.length) return false;
    for (let i = 0; i < ids.length; i++) if (listed[i].id !== ids[i]) return false;
    return true;
  }

  makeRow(node) {
    const row = document.createElement("tr");
    row.dataset.id = String(node.id);
    row.tabIndex = 0; // rows are reachable with Tab; Enter selects one
    for (let i = 0; i < 5; i++) row.append(document.createElement("td"));
    this.fillRow(row, node);
    this.rows.set(node.id, row);
    return row;
  }

  // Only what changed is written: every write to the page costs a style recalculation.
  fillRow(row, node) {
    if (!node) return;
    const look = this.look(node);
    const cells = row.cells;
    setText(cells[0], String(node.id));
    setText(cells[1], node.label);
    setText(cells[2], node.op ? opText(node) : node.placeholder ? "unseen" : "leaf");
    setText(cells[3], dataText(node));
    setText(cells[4], gradText(node, look));
    setData(row, "label", node.label);
    setData(row, "op", node.op ?? "");
    setData(row, "data", String(node.data));
    setData(row, "grad", String(node.grad));
    setData(row, "state", look.state);
    const inPass = node.bwStep >= 0 && node.bwPass === this.graph.lastPass?.pass;
    setData(row, "bwStep", inPass ? String(node.bwStep) : undefined);
  }

  // Selection and the current backward step change only a few rows' marks.
  updateListMarks() {
    if (!this.rows) return;
    const pass = this.graph.lastPass;
    const marks = `${this.stepIndex}|${pass?.pass}|${pass?.done}|${this.graph === this.listGraph}`;
    if (marks !== this.listMarks) { // every row's look may have changed
      this.listMarks = marks;
      for (const row of this.rows.values()) this.fillRow(row, this.graph.nodes.get(Number(row.dataset.id)));
    }
    this.markRow("selectedRow", typeof this.selected === "number" ? this.selected : null,
      (row, on) => row.classList.toggle("selected", on));
    this.markRow("currentRow", this.currentStepNode()?.id ?? null, (row, on) => {
      if (on) row.setAttribute("aria-current", "step");
      else row.removeAttribute("aria-current");
      this.fillRow(row, this.graph.nodes.get(Number(row.dataset.id)));
    });
  }

  // Move a mark (selection, current step) from the row that has it to the row of `id`.
  markRow(slot, id, mark) {
    const row = id === null ? null : this.rows.get(id) ?? null;
    const old = this[slot];
    if (old === row && (!row || row.isConnected)) return;
    if (old && old.isConnected) mark(old, false);
    if (row) mark(row, true);
    this[slot] = row;
  }

  // The panel is built from DOM nodes whose text is set as text: a label, an op or a
  // plugin name is never read as HTML, whatever a trace puts in it.
  renderDetails() {
    const panel = $("details");
    if (this.selected === null) {
      panel.replaceChildren(el("p", { className: "hint" }, "Click a node, or search, to see its details."));
      return;
    }
    if (typeof this.selected === "string") {
      return this.selected.startsWith("s:") ? this.renderScope(panel) : this.renderGroup(panel);
    }
    const node = this.graph.nodes.get(this.selected);
    if (!node) return;
    const look = this.look(node);
    const pass = this.graph.lastPass;
    const step = node.bwPass === pass?.pass && node.bwStep >= 0
      ? `step ${node.bwStep + 1} of ${pass.steps.length} in pass ${pass.pass}` : "not in the last pass";
    const facts = [
      ["id", "id", String(node.id)],
      ["op", "op", node.op ?? (node.placeholder ? "not seen by this viewer" : "leaf (input or parameter)")],
      node.op && ["plugin", "plugin", this.ops.get(node.op) ?? "unknown plugin"],
      node.const && ["constants", "const", node.const.map(String).join(", ")],
      ["data", "data", node.placeholder ? "?" : String(node.data)],
      ["grad", "grad", node.placeholder ? "?" : look.gradShown ? String(node.grad) : "not reached yet"],
      ["rank", "rank", String(node.rank)],
      ["backward", "step", step],
    ];
    const inputs = node.parents.map((id, k) => this.nodeLink(id, `input ${k + 1}`));
    const users = node.children.slice(0, 12).map((id) => this.nodeLink(id));
    if (node.children.length > 12) users.push(el("li", {}, `… ${node.children.length - 12} more`));
    panel.replaceChildren(
      el("h2", { className: "node-title" }, nodeTitle(node)),
      factList(facts),
      ...linkList("Inputs", inputs),
      ...linkList("Used by", users),
      el("button", { dataset: { focus: String(node.id) }, title: "Show this node's neighbourhood on its own (G)" },
        "Focus on neighbourhood"),
    );
  }

  nodeLink(id, prefix = "") {
    const node = this.graph.nodes.get(id);
    const button = el("button", { className: "link", dataset: { goto: String(id) } });
    if (prefix) button.append(el("span", { className: "muted" }, prefix), " ");
    button.append(node ? nodeTitle(node) : `#${id}`);
    if (node) button.append(` = ${dataText(node)}`);
    if (node?.op) button.append(" ", el("span", { className: "op" }, opText(node)));
    return el("li", {}, button);
  }

  // A scope group's details; its path is a trace's text, shown as text.
  renderScope(panel) {
    const group = this.graph.scopes.byPath.get(this.selected.slice(2));
    if (!group) return;
    const look = this.lookUnit({ kind: "group", key: group.key, ref: group });
    const members = group.ids.slice(0, 30).map((id) => this.nodeLink(id));
    if (group.ids.length > 30) members.push(el("li", {}, `… ${group.ids.length - 30} more`));
    const open = this.open.has(group.key);
    panel.replaceChildren(
      el("h2", { className: "group-title" }, group.path),
      factList([
        ["nodes", "count", group.count.toLocaleString("en-US")],
        ["groups", "groups", String(group.children.size)],
        ["backward", "step", `${look.reached} of ${group.count} reached in the last pass`],
      ]),
      ...(members.length ? [el("h3", {}, "Nodes"), el("ul", { className: "links" }, ...members)] : []),
      el("button", { dataset: { toggle: group.key } }, open ? "Close the group" : "Open the group"),
    );
  }

  renderGroup(panel) {
    if (this.selected.startsWith("r:")) return this.renderBand(panel);
    const group = this.graph.bands().groups.get(this.selected);
    if (!group) return;
    const firstIds = [];
    for (const member of group.members) {
      firstIds.push(...member.ids.slice(0, 30 - firstIds.length));
      if (firstIds.length >= 30) break;
    }
    const members = firstIds.map((id) => this.nodeLink(id));
    if (group.count > 30) members.push(el("li", {}, `… ${group.count - 30} more`));
    panel.replaceChildren(
      el("h2", {}, `${group.op} · ${group.ranks}`),
      factList([
        ["nodes", "count", String(group.count)],
        ["plugin", "plugin", this.ops.get(group.op) ?? "–"],
        ["backward", "step", `${group.bwDone} of ${group.count} reached in the last pass`],
      ]),
      el("h3", {}, "Members"),
      el("ul", { className: "links" }, ...members),
      el("p", { className: "hint" }, "Click a member to focus on its neighbourhood."),
    );
  }

  // A band of unscoped nodes in the hierarchical overview.
  renderBand(panel) {
    const band = looseBands(this.graph).bands.get(this.selected);
    if (!band) return;
    const ids = [];
    for (const member of band.members) {
      ids.push(...member.ids.slice(0, 30 - ids.length));
      if (ids.length >= 30) break;
    }
    const members = ids.map((id) => this.nodeLink(id));
    if (band.count > 30) members.push(el("li", {}, `… ${band.count - 30} more`));
    panel.replaceChildren(
      el("h2", {}, `${band.op} · ${band.ranks} · no scope`),
      factList([
        ["nodes", "count", String(band.count)],
        ["plugin", "plugin", this.ops.get(band.op) ?? "–"],
        ["backward", "step", `${band.bwDone} of ${band.count} reached in the last pass`],
      ]),
      el("h3", {}, "Members"),
      el("ul", { className: "links" }, ...members),
    );
  }

  tickRate() {
    this.eventsPerSecond = this.eventsThisSecond;
    this.eventsThisSecond = 0;
    this.requestDraw(false);
  }
}

const UNNUMBERED = new Set(["hello", "snapshot_begin", "snapshot_end"]);

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function setData(element, key, value) {
  if (element.dataset[key] === value) return;
  if (value === undefined) delete element.dataset[key];
  else element.dataset[key] = value;
}

/** An element with properties (`dataset` merged) and children (strings become text). */
function el(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(element, rest);
  if (dataset) Object.assign(element.dataset, dataset);
  element.append(...children);
  return element;
}

// The details' facts: [name, data-field, text] rows, skipping the false ones.
function factList(facts) {
  const list = el("dl", { className: "facts" });
  for (const fact of facts) {
    if (!fact) continue;
    const [name, field, text] = fact;
    list.append(el("dt", {}, name), el("dd", { dataset: { field } }, text));
  }
  return list;
}

function linkList(title, items) {
  return items.length ? [el("h3", {}, title), el("ul", { className: "links" }, ...items)] : [];
}

const viewer = new Viewer();
window.opgraphViewer = viewer; // for the console and the tests
if (params.get("live") !== "0") viewer.startLive();
else viewer.setConnection("offline", "live stream off: open a recording");
viewer.offerRequestedStream();
