// The overview's groups as text: a tree in the side panel (role="tree", one treeitem per
// shown group or node, aria-level and aria-expanded), so that the groups can be searched,
// walked with the keyboard, read by screen readers and tests. Names are a trace's text:
// they are set as text, never read as HTML.

import { $ } from "./dom.js";
import { looseBands } from "./groups.js";
import { nodeTitle } from "./render.js";

const NODES_LISTED = 50; // nodes listed under an open group; the others are counted
const ITEMS_LIMIT = 2000; // items in the tree at most
const UPDATE_MS = 150;

export class GroupTree {
  constructor(element, viewer) {
    this.element = element;
    this.viewer = viewer;
    this.key = null; // what the tree shows was made from
    this.focusKey = null; // the item reachable with Tab (roving tabindex)
    element.addEventListener("keydown", (event) => this.keydown(event));
    element.addEventListener("focusin", (event) => {
      const item = event.target.closest("[role=treeitem]");
      if (item) this.focusKey = item.dataset.key;
    });
    element.addEventListener("click", (event) => {
      const item = event.target.closest("[role=treeitem]");
      if (!item) return;
      this.focusKey = item.dataset.key;
      this.activate(item, true);
    });
  }

  /** Something the tree shows changed: update it on the next draw. */
  changed() {
    this.dirty = true;
  }

  update() {
    const viewer = this.viewer;
    const graph = viewer.graph;
    const section = this.element.closest("section");
    const scoped = graph.scopes.scoped > 0 || viewer.mode === "hierarchy";
    if (section.hidden === scoped) section.hidden = !scoped;
    if (!scoped) return;
    const now = performance.now();
    const key = `${graph.version}|${viewer.openVersion}|${viewer.query}|${viewer.selected}|${viewer.stepIndex}`
      + `|${viewer.shownRecord?.step}|${viewer.steps.latest?.step}`; // a training step shown: dead units
    if (key === this.key && this.listedGraph === graph) return;
    if (!this.dirty && this.listedGraph === graph && now - (this.updated ?? 0) < UPDATE_MS) return;
    this.dirty = false;
    this.updated = now;
    this.key = key;
    this.listedGraph = graph;
    this.render(viewer.query ? this.found(viewer.query) : this.shown());
  }

  // Items of the tree as shown: the top groups, and inside each open group its groups and
  // its first nodes.
  shown() {
    const viewer = this.viewer;
    const graph = viewer.graph;
    const items = [];
    const walk = (group, level) => {
      for (const child of sortedChildren(group)) {
        if (items.length >= ITEMS_LIMIT) return;
        items.push(this.groupItem(child, level));
        if (viewer.open.has(child.key)) walk(child, level + 1);
      }
      if (group === graph.scopes.root) return;
      for (const id of group.ids.slice(0, NODES_LISTED)) {
        const node = graph.nodes.get(id);
        if (node) items.push({ key: `n:${id}`, level, text: `${nodeTitle(node)} · ${node.op ?? "leaf"}`, node });
      }
      if (group.ids.length > NODES_LISTED) {
        items.push({ key: `more:${group.key}`, level, text: `… ${group.ids.length - NODES_LISTED} more nodes` });
      }
    };
    walk(graph.scopes.root, 1);
    const bands = [...looseBands(graph).bands.values()].sort((a, b) => a.firstId - b.firstId);
    for (const band of bands.slice(0, 200)) {
      const look = viewer.lookUnit({ kind: "band", key: band.key, ref: band });
      items.push({ key: band.key, level: 1, text: `${band.op} · ${band.ranks} · ${count(band.count)}`,
        look, group: band });
    }
    return items;
  }

  // Groups whose path holds the query, each with its whole path.
  found(query) {
    return this.viewer.graph.scopes.search(query).map((group) => ({
      ...this.groupItem(group, 1), text: `${group.path} · ${count(group.count)}`,
    }));
  }

  groupItem(group, level) {
    const look = this.viewer.lookUnit({ kind: "group", key: group.key, ref: group });
    const inside = this.viewer.deadUnits().within.get(group.key);
    const dead = look.dead ? " · dead" : inside ? ` · ${inside} dead unit${inside === 1 ? "" : "s"}` : "";
    return { key: group.key, level, text: `${group.name} · ${count(group.count)}${dead}`, group, look,
      expanded: this.viewer.open.has(group.key), expandable: group.children.size > 0 || group.ids.length > 0 };
  }

