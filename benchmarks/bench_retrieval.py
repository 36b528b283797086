"""Retrieval part: MMRA's retriever, exact top-k throughput and the faiss index at 1.14M items.

    flock /tmp/mvrec_heavy.lock python benchmarks/bench_retrieval.py          # ~30 min on 2 busy cores
    python benchmarks/bench_retrieval.py --quick                               # CI-sized (minutes)
    python benchmarks/bench_retrieval.py --render-only                         # retrieval.md from retrieval.json
    python benchmarks/run.py --only retrieval                                  # the same, through the harness

Writes ``benchmarks/results/retrieval.{json,md}`` (run standalone it leaves REPORT.md alone).
All in one process with 2 threads (torch for the exact path, OpenMP for faiss), through the code
the job runs (``mvrec_dist.retrieval``); k = 20, index = train + valid items of the item task's
80/10/10 split (seed 0), every item a query, never itself.

* Exact (``exact_topk``: blocked matmul + top-k, 256 MiB score blocks): items/s over all 19,220
  MicroLens-50K items on their real cached title vectors (all-MiniLM, [384]; skipped with a note
  when ``data/features/microlens-50k-minilm-frozen`` is absent), and over a sample of the queries of
  a synthetic 100,000-item set (the throughput is per query: each query scans the whole index).
* Approximate (faiss-cpu IVF-Flat, and HNSW-Flat unless ``--indexes ivf``) at 1,142,528 synthetic
  items of the real features' width (384): build time, query throughput on a query sample and the
  projected time for all items, recall@20 against exact on 2,000 sampled queries, memory (the
  serialised index, and the process's RSS growth while building). The same indexes' recall on the
  real MicroLens-50K title vectors is measured too: synthetic recall depends on the generator.

Synthetic features: ``mvrec_dist.retrieval.synthetic.clustered_vectors`` (a Gaussian mixture, one
cluster per 250 items, noise 1.5 against unit centres); they are fine for timing, and their recall is
not a claim about real embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.harness.parts import Part, RenderContext, RunContext, write_result  # noqa: E402
from benchmarks.harness.report import fmt, table  # noqa: E402
from benchmarks.harness.schema import measurement, stats_of, validate_result  # noqa: E402

__all__ = ["PART", "run", "render"]

TITLE = "Retrieval (MMRA's retriever)"
K = 20
THREADS = 2
FULL_ITEMS = 1_142_528
SYNTH_EXACT_ITEMS = 100_000
DIMS = 384
RECALL_QUERIES = 2000
REAL_DATASET = REPO / "data" / "shards" / "microlens-50k"
REAL_FEATURES = REPO / "data" / "features" / "microlens-50k-minilm-frozen"
SWEEP = {"ivf": (16, 64, 256), "hnsw": (64, 128, 512)}
"""IVF lists probed / HNSW efSearch values whose recall and query time are measured on the recall sample."""


def _index_specs() -> dict[str, dict]:
    """The faiss settings the job uses by default (``RetrievalConfig``), per index kind."""
    from mvrec_dist.config.retrieval import RetrievalConfig

    c = RetrievalConfig()
    return {"ivf": {"kind": "ivf", "ivf_lists": c.ivf_lists, "ivf_probe": c.ivf_probe},
            "hnsw": {"kind": "hnsw", "hnsw_m": c.hnsw_m, "hnsw_ef_construction": c.hnsw_ef_construction,
                     "hnsw_ef_search": c.hnsw_ef_search}}


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _normalised(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate([np.zeros((1, x.shape[1]), np.float32), x])  # row 0: padding, ids start at 1


def _split_index(n: int) -> np.ndarray:
    """Train + valid ids of the item task's default split (the one ``item_popularity`` trains on)."""
    from mvrec_dist.config.task import ItemPopularityTaskConfig
    from mvrec_dist.tasks.item_popularity import item_split

    t = ItemPopularityTaskConfig()
    s = item_split(n, valid_fraction=t.valid_fraction, test_fraction=t.test_fraction, seed=t.split_seed)
    return np.sort(np.concatenate([s["train"], s["valid"]]))


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), exact.tolist())]))


def _exact(vectors: np.ndarray, queries: np.ndarray, index_ids: np.ndarray):
    from mvrec_dist.retrieval.exact import exact_topk

    t0 = time.perf_counter()
    res = exact_topk(vectors[queries], queries, vectors[index_ids], index_ids, K, block_mib=256)
    return res, time.perf_counter() - t0


