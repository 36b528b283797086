"""Full-MicroLens planning: workload simulation, FLOP counts, TorchRec planner runs, the cost model.

``benchmarks/bench_plan.py`` drives these; every assumption comes from
``benchmarks/reference/full_scale_assumptions.json`` (value, unit, source), never from a constant here.
"""
