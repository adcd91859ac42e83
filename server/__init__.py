"""opgraph's tracing server (see docs/tracing.md)."""
