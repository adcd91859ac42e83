"""A plugin whose register_ops raises."""

from opgraph import hookimpl


@hookimpl
def register_ops(register):
    raise RuntimeError("the ops table of this plugin is corrupt")