  render(items) {
    const hadFocus = this.element.contains(document.activeElement);
    const viewer = this.viewer;
    if (!items.some((item) => item.key === this.focusKey)) this.focusKey = items[0]?.key ?? null;
    const fragment = document.createDocumentFragment();
    let focused = null;
    for (const item of items) {
      const li = document.createElement("li");
      li.setAttribute("role", "treeitem");
      li.setAttribute("aria-level", String(item.level));
      li.dataset.key = item.key;
      li.style.paddingLeft = `${(item.level - 1) * 14 + 4}px`;
      li.textContent = item.text; // a trace's text, never HTML
      if (item.group?.path) li.title = item.group.path;
      if (item.expandable) li.setAttribute("aria-expanded", String(item.expanded));
      if (item.look) {
        li.dataset.state = item.look.state;
        if (item.look.dead) li.dataset.dead = "true";
        li.dataset.reached = String(item.look.reached);
        li.dataset.count = String(item.group.count);
      }
      li.setAttribute("aria-selected", String(viewer.selected === item.key
        || (item.node !== undefined && viewer.selected === item.node.id)));
      li.tabIndex = item.key === this.focusKey ? 0 : -1;
      if (li.tabIndex === 0) focused = li;
      fragment.append(li);
    }
    this.element.replaceChildren(fragment);
    const total = viewer.graph.scopes.byPath.size - 1;
    const info = $("tree-count");
    info.textContent = viewer.query ? `${items.length} matching groups` : `${total.toLocaleString("en-US")} groups`;
    if (hadFocus && focused) focused.focus();
  }

  /** Select an item (a group: also open or close it when `toggle`). */
  activate(item, toggle) {
    const viewer = this.viewer;
    const key = item.dataset.key;
    if (key.startsWith("n:")) {
      viewer.select(viewer.graph.nodes.get(Number(key.slice(2))) ?? null);
      return;
    }
    if (key.startsWith("s:")) {
      const group = viewer.graph.scopes.byPath.get(key.slice(2));
      if (!group) return;
      if (toggle) viewer.toggleGroup(key);
      this.showInOverview(group);
      viewer.selectGroup(group);
      return;
    }
    if (key.startsWith("r:")) {
      const band = looseBands(viewer.graph).bands.get(key);
      if (band) viewer.selectGroup(band);
    }
  }

  // Open the enclosing groups of a group found by search, so that it is shown.
  showInOverview(group) {
    for (let g = group.parent; g && g.parent; g = g.parent) this.viewer.toggleGroup(g.key, true);
  }

  // Arrow keys move and open or close, Enter selects, as in a file tree (WAI-ARIA tree).
  keydown(event) {
    const item = event.target.closest("[role=treeitem]");
    if (!item) return;
    const items = [...this.element.querySelectorAll("[role=treeitem]")];
    const index = items.indexOf(item);
    const expanded = item.getAttribute("aria-expanded");
    const move = (to) => {
      const target = items[Math.max(0, Math.min(items.length - 1, to))];
      if (!target) return;
      this.focusKey = target.dataset.key;
      for (const other of items) other.tabIndex = other === target ? 0 : -1;
      target.focus();
    };
    const key = item.dataset.key;
    const actions = {
      ArrowDown: () => move(index + 1),
      ArrowUp: () => move(index - 1),
      Home: () => move(0),
      End: () => move(items.length - 1),
      ArrowRight: () => {
        if (expanded === "false") this.viewer.toggleGroup(key, true);
        else if (expanded === "true") move(index + 1);
      },
      ArrowLeft: () => {
        if (expanded === "true") { this.viewer.toggleGroup(key, false); return; }
        const level = Number(item.getAttribute("aria-level"));
        for (let i = index - 1; i >= 0; i--) {
          if (Number(items[i].getAttribute("aria-level")) < level) { move(i); return; }
        }
      },
      Enter: () => this.activate(item, false),
      " ": () => this.activate(item, false),
    };
    const action = actions[event.key];
    if (!action) return;
    event.preventDefault();
    event.stopPropagation(); // the page's own keys (stepping, pause) do not apply here
    action();
    this.update(); // at once: the next key moves among the items as they are now
  }
}

// One formatter for every count: toLocaleString makes one per call, ~10 µs each, which was
// half of a refresh of 2,000 items.
const NUMBER = new Intl.NumberFormat("en-US");

function count(n) {
  return `${NUMBER.format(n)} node${n === 1 ? "" : "s"}`;
}

// A group's children in arrival order (of their first node), sorted again only when a child
// was added or the order no longer holds: a refresh of the tree of 100,000 top groups while
// a stream arrives no longer copies and sorts them all (children are never removed).
function sortedChildren(group) {
  const cached = group.sortedChildren;
  if (cached && cached.length === group.children.size && inOrder(cached)) return cached;
  group.sortedChildren = [...group.children.values()].sort((a, b) => a.firstId - b.firstId);
  return group.sortedChildren;
}

function inOrder(children) {
  for (let i = 1; i < children.length; i++) if (children[i - 1].firstId > children[i].firstId) return false;
  return true;
}
