// A notebook widget's entry (server/widget.py; bundled with the page's modules by
// server/bundle.py): the viewer page's body, built element by element in the widget's
// shadow root, and the one Viewer (app.js) on the kernel's stream (source.js, CommSource).

import { Viewer } from "./app.js";
import { setRoot } from "./dom.js";
import { layoutWorker } from "./groups.js";

/** Build `tree` ([tag, attributes, children], strings for text) as elements: never HTML. */
function build(tree) {
  if (typeof tree === "string") return document.createTextNode(tree);
  const [tag, attributes, children] = tree;
  const element = document.createElement(tag);
  for (const [name, value] of attributes) element.setAttribute(name, value);
  for (const child of children) element.append(build(child));
  return element;
}

/**
 * Show the viewer in `el` (anywidget's render): `body` is index.html's body as a tree, `css`
 * the page's style sheet rewritten for a shadow root, `workerUrl` the layout worker.
 * Returns the cleanup that anywidget calls when the view goes away.
 */
export function startWidget({ model, el, body, css, workerUrl }) {
  const host = document.createElement("div");
  host.className = "opgraph-widget";
  host.style.height = `${model.get("height")}px`;
  // Keys typed in the viewer are its own: JupyterLab's command-mode shortcuts ("d d" deletes
  // the cell) skip an element with this attribute (Lumino sees the shadow root's host).
  host.dataset.lmSuppressShortcuts = "true";
  el.append(host);
  const root = host.attachShadow({ mode: "open" });
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(css);
  root.adoptedStyleSheets = [sheet];
  const page = document.createElement("div");
  page.className = "page";
  page.tabIndex = 0; // a click in the viewer focuses it: its keys then reach the viewer
  for (const child of body) page.append(build(child));
  root.append(page);
  setRoot(root);
  layoutWorker.url = workerUrl;
  const viewer = new Viewer({ eventRoot: root, comm: model });
  host.opgraphViewer = viewer; // for the console and the tests
  viewer.startLive();
  return () => {
    viewer.close();
    host.remove();
  };
}
