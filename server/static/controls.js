// Controls: the toolbar, the keyboard, search, stepping back and forth through the last
// backward pass, pausing, selecting a node or group, opening groups, and focusing on a
// neighbourhood. What the mouse does on the canvas is pointer.js.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $ } from "./dom.js";

export class Controls {
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
    this.zoomTo = open ? key : null; // the layout that shows it opened brings it into view
    this.openVersion++;
    this.tree.changed();
    this.requestDraw();
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
    // The page's document, or a widget's shadow root: keys typed in a notebook's cells are
    // not the viewer's.
    const events = this.eventRoot;
    events.addEventListener("keydown", (event) => this.keydown(event));
    events.addEventListener("securitypolicyviolation", (event) => this.connectionRefusedByPolicy(event));
    events.addEventListener("dragover", (event) => event.preventDefault());
    events.addEventListener("drop", (event) => {
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
      "[": () => this.moveTrainingStep(-1),
      "]": () => this.moveTrainingStep(1),
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
}
