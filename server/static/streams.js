// Streams: which stream the page shows, the page's own server, another server a `?ws=`
// link offered (only once the user chooses it), or a recording opened from disk, and
// switching between them.
// Its methods become the viewer's (app.js mixes them in): `this` is the one Viewer, whose
// state app.js lists.

import { $ } from "./dom.js";
import { CommSource, LiveSource, readRecording, requestedStreamUrl, shownUrl } from "./source.js";

export class Streams {
  startLive() {
    const url = this.streamUrl;
    this.recording = null;
    this.showRecordingControls(false);
    this.source?.stop();
    this.source = null;
    this.showStreamUrl(url);
    const sink = {
      onFrame: (bytes) => this.receive(bytes),
      onState: (state, detail) => this.setConnection(state, detail),
    };
    if (this.comm) this.source = new CommSource(this.comm, sink); // a notebook widget's kernel
    else if (url) this.source = new LiveSource(url, sink);
    else {
      this.setConnection("offline", "no server: open a recording");
      return;
    }
    this.source.start();
  }

  /** Leave what is shown and connect to `url` (the user chose it). */
  switchStream(url) {
    this.streamUrl = url;
    this.frames = [];
    this.pending = [];
    this.pendingHead = 0;
    this.refused = false;
    this.resetSession();
    this.startLive();
  }

  /**
   * A link with `?ws=URL` asks the page to show another stream than its own server's. It
   * never connects by itself: the page names the URL and waits for the user to choose.
   */
  offerRequestedStream() {
    const requested = requestedStreamUrl(location);
    if (!requested) return;
    if (requested.error) {
      this.notice(`Ignored the link's ws= parameter: ${requested.error}`);
      return;
    }
    if (requested.url === this.streamUrl) return; // the page's own stream anyway
    $("ws-prompt-url").textContent = shownUrl(requested.url);
    $("ws-prompt").hidden = false;
    $("ws-connect").onclick = () => {
      $("ws-prompt").hidden = true;
      this.switchStream(requested.url);
    };
    $("ws-dismiss").onclick = () => { $("ws-prompt").hidden = true; };
  }

  // A Content-Security-Policy that forbids the connection (connect-src): say so, and stop
  // retrying, rather than "disconnected" forever.
  connectionRefusedByPolicy(event) {
    if (event.effectiveDirective !== "connect-src" || !this.source) return;
    const url = this.source.url;
    this.source.stop();
    this.source = null;
    this.setConnection("refused", `this page's Content-Security-Policy does not allow ` +
      `connecting to ${shownUrl(url)}`);
  }

  async openRecording(file) {
    const bytes = await readRecording(file);
    this.playRecording(file.name, bytes);
  }

  playRecording(name, bytes) {
    this.source?.stop();
    this.source = null;
    this.frames = [];
    this.pending = [];
    this.pendingHead = 0;
    this.resetSession();
    this.recording = { name, bytes };
    this.setPaused(false);
    this.showRecordingControls(true);
    this.setConnection("recording", name);
    this.showStreamUrl(null);
    this.receive(bytes);
  }

  showRecordingControls(shown) {
    $("speed").hidden = !shown;
    $("restart").hidden = !shown;
    $("live").hidden = !shown || !(this.streamUrl || this.comm);
  }
}
