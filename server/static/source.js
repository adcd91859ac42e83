// Where events come from: the server's websocket (reconnecting on its own) or a recording
// file. Both hand raw msgpack bytes to `onFrame`; decoding happens in the viewer's pump.

export const SUBPROTOCOL = "opgraph.v1";

/** The page's own stream: `/ws` on the page's host and port (null for a page opened from a file). */
export function ownStreamUrl(location) {
  const params = new URLSearchParams(location.search);
  if (!location.host) return null; // opened from a file: recordings only
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = params.get("token");
  return `${scheme}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

/**
 * The stream a link asks for with `?ws=URL`: {url}, {error} when it is no websocket URL, or
 * null without one. The page only offers to connect to it (see docs/viewer.md).
 */
export function requestedStreamUrl(location) {
  const asked = new URLSearchParams(location.search).get("ws");
  if (!asked) return null;
  let url;
  try {
    url = new URL(asked);
  } catch {
    return { error: "it is not a URL" };
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") return { error: "only ws:// and wss:// URLs are streams" };
  return { url: url.href };
}

/** A stream URL as shown to the user: its token, a secret, left out. */
export function shownUrl(url) {
  try {
    const parsed = new URL(url);
    if (parsed.searchParams.has("token")) parsed.searchParams.set("token", "…");
    return parsed.href;
  } catch {
    return String(url);
  }
}

export class LiveSource {
  /**
   * @param {string} url
   * @param {{onFrame(bytes: Uint8Array): void, onState(state: string, detail?: string): void}} sink
   */
  constructor(url, sink) {
    this.url = url;
    this.sink = sink;
    this.socket = null;
    this.retryDelay = 250;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.sink.onState("connecting", shownUrl(this.url));
    let socket;
    try {
      socket = new WebSocket(this.url, SUBPROTOCOL);
    } catch (err) {
      this.sink.onState("error", String(err.message || err));
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      this.opened = true;
      this.retryDelay = 250;
      this.sink.onState("open", shownUrl(this.url));
    };
    socket.onmessage = (message) => {
      if (message.data instanceof ArrayBuffer) this.sink.onFrame(new Uint8Array(message.data));
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.stopped) return;
      // The server went away (restarted, script ended): try again, a little slower each time.
      const delay = this.retryDelay;
      this.retryDelay = Math.min(2000, this.retryDelay * 2);
      const why = event.code === 1000 || event.code === 1001 ? "" : ` (code ${event.code})`;
      const what = this.opened ? `lost ${shownUrl(this.url)}${why}`
        // never connected: nothing listens there, or the server refused this page (an
        // opgraph server only lets its own page read its trace)
        : `could not connect to ${shownUrl(this.url)}: refused or unreachable${why}`;
      this.sink.onState(this.opened ? "retrying" : "unreachable", `${what}; retrying in ${delay / 1000} s`);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  /** Ask the server for a fresh snapshot (a control message of the protocol). */
  requestSnapshot() {
    // msgpack of {type: "snapshot"}: fixmap(1), fixstr "type", fixstr "snapshot"
    const bytes = new Uint8Array([0x81, 0xa4, ...new TextEncoder().encode("type"),
      0xa8, ...new TextEncoder().encode("snapshot")]);
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(bytes);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000);
    }
    this.sink.onState("closed", "");
  }
}

/**
 * A notebook widget's stream (widget.js, server/widget.py): the kernel sends the frames as
 * binary buffers of the widget's comm messages, and starts (hello, snapshot) when the page
 * says "ready". `model` is anywidget's: `send`, `on`/`off` of "msg:custom".
 */
export class CommSource {
  constructor(model, sink) {
    this.model = model;
    this.sink = sink;
    this.url = "the notebook's kernel";
    this.view = Math.random().toString(36).slice(2); // this page, among the widget's views
    this.listener = (message, buffers) => this.message(message, buffers);
    this.started = false;
    // A page that unloads (reloaded, its tab closed) never removes its widget's views, so it
    // says "gone" itself: the kernel cannot see it leave, and would count it as still showing
    // the widget (then a cell run again would not close its earlier widget). A page that the
    // browser keeps and shows again says "ready" once more.
    this.pageHidden = (event) => {
      this.stop();
      if (event.persisted) window.addEventListener("pageshow", this.pageShown, { once: true });
    };
    this.pageShown = () => this.start();
  }

  start() {
    this.model.on("msg:custom", this.listener);
    this.started = true;
    this.model.send({ type: "ready", view: this.view });
    this.sink.onState("open", this.url);
    window.addEventListener("pagehide", this.pageHidden);
  }

  message(message, buffers) {
    if (message?.type !== "frame") return;
    for (const buffer of buffers ?? []) {
      // ipywidgets gives DataViews (or ArrayBuffers): bytes without a copy
      const bytes = ArrayBuffer.isView(buffer)
        ? new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength)
        : new Uint8Array(buffer);
      this.sink.onFrame(bytes);
    }
  }

  /** Ask the kernel for a fresh snapshot. */
  requestSnapshot() {
    if (this.started) this.model.send({ type: "snapshot", view: this.view });
  }

  stop() {
    window.removeEventListener("pageshow", this.pageShown); // (closed while hidden: for good)
    if (!this.started) return;
    this.started = false;
    window.removeEventListener("pagehide", this.pageHidden);
    this.model.off("msg:custom", this.listener);
    this.model.send({ type: "gone", view: this.view });
    this.sink.onState("closed", "");
  }
}

/** Read a recording (`.ogtrace`: the wire format in a file) into bytes. */
export async function readRecording(file) {
  return new Uint8Array(await file.arrayBuffer());
}
