// DOM helpers: elements found by id, and built or changed with text only (never HTML), so
// nothing a trace sends is read as markup.

// Where `$` finds elements: the page, or (in a notebook widget, widget.js) the widget's
// shadow root, so that two widgets in one notebook never find each other's elements.
let root = document;
export function setRoot(node) {
  root = node;
}

export const $ = (id) => root.getElementById(id);

export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

export function setData(element, key, value) {
  if (element.dataset[key] === value) return;
  if (value === undefined) delete element.dataset[key];
  else element.dataset[key] = value;
}

/** An element with properties (`dataset` merged) and children (strings become text). */
export function el(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(element, rest);
  if (dataset) Object.assign(element.dataset, dataset);
  element.append(...children);
  return element;
}

/** A canvas `width` x `height` CSS pixels, sharp on a high-density screen: its 2D context,
 *  scaled so that drawing is in CSS pixels. */
export function sharpCanvas(canvas, width, height) {
  const ratio = devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return ctx;
}

// The details' facts: [name, data-field, text] rows, skipping the false ones.
export function factList(facts) {
  const list = el("dl", { className: "facts" });
  for (const fact of facts) {
    if (!fact) continue;
    const [name, field, text] = fact;
    list.append(el("dt", {}, name), el("dd", { dataset: { field } }, text));
  }
  return list;
}

export function linkList(title, items) {
  return items.length ? [el("h3", {}, title), el("ul", { className: "links" }, ...items)] : [];
}
