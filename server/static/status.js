// Status: the status bar (connection, stream, protocol, rate, nodes, backward pass,
// dropped and rejected events, pause) and the notice toast, all written as text.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $, setText } from "./dom.js";
import { nodeTitle } from "./render.js";
import { ownStreamUrl, shownUrl } from "./source.js";

export class Status {
  // The status bar names a stream that is not the page's own server, for as long as it is
  // shown: what the page draws then comes from elsewhere.
  showStreamUrl(url) {
    const element = $("st-url");
    const foreign = url !== null && url !== ownStreamUrl(location);
    element.hidden = !foreign;
    element.textContent = foreign ? `stream: ${shownUrl(url)} (not this page's server)` : "";
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

  notice(text) {
    const element = $("notice");
    element.textContent = text;
    element.hidden = false;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => { element.hidden = true; }, 5000);
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
    if (!this.embedded && document.title !== title) document.title = title;
    const pass = graph.lastPass;
    let passText = "no backward pass seen";
    if (pass) {
      const where = this.stepIndex !== null ? `step ${this.stepIndex + 1} of ${pass.steps.length}`
        : pass.error !== undefined ? `failed, grads rolled back`
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
}
