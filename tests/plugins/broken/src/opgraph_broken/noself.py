"""A class plugin whose hook method forgets `self`: Python would pass the instance as
`register`, and the plugin would fail with "'NoSelf' object is not callable"."""

from opgraph import Op, hookimpl


class NoSelf:
    @hookimpl
    def register_ops(register):  # noqa: N805 -- the mistake under test
        register(Op("cube", lambda a: a**3, lambda out, a: (3 * a * a,)))


plugin = NoSelf()
