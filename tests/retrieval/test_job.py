"""The retriever job end to end on a tiny synthetic dataset (tests/helpers/shards.py TINY_INGEST) with
2 Ray Data workers over 3 shards: counts reconcile, every item has k neighbours from the train and
valid items, never itself, exactly the in-process exact top-k; the store reads with webdataset;
same settings reuse the store, others are refused; the faiss backend and items without features;
and the command line, which refuses unusable settings before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.config import IngestJobConfig, TrainJobConfig, load_config
from mvrec_dist.data.manifest import load_manifest
from mvrec_dist.retrieval.exact import exact_topk
from mvrec_dist.retrieval.features import RetrievalError, assemble_item_features
from mvrec_dist.retrieval.job import run_neighbours, task_item_split
from mvrec_dist.retrieval.store import load_neighbours
from mvrec_dist.retrieval.synthetic import clustered_vectors, write_feature_store
from tests.helpers.shards import TINY_INGEST

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "jobs" / "configs" / "synthetic" / "neighbours-small.yaml"
K = 20


def _cfg(tmp: Path, out: str, *overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, PRESET, [
        f"data.dataset_dir={tmp / 'ds'}", f"retrieval.output_dir={tmp / out}", f"retrieval.text_features={tmp / 'f'}",
        "retrieval.backend=exact", "retrieval.shard_items=128", "retrieval.items_per_block=50",
        "retrieval.concurrency=2", "retrieval.progress=false", *overrides])


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    from mvrec_dist.data.ingest import run_ingest_job

    tmp = tmp_path_factory.mktemp("neighbours")
    (tmp / "ingest.yaml").write_text(TINY_INGEST.format(out=tmp / "ds", raw=tmp / "raw"))
    run_ingest_job(load_config(IngestJobConfig, tmp / "ingest.yaml"))
    n = load_manifest(str(tmp / "ds")).num_items
    write_feature_store(str(tmp / "f"), str(tmp / "ds"), np.arange(1, n + 1),
                        clustered_vectors(n, 16, clusters=10, noise=1.0, seed=0), identity={"synthetic": "test"})
    t0 = time.perf_counter()
    result = run_neighbours(_cfg(tmp, "nb"))
    return tmp, result, time.perf_counter() - t0


@pytest.mark.integration
def test_every_item_gets_the_exact_top_k_of_train_and_valid_items(built):
    tmp, result, _ = built
    cfg = _cfg(tmp, "nb")
    manifest = load_manifest(str(tmp / "ds"))
    n = manifest.num_items
    m = result.manifest
    split, _ = task_item_split(cfg, manifest)
    index_ids = np.sort(np.concatenate([split["train"], split["valid"]]))
    c = m["counts"]
    assert (c["items"], c["queries"], c["index_items"]) == (n, n, len(index_ids))
    assert c["with_k"] == n and c["index_smaller_than_k"] == c["approximate_short"] == c["without_features"] == 0
    assert c["neighbours"] == n * K and m["reconciliation"]["ok"]
    shards = m["splits"]["neighbours"]["shards"]
    assert len(shards) == 3 and sum(s["samples"] for s in shards) == n
    assert [s["blocks"] for s in shards] == [-(-s["samples"] // 50) for s in shards]
    assert m["identity"]["split"]["train"] == len(split["train"]) and m["identity"]["backend"] == {"name": "exact"}

    nb = load_neighbours(str(tmp / "nb"))
    items = np.arange(1, n + 1)
    assert (nb.counts[1:] == K).all() and not (nb.ids[1:] == items[:, None]).any()
    assert np.isin(nb.ids[1:], index_ids).all()  # the test items are never retrieved
    feats = assemble_item_features(manifest, cfg.retrieval.modalities)
    ref = exact_topk(feats.vectors[items], items, feats.vectors[index_ids], index_ids, K)
    np.testing.assert_array_equal(nb.ids[1:], ref.ids)
    np.testing.assert_array_equal(nb.sims[1:], ref.sims)


@pytest.mark.integration
def test_the_shards_read_with_webdataset_one_record_per_block(built):
    import webdataset as wds

    tmp, result, _ = built
    urls = [str(tmp / "nb" / s["path"]) for s in result.manifest["splits"]["neighbours"]["shards"]]
    records = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(records) == sum(s["blocks"] for s in result.manifest["splits"]["neighbours"]["shards"])
    first = records[0]
    assert first["__key__"] == "b0000000000" and first["neighbours.npy"].shape == (50, K)
    assert first["json"] == {"block": 0, "first_item": 1, "last_item": 50, "n": 50}


@pytest.mark.integration
def test_same_settings_reuse_the_store_and_others_are_refused(built):
    tmp, result, _ = built
    again = run_neighbours(_cfg(tmp, "nb"))
    assert again.reused and again.manifest["fingerprint"] == result.manifest["fingerprint"]
    with pytest.raises(RetrievalError, match="already holds a neighbour store of other features, split or settings"):
        run_neighbours(_cfg(tmp, "nb", "retrieval.k=5"))


@pytest.mark.integration
def test_faiss_backend_and_items_without_features(built):
    tmp, _, _ = built
    n = load_manifest(str(tmp / "ds")).num_items
    keep = np.array([i for i in range(1, n + 1) if i % 50 != 7])  # items 7, 57, ... have no feature
    write_feature_store(str(tmp / "g"), str(tmp / "ds"), keep, clustered_vectors(n, 16, clusters=10, seed=0)[keep - 1],
                        identity={"synthetic": "test-partial"})
    with pytest.raises(RetrievalError, match=r"item 7 \(raw id \d+\) has no title feature"):
        run_neighbours(_cfg(tmp, "nb-faiss", f"retrieval.text_features={tmp / 'g'}", "retrieval.backend=faiss"))
    res = run_neighbours(_cfg(tmp, "nb-faiss", f"retrieval.text_features={tmp / 'g'}", "retrieval.backend=faiss",
                              "retrieval.on_missing=partial", "retrieval.ivf_probe=2"))
    c, missing = res.manifest["counts"], n - len(keep)
    assert c["without_features"] == missing and res.manifest["without_features_items"][0] == 7
    assert c["with_k"] + c["index_smaller_than_k"] + c["approximate_short"] + c["without_features"] == n
    assert res.manifest["identity"]["backend"]["name"] == "faiss"
    nb = load_neighbours(str(tmp / "nb-faiss"))
    assert (nb.counts[7] == 0) and not nb.ids[7].any() and not np.isin(nb.ids, [7, 57]).any()
    items = keep
    assert not (nb.ids[items] == items[:, None]).any()
    # Recall of this (deliberately narrow: 2 lists probed) index against exact, measured.
    feats = assemble_item_features(load_manifest(str(tmp / "ds")), [("title", str(tmp / "g"), 1.0)], "partial")
    split, _ = task_item_split(_cfg(tmp, "x"), load_manifest(str(tmp / "ds")))
    index_ids = np.sort(np.intersect1d(np.concatenate([split["train"], split["valid"]]), keep))
    ref = exact_topk(feats.vectors[items], items, feats.vectors[index_ids], index_ids, K)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(nb.ids[items].tolist(), ref.ids.tolist())])
    assert 0.5 < recall <= 1.0


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "build_neighbours.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_cli_help_and_unusable_settings_exit_2_before_ray(tmp_path):
    r = _cli("--help")
    assert r.returncode == 0 and "retrieval.backend" in r.stdout and "retrieval.text_features" in r.stdout
    r = _cli(f"data.dataset_dir={tmp_path / 'none'}")  # no preset: task next_item, no store, no output
    assert r.returncode == 2 and "cannot build neighbours" in r.stderr
    for text in ("task.name: the neighbours' index", "retrieval.output_dir: set", "retrieval.text_features: set",
                 "data.dataset_dir:"):
        assert text in r.stderr, r.stderr
    r = _cli("--config", str(PRESET), f"retrieval.text_features={tmp_path / 'none'}")
    assert r.returncode == 2 and "retrieval.text_features:" in r.stderr and "not found" in r.stderr
