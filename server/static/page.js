// The viewer page's entry (index.html): the one Viewer (app.js), on this page's own stream.
// A notebook widget starts the same Viewer from widget.js instead.

import { startPage } from "./app.js";

startPage();
