// Pointer: the mouse on the canvas: drag to pan, wheel to zoom, what is under the pointer
// (a node, a group), its tooltip, click to select or open, double-click to focus.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $ } from "./dom.js";
import { FRAME_HEADER } from "./groups.js";
import { NODE_H, NODE_W, dataText, gradText, layoutGroups, nodeTitle, opText } from "./render.js";

export class Pointer {
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
        (look.reached ? `\n${look.reached.toLocaleString("en-US")} reached by the backward pass` : "") +
        (look.dead ? "\ndead: its relu nodes output 0 for every sample" : "");
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
}
