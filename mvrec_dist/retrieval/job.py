"""The retriever as a Ray Data job: every item's top-k neighbours among the train and valid items.

Driver: the dataset's manifest, the item split (``task_item_split``: the one training uses, the
dataset's saved split for ``mmra``), every item's vector (``features.assemble_item_features``: all input checks
happen here, before any worker starts), the index over train ∪ valid items (``backends.build_index``:
exact vectors, or a faiss index built with every core), both put once into Ray's object store.

Ray Data: one row per neighbour shard (``retrieval.shard_items`` consecutive items); ``map_batches``
runs ``_QueryWorker`` actors (``retrieval.concurrency`` of them), each opening the index once, then per
shard: its items' queries (every item is a query; test items too, as in MMRA's retriever, which
searches train ∪ valid for train, valid and test items alike), the shard written to
``<out>.tmp-*`` and a summary returned. The driver reconciles the summaries (every item 1..N in
exactly one row; each item with a vector has ``min(k, index items other than itself)`` neighbours,
else the manifest says why) and publishes the store, manifest last (``manifest_writer.publish``).
An output holding a store with the same identity (dataset, split, features, settings) is kept.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import ray
from ray.data import DataContext

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.retrieval import RetrievalConfig
from mvrec_dist.data.content_store import ContentStoreError, load_features_manifest
from mvrec_dist.data.ingest.manifest_writer import publish, remove_tree, temp_dir_for
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.item_split import split_sha256
from mvrec_dist.data.manifest import Manifest, ManifestError, load_manifest
from mvrec_dist.retrieval.backends import IndexPayload, Searcher, backend_identity, build_index
from mvrec_dist.retrieval.features import RULE, RetrievalError, assemble_item_features
from mvrec_dist.retrieval.store import (NEIGHBOURS_KIND, NEIGHBOURS_SCHEMA, load_neighbours_manifest, render_shard,
                                       shard_items, shard_path)

__all__ = ["NeighboursResult", "run_neighbours", "neighbours_problems", "task_item_split", "expected_counts"]

SHORT_LISTED = 100
"""Items listed by id per reason in the manifest (the counts are always complete)."""


@dataclass
class NeighboursResult:
    """What the job produced (or found up to date)."""

    output_dir: str
    manifest: dict
    seconds: float
    reused: bool


def task_item_split(cfg: TrainJobConfig, manifest: Manifest | None) -> tuple[dict[str, np.ndarray], dict]:
    """The item task's train/valid/test split and how it was made (the neighbour store records it).

    ``mmra``: the split saved with the dataset at ingestion (``data.item_split.load_item_split``: the
    labelled items, 80/10/10). ``item_popularity``: ``data.item_split.item_split`` of items 1..N with the
    task's fractions and seed. ``manifest`` None only checks that the task has a split.

    Raises:
        RetrievalError: when ``task`` has no item split (only item tasks have one).
    """
    from mvrec_dist.data.item_split import item_split, item_labels_section, load_item_split

    t = cfg.task
    if t.name == "mmra":
        if manifest is None:
            return {}, {}
        section = item_labels_section(manifest)
        return load_item_split(manifest), {"function": "the dataset's saved split (stats/item_split.npy)",
                                           **{k: v for k, v in section.get("split", {}).items()
                                              if k in ("seed", "valid_fraction", "test_fraction")}}
    if not all(hasattr(t, a) for a in ("valid_fraction", "test_fraction", "split_seed")):
        raise RetrievalError(f"task.name: the neighbours' index is the train and valid items of an item task's "
                             f"split (item_popularity: valid_fraction, test_fraction, split_seed; mmra: the dataset's "
                             f"saved split); got {t.name!r}")
    if manifest is None:
        return {}, {}
    split = item_split(manifest.num_items, valid_fraction=t.valid_fraction, test_fraction=t.test_fraction,
                       seed=t.split_seed)
    return split, {"function": "mvrec_dist.data.item_split.item_split", "valid_fraction": t.valid_fraction,
                   "test_fraction": t.test_fraction, "seed": t.split_seed}


def neighbours_problems(cfg: TrainJobConfig) -> list[str]:
    """What stops the job before Ray starts, each naming its setting (no feature is read)."""
    r, problems = cfg.retrieval, []
    if not r.output_dir:
        problems.append("retrieval.output_dir: set the directory the neighbour store goes to")
    if not r.modalities:
        problems.append("retrieval.text_features: set a feature store (titles) and/or retrieval.frame_features, "
                        "with a weight > 0 (a store of weight 0 is not read)")
    for name, path, _ in r.modalities:
        try:
            load_features_manifest(path)
        except ContentStoreError as exc:
            problems.append(f"retrieval.{'text' if name == 'title' else 'frame'}_features: {exc}")
    try:
        task_item_split(cfg, None)
    except RetrievalError as exc:
        problems.append(str(exc))
    try:
        load_manifest(cfg.data.dataset_dir)
    except ManifestError as exc:
        problems.append(f"data.dataset_dir: {exc}")
    return problems


def expected_counts(present: np.ndarray, in_index: np.ndarray, k: int) -> np.ndarray:
    """Neighbours each item must get: ``min(k, M - [item in index])`` with a vector, else 0 (``int64 [N+1]``)."""
    m = int(in_index.sum())
    return np.where(present, np.minimum(k, m - in_index.astype(np.int64)), 0).astype(np.int64)


class _QueryWorker:
    """Ray Data actor: the index opened once; one shard of items in, its neighbour shard written."""

    def __init__(self, refs: list, tmp: str, settings: dict):
        vectors, payload, expected = (ray.get(r) if isinstance(r, ray.ObjectRef) else r for r in refs)
        import torch

        torch.set_num_threads(settings["threads"])
        self.vectors, self.expected = vectors, expected
        self.searcher = Searcher(payload, threads=settings["threads"])
        self.tmp, self.s = tmp, settings

    def __call__(self, batch: dict) -> dict:
        out = []
        s, n = self.s, len(self.vectors) - 1
        for j in np.asarray(batch["shard"]).tolist():
            t0 = time.perf_counter()
            items = shard_items(j, s["shard_items"], n)
            ids = np.zeros((len(items), s["k"]), dtype=np.int64)
            sims = np.zeros((len(items), s["k"]), dtype=np.float32)
            counts = np.zeros(len(items), dtype=np.int64)
            rows = np.nonzero(self.expected[items] > 0)[0]
            if len(rows):
                res = self.searcher.search(items[rows], self.vectors, s["k"])
                ids[rows], sims[rows], counts[rows] = res.ids, res.sims, res.counts
            exp = self.expected[items]
            short = items[counts < exp]
            data, blocks = render_shard(j, s["shard_items"], items, ids, sims, counts, s["items_per_block"])
            entry = {"path": shard_path(j), "samples": len(items), "blocks": blocks,
                     **write_bytes(f"{self.tmp}/{shard_path(j)}", data)}
            out.append(json.dumps({"shard": j, "entry": entry, "first": int(items[0]), "last": int(items[-1]),
                                   "neighbours": int(counts.sum()), "short": short.tolist(),
                                   "with_k": int((counts == s["k"]).sum()),
                                   "index_small": int(((counts == exp) & (exp > 0) & (exp < s["k"])).sum()),
                                   "self": int((ids == items[:, None]).sum()), "seconds": time.perf_counter() - t0}))
        return {"result": np.asarray(out, dtype=object)}


def _identity(cfg: TrainJobConfig, manifest, split: dict, how: dict, features, num_index: int) -> dict:
    r = cfg.retrieval
    return {
        "dataset_dir": cfg.data.dataset_dir, "dataset_fingerprint": manifest.data.get("fingerprint"),
        "split": {**how, "sha256": split_sha256(split),
                  **{name: int(len(split[name])) for name in ("train", "valid", "test")}},
        "index": "train and valid items with a vector; queries: every item with a vector, never itself",
        "features": features.modalities, "rule": RULE, "on_missing": r.on_missing, "k": r.k,
        "backend": backend_identity(r, num_index), "shard_items": r.shard_items, "items_per_block": r.items_per_block,
    }


def _check_output(out: str, fp: str, overwrite: bool) -> dict | None:
    """The existing store with this fingerprint (to keep), None when there is none; raise on anything else."""
    from mvrec_dist.data import fs as dfs
    import pyarrow.fs as pafs

    filesystem, path = dfs.resolve(out)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound or (info.type == pafs.FileType.Directory
                                                and not filesystem.get_file_info(pafs.FileSelector(path))):
        return None
    try:
        existing = load_neighbours_manifest(out)
    except RetrievalError:
        existing = None
    if existing is not None and existing.get("fingerprint") == fp:
        return existing
    if overwrite:
        return None
    what = "a neighbour store of other features, split or settings" if existing else "files but no neighbour store"
    raise RetrievalError(f"{out}: retrieval.output_dir already holds {what}; choose another directory or set "
                         "retrieval.overwrite=true to replace it")


def _find_retrieval_error(exc: BaseException) -> RetrievalError | None:
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RetrievalError):
            return e
        cause = getattr(e, "cause", None)
        stack.extend([cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__])
    return None


def run_neighbours(cfg: TrainJobConfig) -> NeighboursResult:
    """Build ``retrieval.output_dir`` for the dataset, split and features ``cfg`` names (Ray must be initialised).

    Raises:
        RetrievalError: bad input (naming the item, store or setting), a conflicting output, or counts
            that do not reconcile.
    """
    t0 = time.perf_counter()
    problems = neighbours_problems(cfg)
    if problems:
        raise RetrievalError("; ".join(problems))
    r, out = cfg.retrieval, cfg.retrieval.output_dir
    manifest = load_manifest(cfg.data.dataset_dir)
    n = manifest.num_items
    split, how = task_item_split(cfg, manifest)
    features = assemble_item_features(manifest, r.modalities, r.on_missing)
    in_index = np.zeros(n + 1, dtype=bool)
    in_index[np.concatenate([split["train"], split["valid"]])] = True
    in_index &= features.present
    index_ids = np.nonzero(in_index)[0].astype(np.int64)
    identity = _identity(cfg, manifest, split, how, features, len(index_ids))
    fp = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    existing = _check_output(out, fp, r.overwrite)
    if existing is not None:
        return NeighboursResult(output_dir=out, manifest=existing, seconds=time.perf_counter() - t0, reused=True)
    t_build = time.perf_counter()
    payload: IndexPayload = build_index(features.vectors, index_ids, r)
    build_s = time.perf_counter() - t_build
    expected = expected_counts(features.present, in_index, r.k)
    num_shards = -(-n // r.shard_items)
    tmp = temp_dir_for(out)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = r.progress
    ctx.raise_original_map_exception = True
    refs = [ray.put(features.vectors), ray.put(payload), ray.put(expected)]
    ds = ray.data.from_items([{"shard": j} for j in range(num_shards)], override_num_blocks=max(num_shards, 1))
    mapped = ds.map_batches(
        _QueryWorker, batch_size=1, batch_format="numpy", concurrency=min(r.concurrency, num_shards),
        num_cpus=r.cpus_per_worker,
        # The actors' constructor takes object refs (the vectors and the index, held by this driver
        # until the map ends); with Ray Data's default of restarting lost actors Ray logs an error-level
        # line about such arguments on every run. A lost worker fails the job instead: nothing is
        # published until every shard is written, and a re-run starts clean.
        max_restarts=0,
        fn_constructor_kwargs={"refs": refs, "tmp": tmp, "settings": {
            "k": r.k, "shard_items": r.shard_items, "items_per_block": r.items_per_block, "threads": r.cpus_per_worker}})
    results = []
    t_query = time.perf_counter()
    try:
        for row in mapped.iter_rows():
            res = json.loads(row["result"])
            results.append(res)
            if r.progress:
                print(f"neighbours: shard {res['shard'] + 1}/{num_shards} ({len(results)} done), "
                      f"{res['last'] - res['first'] + 1} items in {res['seconds']:.1f}s", flush=True)
        query_s = time.perf_counter() - t_query
        results.sort(key=lambda x: x["shard"])
        new = _manifest(identity, fp, results, features, expected, index_ids, n, num_shards, r,
                        {"build": build_s, "queries": query_s})
        publish(tmp, out, new, overwrite=True)  # _check_output decided whether replacing is allowed
    except BaseException as exc:
        remove_tree(tmp)
        original = _find_retrieval_error(exc)
        if original is not None and original is not exc:
            raise RetrievalError(str(original)) from None
        raise
    return NeighboursResult(output_dir=out, manifest=new, seconds=time.perf_counter() - t0, reused=False)


def _manifest(identity: dict, fp: str, results: list[dict], features, expected: np.ndarray, index_ids: np.ndarray,
              n: int, num_shards: int, r: RetrievalConfig, seconds: dict) -> dict:
    """The store's manifest, after every count reconciles (``RetrievalError`` otherwise)."""
    short = sorted(i for res in results for i in res["short"])
    m = len(index_ids)
    with_k = sum(res["with_k"] for res in results)
    index_small = sum(res["index_small"] for res in results)
    neighbours = sum(res["neighbours"] for res in results)
    covered = [(res["first"], res["last"]) for res in results]
    checks = {
        f"shards 0..{num_shards - 1} all written": [res["shard"] for res in results] == list(range(num_shards)),
        "rows: items 1..N, each in exactly one shard, in order":
            covered == [(j * r.shard_items + 1, min((j + 1) * r.shard_items, n)) for j in range(num_shards)],
        "no item is its own neighbour": sum(res["self"] for res in results) == 0,
        "items = with k + index smaller than k + approximate short + without features":
            with_k + index_small + len(short) + len(features.missing) == n,
        "neighbours <= sum over items of min(k, index items other than itself)": neighbours <= int(expected.sum()),
    }
    if r.backend == "exact":
        checks["exact: every item with a vector has min(k, index items other than itself) neighbours"] = (
            not short and neighbours == int(expected.sum()))
    failed = [c for c, ok in checks.items() if not ok]
    if failed:
        raise RetrievalError(f"neighbour counts do not reconcile: {failed} (short items: {short[:10]})")
    missing = sorted(features.missing)
    return {
        "schema_version": NEIGHBOURS_SCHEMA, "kind": NEIGHBOURS_KIND, "fingerprint": fp,
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "identity": identity, "k": r.k,
        "counts": {"items": n, "queries": int(features.present[1:].sum()), "index_items": m, "with_k": with_k,
                   "index_smaller_than_k": index_small, "approximate_short": len(short),
                   "without_features": len(missing), "neighbours": neighbours},
        "reasons": {
            "index_smaller_than_k": f"the index holds {m} items: an item gets min(k, {m} - [it is indexed]) neighbours",
            "approximate_short": "the approximate index returned fewer candidates than the index holds (faiss only)",
            "without_features": "no feature in any configured store (retrieval.on_missing=partial): no neighbours",
        },
        "approximate_short_items": short[:SHORT_LISTED], "without_features_items": missing[:SHORT_LISTED],
        "reconciliation": {"ok": True, "checks": list(checks)},
        "splits": {"neighbours": {"samples": n, "items_per_block": r.items_per_block,
                                  "shards": [res["entry"] for res in results]}},
        "seconds": {"build": round(seconds["build"], 3), "queries": round(seconds["queries"], 3)},
    }