def _approximate(ctx: RunContext, vectors: np.ndarray, index_ids: np.ndarray, spec: dict, sample: np.ndarray,
                 exact_ids: np.ndarray, timing_queries: np.ndarray, all_queries: int) -> dict:
    """Build one faiss index, time a query sample, measure recall on ``sample`` against ``exact_ids``."""
    from mvrec_dist.retrieval.approximate import FaissIndex

    params = {k: v for k, v in spec.items() if k != "kind"}
    rss0 = _rss_mib()
    index = FaissIndex.build(vectors[index_ids], index_ids, kind=spec["kind"], threads=THREADS, **params)
    rss1 = _rss_mib()
    ctx.log(f"  {spec['kind']}: built in {index.build_seconds:.1f}s")
    t0 = time.perf_counter()
    index.search(vectors[timing_queries], timing_queries, vectors, K, threads=THREADS)
    query_s = time.perf_counter() - t0
    found = index.search(vectors[sample], sample, vectors, K, threads=THREADS)
    qps = len(timing_queries) / query_s
    sweep = []
    for probe in SWEEP[spec["kind"]]:  # the recall/time trade-off of the same index
        index.probe = probe
        t0 = time.perf_counter()
        r = index.search(vectors[sample], sample, vectors, K, threads=THREADS)
        sweep.append({"probe": probe, "queries_per_s": len(sample) / (time.perf_counter() - t0),
                      "recall_at_20": _recall(r.ids, exact_ids)})
    out = {"kind": spec["kind"], "settings": params, "sweep": sweep, "build_s": index.build_seconds, "index_items": int(len(index_ids)),
           "timed_queries": int(len(timing_queries)), "query_s": query_s, "queries_per_s": qps,
           "projected_all_queries_s": all_queries / qps, "recall_at_20": _recall(found.ids, exact_ids),
           "recall_queries": int(len(sample)), "index_mib": index.nbytes / 2**20, "rss_growth_mib": rss1 - rss0}
    if spec["kind"] == "ivf":
        out["settings"] = {"lists": int(index.index.nlist), "probe": params["ivf_probe"]}
    else:
        out["settings"] = {"m": params["hnsw_m"], "ef_construction": params["hnsw_ef_construction"],
                           "ef_search": params["hnsw_ef_search"]}
    ctx.log(f"  {spec['kind']}: {qps:,.0f} queries/s, recall@20 {out['recall_at_20']:.3f}")
    return out


def _record(res: dict, data: dict, a: dict) -> None:
    data["approximate"].append(a)
    label = f"faiss {a['kind']}, {a['data']}"
    res["measurements"] += [
        measurement("approximate index build", "s", value=a["build_s"], path=label),
        measurement("approximate query throughput", "items/s", value=a["queries_per_s"], path=label),
        measurement("approximate recall@20 vs exact", "ratio", value=a["recall_at_20"], path=label),
        measurement("approximate index size", "MiB", value=a["index_mib"], path=label),
        measurement("RSS growth while building", "MiB", value=a["rss_growth_mib"], path=label)]


