// The node list of the side panel: a table of the nodes (or the search's matches, or the
// focused neighbourhood), written as text, updated row by row as the graph changes, with
// the selection and the current backward step marked. It is the page's text for search,
// screen readers and tests, whatever the canvas shows.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $, setData, setText } from "./dom.js";
import { dataText, gradText, opText } from "./render.js";

const LIST_LIMIT = 400; // rows in the node list; search narrows it down

export class NodeList {
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
}
