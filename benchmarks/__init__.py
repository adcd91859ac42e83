"""Benchmarks of opgraph against micrograd: `python -m benchmarks` (see run.py)."""
