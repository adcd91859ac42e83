"""Benchmarks of opgraph against micrograd: `python -m benchmarks` (see run.py).

numpy's BLAS runs on one thread here, as PyTorch does in benchmarks/peers.py
(`torch.set_num_threads(1)`): the figures are CPU time, which idle BLAS threads spinning on a
shared machine would inflate. Set before numpy is first imported; a value already in the
environment is kept.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
