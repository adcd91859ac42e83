"""opgraph's tracing server (see docs/tracing.md; the wire format is docs/protocol.md).

- `protocol`: the wire constants (subprotocol, protocol name and version, size limits,
  close codes) and `hello`
- `server`: the life cycle: `TraceServer` (one port: the viewer page and the `/ws` stream),
  `EngineServer` (fed by an engine's tracer), `serve_engine`
- `http`: the viewer page's files and the security headers of every response
- `security`: the checks before an upgrade (loopback Host, Origin, token)
- `hub`: numbering, the graph kept for snapshots, fanning frames out to viewers
- `viewers`: a viewer's connection: its bounded queue, send deadlines, resyncs, controls
- `encode`: fast msgpack templates for `forward` and `backward`
- `events`: the checks of maps from outside (publishers, recordings)
- `publisher`: a script publishing its trace to a hub (`OPGRAPH_TRACE=ws://...`)
- `intake`: the hub's side of publishing: runs renumbered, frames acked and applied in turns
- `recording`, `replay`, `chrome`: recordings, `ReplayServer`, Chrome trace-event export
- `client`: a Python client and `Graph`

The engine reaches this package only through `opgraph.trace.serving._server()`; the commands that
use it (`opgraph serve`, `replay`, `export`, `watch`) are in opgraph/commands. Nodes are read
through Value's read API (docs/api.md), and the fast path's one slot reader is
`opgraph.trace.forward_packer`.
"""
