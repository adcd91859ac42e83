"""opgraph's built-in op plugins: one module per family of ops.

They register through the same `register_ops` hook as any third-party plugin; the engine
registers them first, so a conflicting third-party op is the one the error message blames.
"""

from . import activations, arithmetic, exponential

BUILTIN_PLUGINS = [arithmetic, exponential, activations]
