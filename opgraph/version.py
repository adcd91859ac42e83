"""opgraph's version, in the lowest layer: the package's face re-exports it (`opgraph.__version__`)
and plugin loading names it as the built-in plugins' version, without importing the face."""

__version__ = "0.1.0"
