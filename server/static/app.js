// The viewer page: one Viewer, whose state is listed here, and whose methods come from the
// modules named below, one job each. It receives trace events and applies them to the graph
// a slice at a time (so the tab never freezes), draws, and wires up the controls.
//
//   receive.js   bytes to events, checked and applied to the graph; rejected ones counted
//   streams.js   which stream is shown: the own server, a ?ws= one, or a recording
//   status.js    the status bar and the notice toast
//   controls.js  toolbar, keyboard, search, stepping, selection, focus
//   pointer.js   the mouse on the canvas
//   view.js      what is drawn and when: view mode, overview layout, camera, looks
//   list.js      the node list of the side panel
//   panel.js     the details panel (text only)
//   history.js   a node's History in the panel: its data and grad by training step
//   timeline.js  the training steps: slider, play, loss curve, step diff (store: steps.js)
//   dom.js       the tiny $/el/setText/factList helpers

import { Controls } from "./controls.js";
import { $ } from "./dom.js";
import { Graph } from "./graph.js";
import { LayoutClient } from "./groups.js";
import { History } from "./history.js";
import { NodeList } from "./list.js";
import { Panel } from "./panel.js";
import { Pointer } from "./pointer.js";
import { Receiving } from "./receive.js";
import { Camera } from "./render.js";
import { ownStreamUrl } from "./source.js";
import { Status } from "./status.js";
import { StepStore } from "./steps.js";
import { Streams } from "./streams.js";
import { Timeline } from "./timeline.js";
import { GroupTree } from "./tree.js";
import { View } from "./view.js";

const params = new URLSearchParams(location.search);

export class Viewer {
  /**
   * @param {{eventRoot?: EventTarget, comm?: object}} options where the keyboard is listened
   * to (the page's document, or a widget's shadow root); `comm`: a notebook widget's model,
   * whose kernel is the live stream (widget.js)
   */
  constructor({ eventRoot = document, comm = null } = {}) {
    this.eventRoot = eventRoot;
    this.comm = comm;
    this.embedded = comm !== null; // a widget leaves the notebook's title alone
    this.canvas = $("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.camera = new Camera();
    this.follow = true; // fit the camera to the graph as it grows, until the user moves it
    this.drawCounts = null; // what the last overview frame drew (render.js), for the tests
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
    this.layout = new LayoutClient((result, view, release) => this.layoutArrived(result, view, release));
    this.tree = new GroupTree($("group-tree"), this);
    this.resetSession();
    this.bindControls();
    this.bindTimeline();
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe($("stage"));
    this.rateTimer = setInterval(() => this.tickRate(), 1000);
    const channel = new MessageChannel();
    channel.port1.onmessage = () => this.pump();
    this.wakePort = channel.port2;
  }

  /** Stop for good (a notebook widget's view removed): the stream, the timers, the worker. */
  close() {
    this.source?.stop();
    this.source = null;
    this.resizer.disconnect();
    clearInterval(this.rateTimer);
    if (this.playTimer) this.togglePlaySteps(false);
    this.layout.worker?.terminate();
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
    this.rejections = []; // the reasons of the first 20 of them
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
    this.describing?.slices.cancel();
    this.describing = null; // {graph, open, slices}: the overview being described, a slice at a time
    this.zoomTo = null; // a group just opened: the camera fits it once a layout shows it
    this.componentCache = null;
    this.steps = new StepStore({ // training steps (steps.js); the bounds are page options
      historySteps: Number(params.get("history_steps")) || undefined,
      windowSteps: Number(params.get("window_steps")) || undefined,
    });
    this.shownStep = null; // the training step shown; null: the newest, following new ones
    this.compareStep = null; // the step the shown one is compared with, or null
    this.moverSet = new Set(); // ids of the nodes that moved most between them
    this.historyView = null; // the History table of the panel, kept between renders
    this.timelineKey = null;
    if (this.playTimer) this.togglePlaySteps(false);
    if (this.canvas) this.requestDraw();
  }
}

// Every module's methods (and getters) become the Viewer's. A name defined in two modules
// is a mistake, said at once rather than one silently replacing the other.
for (const part of [Receiving, Streams, Status, Controls, Pointer, View, NodeList, Panel, History, Timeline]) {
  for (const [name, descriptor] of Object.entries(Object.getOwnPropertyDescriptors(part.prototype))) {
    if (name === "constructor") continue;
    if (Object.hasOwn(Viewer.prototype, name)) throw new Error(`Viewer.${name} is defined twice`);
    Object.defineProperty(Viewer.prototype, name, descriptor);
  }
}

/** The viewer page's start (index.html): its own server's stream, unless `?live=0`. */
export function startPage() {
  const viewer = new Viewer();
  window.opgraphViewer = viewer; // for the console and the tests
  if (params.get("live") !== "0") viewer.startLive();
  else viewer.setConnection("offline", "live stream off: open a recording");
  viewer.offerRequestedStream();
}
