"""The benchmark harness: machine description, result schema, rank pool, job runs, plots, report.

``benchmarks/run.py`` is the one command; each ``benchmarks/bench_<part>.py`` defines a ``PART``
(``run`` measures and returns a result dict, ``render`` turns one into a report section).
"""
