"""Benchmarks of mvrec_dist: the harness (``benchmarks/run.py``), its parts (``bench_*.py``), results."""
