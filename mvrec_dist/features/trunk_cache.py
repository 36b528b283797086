"""The cached-features pass: every item's output of the content encoder's frozen part (video: the
frozen trunk), computed once, stored as feature shards.

Any content encoder whose config declares cached features takes this path (``ContentEncoder``
protocol: ``cache_split`` / ``cache_identity``, ``models.item_encoders.base.cached_features``).
One Ray Data row per content shard; ``map_batches`` runs ``_TrunkWorker`` actors (``concurrency``
of them, one GPU each with ``trunk_cache.use_gpu``), each of which builds the encoder once, reads
its shard's content through the ``ContentStore`` and runs the frozen part in batches of
``trunk_cache.batch_size`` under ``no_grad`` (eval mode, so frozen BatchNorm uses its running
statistics, as it does in training). Feature shard ``j`` holds exactly the items of content
shard ``j``, as ``<key>.feature.npy`` + ``<key>.json``, with the same deterministic tar writer;
``index.npy`` gives each item's offset, so training reads a feature with one mmap slice.

The store is built in ``<out>.tmp-*`` and published like a dataset (``manifest_writer.publish``):
manifest last, so a store with a manifest is complete. Its ``fingerprint`` hashes its identity
(``identity.features_identity``); an existing store with the same identity is kept as is.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray.data import DataContext

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.load import build_config, config_to_dict
from mvrec_dist.data.content_store import (CONTENT_KIND_RULES, CONTENT_SECTIONS, FEATURES_KIND, ContentStore,
                                           ContentStoreError, content_section, load_features_manifest)
from mvrec_dist.data.ingest.array_shards import build_index, npy_bytes, render_array_shard
from mvrec_dist.data.ingest.errors import IngestError, find_ingest_error
from mvrec_dist.data.ingest.manifest_writer import publish, remove_tree, temp_dir_for
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.manifest import SCHEMA_VERSION, ManifestError, load_manifest
from mvrec_dist.features.identity import build_trunk_encoder, features_identity
from mvrec_dist.models.item_encoders.base import cached_features

__all__ = ["FeaturesResult", "run_trunk_cache", "trunk_cache_problems", "FEATURE_MEMBER"]

FEATURE_MEMBER = "feature.npy"


@dataclass
class FeaturesResult:
    """What the pass produced (or found up to date)."""

    output_dir: str
    manifest: dict
    seconds: float
    reused: bool
    """The store already held these features; nothing was computed."""


class _TrunkWorker:
    """Ray Data actor: the encoder, built once; one content shard in, its feature shard written."""

    def __init__(self, cfg: dict, tmp: str, dtype: str, batch_size: int, use_gpu: bool, threads: int):
        self.cfg = build_config(TrainJobConfig, cfg)
        if not use_gpu:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.encoder = build_trunk_encoder(self.cfg).to(self.device).eval()
        self.store = ContentStore.from_dataset(load_manifest(self.cfg.data.dataset_dir),
                                               self.cfg.model.content_encoder.content_kind)
        self.tmp, self.dtype, self.batch_size = tmp, np.dtype(dtype), batch_size

    def __call__(self, batch: dict) -> dict:
        out = []
        for j in np.asarray(batch["shard"]).tolist():
            t0 = time.perf_counter()
            ids = np.nonzero(self.store.index[:, 0] == j)[0]
            arrays: list[np.ndarray] = []
            for lo in range(0, len(ids), self.batch_size):
                chunk = ids[lo:lo + self.batch_size]
                content = torch.from_numpy(self.store.gather(chunk)).to(self.device)
                feats = cached_features(self.encoder, content).cpu().numpy().astype(self.dtype)  # U,...
                bad = ~np.isfinite(feats.reshape(len(chunk), -1)).all(axis=1)
                if bad.any():
                    raise IngestError(f"item {int(chunk[bad][0])}: trunk feature is not finite in {self.dtype} "
                                      "(overflow? use trunk_cache.dtype=float32)")
                arrays += [np.ascontiguousarray(f) for f in feats]
            data, offsets = render_array_shard(ids.tolist(), FEATURE_MEMBER, arrays,
                                               [{"item": int(i)} for i in ids.tolist()])
            path = f"features/features-{j:05d}.tar"
            entry = {"path": path, "samples": len(ids), **write_bytes(f"{self.tmp}/{path}", data)}
            out.append(json.dumps({"shard": j, "entry": entry, "ids": ids.tolist(), "offsets": offsets.tolist(),
                                   "seconds": time.perf_counter() - t0}))
        return {"result": np.asarray(out, dtype=object)}


def trunk_cache_problems(cfg: TrainJobConfig) -> list[str]:
    """What stops the pass before it starts (no Ray needed), each naming the setting.

    Args:
        cfg: The training job config.

    Returns:
        Problems; empty when the pass can run.
    """
    problems = []
    if not cfg.data.content_features:
        problems.append("data.content_features: set the directory the trunk features go to")
    enc = cfg.model.content_encoder
    if enc is None:
        problems.append("model.content_encoder: set the encoder whose frozen part's output is cached "
                        "(a video or text encoder in 'frozen' or 'top' mode)")
    else:
        problems += [f"model.content_encoder.{p}" for p in enc.cache_problems()]
    try:
        if enc is not None and content_section(load_manifest(cfg.data.dataset_dir), enc.content_kind) is None:
            rules = CONTENT_KIND_RULES[enc.content_kind]
            problems.append(f"data.dataset_dir: {cfg.data.dataset_dir} has no {rules.noun} content; run "
                            f"{rules.ingest} on it first")
    except ManifestError as exc:
        problems.append(f"data.dataset_dir: {exc}")
    return problems


def _existing(out: str) -> dict | None:
    try:
        return load_features_manifest(out)
    except ContentStoreError:
        return None


def run_trunk_cache(cfg: TrainJobConfig) -> FeaturesResult:
    """Compute ``data.content_features`` for the run ``cfg`` describes (Ray must be initialised).

    Args:
        cfg: The training job config: ``model.content_encoder`` (one with a frozen part: a video
            encoder in 'frozen' or 'top' mode), ``data.dataset_dir`` (with content), ``data.content_features`` (output),
            ``train.seed`` and the ``trunk_cache`` section.

    Returns:
        The ``FeaturesResult``.

    Raises:
        IngestError: when the output holds features of another trunk or content and
            ``trunk_cache.overwrite`` is off, or a feature overflows the stored dtype.
    """
    t0 = time.perf_counter()
    problems = trunk_cache_problems(cfg)
    if problems:
        raise IngestError("; ".join(problems))
    tc, out = cfg.trunk_cache, cfg.data.content_features
    manifest = load_manifest(cfg.data.dataset_dir)
    kind = cfg.model.content_encoder.content_kind
    store = ContentStore.from_dataset(manifest, kind)
    identity = features_identity(cfg, manifest, build_trunk_encoder(cfg), tc.dtype)
    fp = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    existing = _existing(out)
    if existing is not None and existing.get("fingerprint") == fp:
        return FeaturesResult(output_dir=out, manifest=existing, seconds=time.perf_counter() - t0, reused=True)
    num_shards = len(manifest.shards(CONTENT_SECTIONS[kind]))
    tmp = temp_dir_for(out)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = tc.progress
    ctx.raise_original_map_exception = True  # an IngestError from a worker reaches the caller as itself
    ds = ray.data.from_items([{"shard": j} for j in range(num_shards)], override_num_blocks=max(num_shards, 1))
    mapped = ds.map_batches(
        _TrunkWorker, batch_size=1, batch_format="numpy", concurrency=tc.concurrency,
        num_gpus=1 if tc.use_gpu else 0, num_cpus=tc.cpus_per_worker,
        fn_constructor_kwargs={"cfg": config_to_dict(cfg), "tmp": tmp, "dtype": tc.dtype,
                               "batch_size": tc.batch_size, "use_gpu": tc.use_gpu, "threads": tc.cpus_per_worker})
    results = []
    try:
        for row in mapped.iter_rows():
            r = json.loads(row["result"])
            results.append(r)
            if tc.progress:
                print(f"trunk features: shard {r['shard'] + 1}/{num_shards} ({len(results)} done), "
                      f"{len(r['ids'])} items in {r['seconds']:.1f}s", flush=True)
        results.sort(key=lambda r: r["shard"])
        index = build_index(store.num_items, [(r["shard"], r["ids"], r["offsets"]) for r in results])
        with_features = int((index[:, 0] >= 0).sum())
        if with_features != store.items_with_content or len(results) != num_shards:
            raise IngestError(f"trunk features for {with_features} items in {len(results)} shards, the content has "
                              f"{store.items_with_content} items in {num_shards} shards")
        files = {"features/index.npy": write_bytes(f"{tmp}/features/index.npy", npy_bytes(index))}
        new = {
            "schema_version": SCHEMA_VERSION, "kind": FEATURES_KIND, "fingerprint": fp,
            "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "identity": identity, "dataset_dir": cfg.data.dataset_dir, "member": FEATURE_MEMBER,
            "shape": identity["shape"], "dtype": tc.dtype, "index": "features/index.npy", "files": files,
            "counts": {"items": store.num_items, "with_features": with_features},
            "splits": {"features": {"samples": with_features, "shards": [r["entry"] for r in results]}},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        publish(tmp, out, new, overwrite=tc.overwrite)
    except BaseException as exc:
        remove_tree(tmp)
        original = find_ingest_error(exc)
        if original is not None and original is not exc:
            raise IngestError(str(original)) from None
        raise
    return FeaturesResult(output_dir=out, manifest=new, seconds=time.perf_counter() - t0, reused=False)
