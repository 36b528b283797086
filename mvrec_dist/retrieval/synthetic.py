"""Synthetic item features: a feature store for a dataset without content, and vectors for timing.

    python -m mvrec_dist.retrieval.synthetic <dataset_dir> <output_dir> [--dims 384] [--frames F] [--seed 0]

writes a feature store (the layout ``jobs/cache_trunk_features.py`` writes, read by
``ContentStore.from_features``) of one clustered random vector per item, so the retriever runs end to
end on a synthetic dataset (``jobs/configs/synthetic/neighbours-small.yaml``). Its identity says
``synthetic``, so no training run takes it for an encoder's features (``features.identity``).

The vectors (``clustered_vectors``) are a Gaussian mixture: unit-variance centres, each item a centre
plus isotropic noise. Items of one cluster are near each other, as titles on one topic are; an
unstructured Gaussian cloud in hundreds of dimensions would make every approximate index look
worse than it is on real embeddings (all distances nearly equal). They carry no signal about anything.
With ``--frames F`` each item gets ``[F, dims]`` per-frame features (its vector plus per-frame noise,
``frame_vectors``), the shape MMRA's frame input has; the retriever averages them.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys

import numpy as np

from mvrec_dist.data.content_store import FEATURES_KIND
from mvrec_dist.data.ingest.array_shards import build_index, npy_bytes, render_array_shard
from mvrec_dist.data.ingest.manifest_writer import publish, remove_tree, temp_dir_for
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.manifest import SCHEMA_VERSION, load_manifest

__all__ = ["clustered_vectors", "frame_vectors", "write_feature_store", "main"]

MEMBER = "feature.npy"


def clustered_vectors(n: int, dims: int, *, clusters: int = 0, noise: float = 1.5, seed: int = 0,
                      chunk: int = 65536) -> np.ndarray:
    """``float32 [n, dims]``: ``n`` points of a Gaussian mixture (see the module docstring).

    Args:
        n: Points.
        dims: Dimensions.
        clusters: Mixture components; 0 = ``max(1, n // 250)`` (about 250 items a topic).
        noise: Standard deviation of the per-item noise (the centres have 1).
        seed: Seed of everything.
        chunk: Points drawn at once (bounds the float64 temporaries at 1M+ points).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    clusters = clusters or max(1, n // 250)
    centres = rng.standard_normal((clusters, dims), dtype=np.float32)
    out = np.empty((n, dims), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        out[lo:hi] = centres[rng.integers(0, clusters, hi - lo)]
        out[lo:hi] += np.float32(noise) * rng.standard_normal((hi - lo, dims), dtype=np.float32)
    return out


def frame_vectors(vectors: np.ndarray, frames: int, *, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """``float32 [n, frames, d]``: each item's vector plus independent per-frame noise (std ``noise``)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1,))))
    out = np.repeat(vectors[:, None, :], frames, axis=1)
    out += np.float32(noise) * rng.standard_normal(out.shape, dtype=np.float32)
    return out


def write_feature_store(output_dir: str, dataset_dir: str, ids: np.ndarray, vectors: np.ndarray, *,
                        identity: dict, shard_items: int = 8192, overwrite: bool = False) -> dict:
    """Write ``vectors[i]`` as item ``ids[i]``'s feature into a feature store for ``dataset_dir``.

    Args:
        output_dir: The store directory.
        dataset_dir: The dataset (its fingerprint and item count go into the store's manifest).
        ids: ``int64 [K]`` dense ids, strictly ascending (items not listed have no feature).
        vectors: ``[K, D]`` their features (float16 or float32).
        identity: What the features are (merged into the manifest's identity).
        shard_items: Items per shard.
        overwrite: Replace a store of another identity.

    Returns:
        The manifest written.
    """
    manifest = load_manifest(dataset_dir)
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors)
    full = {"dataset_fingerprint": manifest.data.get("fingerprint"), **identity, "shape": list(vectors.shape[1:]),
            "dtype": str(vectors.dtype)}
    fp = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    tmp = temp_dir_for(output_dir)
    try:
        entries, parts = [], []
        for j, lo in enumerate(range(0, len(ids), shard_items)):
            part = ids[lo:lo + shard_items]
            data, offsets = render_array_shard(part.tolist(), MEMBER, list(vectors[lo:lo + shard_items]),
                                               [{"item": int(i)} for i in part.tolist()])
            path = f"features/features-{j:05d}.tar"
            entries.append({"path": path, "samples": len(part), **write_bytes(f"{tmp}/{path}", data)})
            parts.append((j, part.tolist(), offsets.tolist()))
        index = build_index(manifest.num_items, parts)
        files = {"features/index.npy": write_bytes(f"{tmp}/features/index.npy", npy_bytes(index))}
        new = {"schema_version": SCHEMA_VERSION, "kind": FEATURES_KIND, "fingerprint": fp,
               "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "identity": full, "dataset_dir": dataset_dir, "member": MEMBER, "shape": full["shape"],
               "dtype": full["dtype"], "index": "features/index.npy", "files": files,
               "counts": {"items": manifest.num_items, "with_features": int(len(ids))},
               "splits": {"features": {"samples": int(len(ids)), "shards": entries}}}
        publish(tmp, output_dir, new, overwrite=overwrite)
    except BaseException:
        remove_tree(tmp)
        raise
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mvrec_dist.retrieval.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_dir")
    p.add_argument("output_dir")
    p.add_argument("--dims", type=int, default=384, help="vector width (default 384, all-MiniLM's)")
    p.add_argument("--clusters", type=int, default=0, help="mixture components (0: one per 250 items)")
    p.add_argument("--noise", type=float, default=1.5, help="per-item noise std (centres: 1)")
    p.add_argument("--frames", type=int, default=0, help="per-frame features [frames, dims] (0: one vector [dims])")
    p.add_argument("--frame-noise", type=float, default=0.5, help="per-frame noise std (with --frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    n = load_manifest(a.dataset_dir).num_items
    vectors = clustered_vectors(n, a.dims, clusters=a.clusters, noise=a.noise, seed=a.seed)
    generator = {"generator": "mvrec_dist.retrieval.synthetic.clustered_vectors", "clusters": a.clusters,
                 "noise": a.noise, "seed": a.seed}
    if a.frames:
        vectors = frame_vectors(vectors, a.frames, noise=a.frame_noise, seed=a.seed)
        generator.update(frames=a.frames, frame_noise=a.frame_noise)
    m = write_feature_store(a.output_dir, a.dataset_dir, np.arange(1, n + 1), vectors, overwrite=a.overwrite,
                            identity={"synthetic": generator})
    print(f"{a.output_dir}: {m['counts']['with_features']:,} synthetic item features of shape {list(vectors.shape[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
