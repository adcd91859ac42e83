"""A plugin whose module fails to import: it needs a package that is not installed."""

import opgraph_missing_dependency  # noqa: F401
