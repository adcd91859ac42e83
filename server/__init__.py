"""opgraph's tracing server (see docs/tracing.md; the wire format is docs/protocol.md).

- `server`: `TraceServer` (one port: the viewer page and the `/ws` stream), `EngineServer`
  (fed by an engine's tracer), `opgraph serve` (a standalone hub)
- `hub`: numbering, the graph kept for snapshots, per-viewer bounded queues
- `encode`: fast msgpack templates for `forward` and `backward`
- `publish`: scripts publishing to a hub (`OPGRAPH_TRACE=ws://...`), and the hub's side
- `recording`, `replay`, `chrome`: recordings, `opgraph replay`, `opgraph export --chrome`
- `client`: a Python client, `Graph`, and `opgraph watch`
- `demo`: `opgraph demo --serve`
"""
