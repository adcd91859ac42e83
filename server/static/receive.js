// Receiving: frames of bytes decoded and applied to the graph a slice of time at a time (so
// the tab never freezes), each event checked first (validate.js) and an invalid one counted
// and rejected; hello, seq gaps, snapshots, compaction and the playback speed of recordings.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { Graph } from "./graph.js";
import { Reader } from "./msgpack.js";
import { lastPassProblem, problemWith } from "./validate.js";

const params = new URLSearchParams(location.search);
// Past this many nodes the page keeps only the newest half (and the inputs they use).
const MAX_NODES = Number(params.get("max_nodes")) || 400_000;
const SLICE_MS = 12; // work per slice before the page gets to draw and handle input
const DECODE_AHEAD = 20_000; // events decoded ahead of those applied; the rest stay bytes
// Events that may name a node of the latest training step by its own id (steps.js, alias).
const ALIASED = new Set(["forward", "data", "label", "backward", "backward_begin", "backward_end"]);
// hello and the snapshot markers repeat a seq instead of counting up.
const UNNUMBERED = new Set(["hello", "snapshot_begin", "snapshot_end"]);

export class Receiving {
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
    if (this.steps.current && ALIASED.has(type)) this.aliasIds(event);
    switch (type) {
      case "hello": return this.hello(event);
      case "forward":
        this.steps.noteId(event.id);
        this.graph.addNode(event);
        if (this.graph.size > MAX_NODES) this.compact();
        break;
      case "snapshot_begin":
        this.staging = new Graph();
        this.snapshotTotal = event.nodes ?? 0;
        this.snapshotPass = event.backward ?? null; // a pass in progress at the snapshot
        this.snapshotLastPass = this.lastPassOf(event); // the last pass that ended before it
        break;
      case "node": this.steps.noteId(event.id); target.addNode(event); break;
      case "snapshot_end": this.finishSnapshot(event); break;
      case "backward_begin":
        this.steps.notePass(event.pass);
        this.graph.beginPass(event.root, event.pass);
        break;
      case "backward": this.graph.backwardStep(event.id, event.grad); break;
      case "backward_end":
        this.graph.endPass(event.error);
        if (event.error !== undefined) this.notice(`Backward pass ${event.pass ?? ""} failed: ${event.error}`);
        break;
      case "data": this.graph.setData(event.id, event.data); break;
      case "label": this.graph.setLabel(event.id, event.label); break;
      case "dropped": this.dropped += event.count ?? 0; break;
      case "run": this.run(event); break;
      case "structure": this.structureEvent(event); break;
      case "step": this.stepEvent(event); break;
      case "history": this.historyEvent(event); break;
      default: return; // unknown kinds are ignored: the protocol grows by adding them
    }
    this.lastKind = type;
  }

  // After a values-only step, events may name its nodes by their ids (first + offsets[i]):
  // they are the structure's nodes, which the graph holds under the defining step's ids.
  aliasIds(event) {
    const steps = this.steps;
    if (event.id !== undefined) event.id = steps.alias(event.id);
    if (typeof event.root === "number") event.root = steps.alias(event.root);
    if (event.type === "forward") event.parents = event.parents.map((id) => steps.alias(id));
  }

  // Steps (docs/protocol.md): the store checks what needs its state, then keeps them; a
  // live step is shown on the graph (timeline.js), a snapshot's once the snapshot is in.
  structureEvent(event) {
    const problem = this.steps.structureProblem(event, this.staging !== null);
    if (problem) return this.reject(`'structure' event: ${problem}`, event);
    this.steps.addStructure(event);
  }

  stepEvent(event) {
    const problem = this.steps.stepProblem(event, this.staging !== null);
    if (problem) return this.reject(`'step' event: ${problem}`, event);
    const record = this.steps.addStep(event);
    if (!record) return this.notice(`Step ${event.step}'s graph is no longer kept: its numbers are not shown.`);
    if (!this.staging) this.trainingStepArrived(record);
  }

  historyEvent(event) {
    const problem = this.staging ? this.steps.historyProblem(event) : "a 'history' map comes only in a snapshot";
    if (problem) return this.reject(`'history' event: ${problem}`, event);
    this.steps.addHistory(event);
  }

  // An invalid event changes nothing: it is counted and its reason shown in the status bar.
  // A stream whose hello is invalid is refused as a whole, as a stream of another protocol.
  reject(problem, event) {
    this.rejected++;
    this.lastRejection = problem;
    this.rejections.push(problem); // the first ones, for the console and the tests
    if (this.rejections.length > 20) this.rejections.pop();
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

  // A snapshot's `last_pass`, checked apart: a bad one is rejected and the snapshot kept.
  lastPassOf(event) {
    if (event.last_pass === undefined) return null; // an older server, or no pass ended yet
    const problem = lastPassProblem(event.last_pass, event.nodes);
    if (!problem) return event.last_pass;
    this.reject(`'snapshot_begin' event: ${problem}`, event);
    return null;
  }

  finishSnapshot(event) {
    const old = this.graph;
    const fresh = this.staging ?? new Graph();
    this.staging = null;
    // Keep the backward passes seen so far, so stepping still works after a resync; a
    // viewer that joined after the last pass ended gets it from the snapshot.
    fresh.passes = old.passes;
    const last = this.snapshotLastPass;
    this.snapshotLastPass = null;
    if (last) this.keepLastPass(fresh, last);
    const pass = fresh.lastPass;
    if (pass) {
      pass.steps.forEach((step, index) => {
        const node = fresh.nodes.get(step.id);
        if (!node) return;
        node.bwPass = pass.pass;
        node.bwStep = index;
        fresh.countReached(node, pass.pass); // so groups say how many the pass reached
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
    // The snapshot's nodes hold the numbers as they are now (events after the latest step
    // included): the latest step's map is not applied again (docs/protocol.md).
    if (this.steps.latest) this.trainingStepArrived(this.steps.latest, false);
    if (this.selected !== null && typeof this.selected === "number" && !fresh.nodes.has(this.selected)) {
      this.selected = null;
    }
    if (this.focus) this.setFocus(fresh.nodes.get(this.focus.center.id) ?? null);
    this.listKey = null;
    this.matchesVersion = -1;
    if (fresh.size > MAX_NODES) this.compact();
  }

  // The snapshot's last pass replaces this viewer's copy of it if the viewer saw only a
  // part of it (it fell behind during the pass), and is added if the viewer never saw it.
  keepLastPass(graph, last) {
    const index = graph.passes.findIndex((seen) => seen.pass === last.pass);
    if (index >= 0 && graph.passes[index].done) return;
    const pass = graph.passFromSnapshot(last);
    if (index >= 0) graph.passes[index] = pass;
    else graph.passes.push(pass);
    if (graph.passes.length > 20) graph.passes.shift(); // keep the recent ones only
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

  tickRate() {
    this.eventsPerSecond = this.eventsThisSecond;
    this.eventsThisSecond = 0;
    this.requestDraw(false);
  }
}
