"""Tools for testing op plugins: `check_op` and a pytest plugin with fixtures.

    from opgraph import Engine
    from opgraph.testing import check_op
    check_op(Engine([my_plugin], entry_points=False), "sin", domain=(-3, 3))

The pytest plugin (`opgraph.testing.pytest_plugin`, loaded automatically once opgraph is
installed) gives tests the fixtures `opgraph_engine` and `check_op`; see docs/plugins.md.
"""

from .gradcheck import GradcheckError, GradcheckReport, Mismatch, check_op, random_points

__all__ = ["GradcheckError", "GradcheckReport", "Mismatch", "check_op", "random_points"]
