"""`python -m benchmarks`: opgraph against micrograd, side by side (see benchmarks/run.py)."""

import sys

from .run import main

sys.exit(main())