def run(ctx: RunContext, indexes: tuple[str, ...] = ("ivf", "hnsw")) -> dict:
    """Measure the exact and approximate paths (see the module docstring)."""
    import faiss
    import torch

    from mvrec_dist.retrieval.synthetic import clustered_vectors

    torch.set_num_threads(THREADS)
    full_items = 50_000 if ctx.quick else FULL_ITEMS
    synth_items = 20_000 if ctx.quick else SYNTH_EXACT_ITEMS
    synth_queries = 2_000 if ctx.quick else 25_000
    timing_queries = 2_000 if ctx.quick else 20_000
    repeats = 1 if ctx.quick else max(3, ctx.repeats)
    specs = _index_specs()
    res = ctx.new_result("retrieval", TITLE, {
        "k": K, "threads": THREADS, "dims_synthetic": DIMS, "items_approximate": full_items,
        "items_synthetic_exact": synth_items, "synthetic_exact_timed_queries": synth_queries,
        "approximate_timed_queries": timing_queries, "recall_queries": RECALL_QUERIES, "repeats_real": repeats,
        "faiss": f"faiss-cpu {faiss.__version__}", "indexes": {name: specs[name] for name in indexes},
        "sweep": {name: SWEEP[name] for name in indexes},
        "split": "item_popularity defaults: 80/10/10, seed 0; index = train + valid",
        "synthetic": "clustered_vectors: one cluster per 250 items, noise 1.5, seed 0"})
    data: dict = {"real": None, "synthetic_exact": None, "approximate": []}

    # ---- exact on the real MicroLens-50K title vectors
    if (REAL_FEATURES / "manifest.json").exists() and (REAL_DATASET / "manifest.json").exists():
        from mvrec_dist.data.manifest import load_manifest
        from mvrec_dist.retrieval.features import assemble_item_features

        manifest = load_manifest(str(REAL_DATASET))
        feats = assemble_item_features(manifest, [("title", str(REAL_FEATURES), 1.0)])
        n = manifest.num_items
        index_ids = _split_index(n)
        queries = np.arange(1, n + 1)
        ctx.log(f"exact on MicroLens-50K title vectors: {n:,} queries x {len(index_ids):,} indexed, {repeats} repeats")
        times = []
        for _ in range(repeats):
            exact, secs = _exact(feats.vectors, queries, index_ids)
            times.append(secs)
        data["real"] = {"items": n, "index_items": int(len(index_ids)), "dims": feats.dims, "seconds": stats_of(times),
                        "items_per_s": n / stats_of(times)["median"]}
        res["measurements"] += [
            measurement("exact top-20, MicroLens-50K title vectors", "s", values=times, path="exact"),
            measurement("exact top-20 throughput, MicroLens-50K title vectors", "items/s",
                        values=[n / t for t in times], path="exact")]
        rng = np.random.default_rng(1)
        real_timing = np.sort(rng.choice(queries, min(n, timing_queries), replace=False))
        for name in indexes:
            a = _approximate(ctx, feats.vectors, index_ids, specs[name], queries, exact.ids, real_timing, n)
            a["data"] = "MicroLens-50K title vectors"
            _record(res, data, a)
    else:
        res["notes"].append(f"MicroLens-50K real features skipped: {REAL_FEATURES} is absent (ingest "
                            "jobs/configs/microlens-50k/ingest.yaml, then jobs/cache_trunk_features.py with "
                            "jobs/configs/microlens-50k/sasrec-text.yaml)")

    # ---- exact on synthetic 100K
    vectors = _normalised(clustered_vectors(synth_items, DIMS, seed=0))
    index_ids = _split_index(synth_items)
    sample = np.sort(np.random.default_rng(2).choice(np.arange(1, synth_items + 1), synth_queries, replace=False))
    ctx.log(f"exact on synthetic {synth_items:,}: {synth_queries:,} of the queries x {len(index_ids):,} indexed")
    _, secs = _exact(vectors, sample, index_ids)
    data["synthetic_exact"] = {"items": synth_items, "index_items": int(len(index_ids)), "timed_queries": synth_queries,
                               "seconds": secs, "items_per_s": synth_queries / secs,
                               "projected_all_queries_s": synth_items * secs / synth_queries}
    res["measurements"].append(measurement(f"exact top-20 throughput, synthetic {synth_items:,} items", "items/s",
                                           value=synth_queries / secs, path="exact"))
    del vectors

    # ---- approximate at 1.14M synthetic items
    ctx.log(f"approximate at {full_items:,} synthetic items ({DIMS}-d)")
    vectors = _normalised(clustered_vectors(full_items, DIMS, seed=0))
    index_ids = _split_index(full_items)
    rng = np.random.default_rng(3)
    sample = np.sort(rng.choice(np.arange(1, full_items + 1), RECALL_QUERIES, replace=False))
    exact, secs = _exact(vectors, sample, index_ids)
    ctx.log(f"  exact reference for {RECALL_QUERIES:,} queries: {secs:.1f}s")
    data["exact_reference_at_scale"] = {"queries": RECALL_QUERIES, "seconds": secs,
                                        "items_per_s": RECALL_QUERIES / secs,
                                        "projected_all_queries_s": full_items * secs / RECALL_QUERIES}
    timing = np.sort(rng.choice(np.arange(1, full_items + 1), timing_queries, replace=False))
    for name in indexes:
        a = _approximate(ctx, vectors, index_ids, specs[name], sample, exact.ids, timing, full_items)
        a["data"] = f"synthetic {full_items:,} x {DIMS}"
        _record(res, data, a)
    data["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["measurements"].append(measurement("peak RSS of the benchmark process", "MiB", value=data["peak_rss_mib"]))
    res["data"] = data
    res["notes"].append("Query throughput is timed on a sample of queries; the time for all items is projected "
                        "from it (queries are independent: each costs the same on average).")
    res["notes"].append("This machine is shared (see the load averages): absolute times are upper bounds.")
    return res


def render(res: dict, rctx: RenderContext | None = None) -> str:
    """Exact throughput table, approximate table."""
    d, s = res["data"], res["settings"]
    rows = []
    if d.get("real"):
        r = d["real"]
        rows.append([f"MicroLens-50K title vectors ({r['dims']}-d, real)", f"{r['items']:,}", f"{r['index_items']:,}",
                     "all", fmt(r["seconds"]["median"]), fmt(r["items_per_s"])])
    e = d["synthetic_exact"]
    rows.append([f"synthetic ({s['dims_synthetic']}-d)", f"{e['items']:,}", f"{e['index_items']:,}",
                 f"{e['timed_queries']:,}", fmt(e["seconds"]), fmt(e["items_per_s"])])
    x = d["exact_reference_at_scale"]
    rows.append([f"synthetic ({s['dims_synthetic']}-d), recall reference", f"{s['items_approximate']:,}",
                 f"{d['approximate'][-1]['index_items']:,}", f"{x['queries']:,}", fmt(x["seconds"]), fmt(x["items_per_s"])])
    out = [f"k = {s['k']}, {s['threads']} threads, one process, `mvrec_dist.retrieval`; index = train + valid items "
           f"({s['split']}); every item a query, never itself. {s['faiss']}. Synthetic features: {s['synthetic']}.",
           "", "**Exact** (blocked matmul + top-k):", "",
           table(["features", "items", "indexed", "timed queries", "seconds", "items/s"], rows),
           "**Approximate** (faiss; similarities recomputed exactly, order as exact):", ""]
    arows = []
    for a in d["approximate"]:
        arows.append([a["data"], a["kind"], ", ".join(f"{k}={v}" for k, v in a["settings"].items()),
                      f"{a['index_items']:,}", fmt(a["build_s"]), fmt(a["queries_per_s"]),
                      fmt(a["projected_all_queries_s"]), f"{a['recall_at_20']:.3f} ({a['recall_queries']:,} q)",
                      fmt(a["index_mib"]), fmt(a["rss_growth_mib"])])
    out.append(table(["data", "index", "settings", "indexed", "build s", "queries/s", "all queries s (projected)",
                      "recall@20 vs exact", "index MiB", "RSS growth MiB"], arows))
    srows = [[a["data"], a["kind"], "probe (lists scanned)" if a["kind"] == "ivf" else "efSearch", w["probe"],
              fmt(w["queries_per_s"]), f"{w['recall_at_20']:.3f}"] for a in d["approximate"] for w in a.get("sweep", [])]
    if srows:
        out += ["Recall against query time of the same indexes (timed on the recall queries):", "",
                table(["data", "index", "knob", "value", "queries/s", "recall@20"], srows)]
    if d.get("peak_rss_mib"):
        gib = s["items_approximate"] * s["dims_synthetic"] * 4 / 2**30
        out.append(f"Peak RSS of the benchmark process: {fmt(d['peak_rss_mib'] / 1024)} GiB (the "
                   f"{s['items_approximate']:,} x {s['dims_synthetic']} float32 vectors are {fmt(gib)} GiB, the index "
                   "items' copy 0.9 of that, each index about as much again; all held at once while building).")
    return "\n".join(out)


PART = Part(name="retrieval", title=TITLE, run=run, render=render)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI-sized: 50,000 items for the approximate index")
    p.add_argument("--indexes", default="ivf,hnsw", help="faiss indexes to measure (ivf, hnsw)")
    p.add_argument("--render-only", action="store_true", help="rebuild retrieval.md from retrieval.json")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    a = p.parse_args(argv)
    results = Path(a.results_dir)
    if a.render_only:
        res = json.loads((results / "retrieval.json").read_text())
    else:
        argv_ = sys.argv[1:] if argv is None else argv
        with tempfile.TemporaryDirectory() as work:
            ctx = RunContext(quick=a.quick, results_dir=results, work_dir=Path(work), argv=argv_,
                             repeats=1 if a.quick else 3, launcher="gloo", workers=(1,))
            res = run(ctx, tuple(x for x in a.indexes.split(",") if x))
        res["command"] = " ".join(["python", "benchmarks/bench_retrieval.py", *argv_])
        res["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        problems = validate_result(res, results_dir=str(results))
        if problems:
            print(f"bench_retrieval.py: result does not match the schema: {problems}", file=sys.stderr)
            return 1
        write_result(res, results)
    m = res["machine"]
    md = (f"# {TITLE}\n\nCommand: `{res['command']}` ({res['date']}); machine: {m['cpu']}, {m['cores']} cores, "
          f"load average {m.get('load_average_start')} at the start, {m.get('load_average_end')} at the end.\n\n"
          + render(res) + "\n" + "".join(f"\n* {n}" for n in res["notes"]) + "\n")
    (results / "retrieval.md").write_text(md)
    print(f"wrote {results / 'retrieval.json'} and retrieval.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
