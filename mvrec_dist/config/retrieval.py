"""Settings of MMRA's retriever (``jobs/build_neighbours.py``, a Ray Data job; ``mvrec_dist.retrieval``).

The retriever reads the *training* preset, as the cached-feature pass does: ``data.dataset_dir`` (the
items), ``task`` (its item split: ``valid_fraction``, ``test_fraction``, ``split_seed`` of the item
task, so the split is decided in one place) and this section, which holds only what the retriever
itself needs: the feature stores it embeds items from, the index backend and where the neighbours go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["RetrievalConfig"]


@dataclass(frozen=True, kw_only=True)
class RetrievalConfig:
    """Embedding every item, a cosine top-k index over train and valid items, each item's neighbours in shards."""

    output_dir: str | None = setting(None, doc="Directory the neighbour store goes to (manifest.json + shards); local path or URI.")
    text_features: str | None = setting(
        None, doc="Feature store of the title sentence vectors ([H] per item: jobs/cache_trunk_features.py with a "
                  "text encoder in finetune=frozen); null leaves titles out.")
    frame_features: str | None = setting(
        None, doc="Feature store of pooled frame features ([C] per item: a video encoder's frozen output); null "
                  "leaves frames out.")
    text_weight: float = setting(1.0, doc="Weight of the title cosine in an item pair's similarity (rule: mvrec_dist.retrieval.features).")
    frame_weight: float = setting(1.0, doc="Weight of the frame cosine in an item pair's similarity.")
    on_missing: Literal["error", "partial"] = setting(
        "error", doc="An item without a feature in a store: 'error' stops the job naming it; 'partial' compares it on "
                     "the features it has (nothing is made up for the missing one) and gives an item with none no "
                     "neighbours (listed in the manifest).")
    k: int = setting(20, doc="Neighbours stored per item (MMRA retrieves 20 and its model reads the first 10).")
    backend: Literal["exact", "faiss"] = setting(
        "exact", doc="'exact': blocked matrix products and top-k (MicroLens-50K/100K scale); 'faiss': an approximate "
                     "faiss-cpu index (1M+ items; its recall is measured in benchmarks/results/retrieval.md).")
    faiss_index: Literal["ivf", "hnsw"] = setting(
        "ivf", doc="Approximate index type: 'ivf' (IVF-Flat: k-means lists, builds in minutes at 1M items on 2 cores) "
                   "or 'hnsw' (HNSW-Flat graph: faster queries, a much slower build here).")
    ivf_lists: int = setting(0, doc="IVF lists; 0 = 4 x sqrt(index items), at most index items / 39 (faiss's k-means minimum).")
    ivf_probe: int = setting(64, doc="IVF lists scanned per query (recall against time: benchmarks/results/retrieval.md).")
    hnsw_m: int = setting(32, doc="HNSW links per node.")
    hnsw_ef_construction: int = setting(64, doc="HNSW candidate list while building.")
    hnsw_ef_search: int = setting(128, doc="HNSW candidate list while searching (at least k + 1 is used).")
    score_block_mib: int = setting(
        256, doc="Exact backend: MiB of one query block's similarity matrix (queries per matmul = this / (4 x index items)).")
    shard_items: int = setting(8192, doc="Items per neighbour shard; one Ray Data row (a task for one worker) per shard.")
    items_per_block: int = setting(1024, doc="Consecutive items per tar sample of a shard (columnar arrays).")
    concurrency: int = setting(2, doc="Ray Data workers answering the queries (each holds the index once).")
    cpus_per_worker: int = setting(1, doc="CPUs Ray reserves per worker (also its torch and faiss threads).")
    build_threads: int = setting(0, doc="Threads of the driver's faiss build; 0 = every core of the driver.")
    seed: int = setting(0, doc="Seed of the faiss k-means training sample.")
    overwrite: bool = setting(False, doc="Replace a neighbour store built from other features, split or settings.")
    progress: bool = setting(True, doc="Ray Data progress bars and one line per finished shard.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.text_weight >= 0 and self.frame_weight >= 0, "text_weight",
                f"weights must be >= 0, got text {self.text_weight}, frames {self.frame_weight}")
        p.check(self.text_weight + self.frame_weight > 0, "text_weight",
                "text_weight and frame_weight are both 0: no similarity to retrieve by")
        p.check(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        p.check(self.ivf_lists >= 0, "ivf_lists", f"must be >= 0, got {self.ivf_lists}")
        p.check(self.ivf_probe >= 1, "ivf_probe", f"must be >= 1, got {self.ivf_probe}")
        p.check(self.hnsw_m >= 2, "hnsw_m", f"must be >= 2, got {self.hnsw_m}")
        p.check(self.hnsw_ef_construction >= 1, "hnsw_ef_construction", f"must be >= 1, got {self.hnsw_ef_construction}")
        p.check(self.hnsw_ef_search >= 1, "hnsw_ef_search", f"must be >= 1, got {self.hnsw_ef_search}")
        p.check(self.score_block_mib >= 1, "score_block_mib", f"must be >= 1, got {self.score_block_mib}")
        p.check(self.shard_items >= 1, "shard_items", f"must be >= 1, got {self.shard_items}")
        p.check(self.items_per_block >= 1, "items_per_block", f"must be >= 1, got {self.items_per_block}")
        p.check(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        p.check(self.cpus_per_worker >= 1, "cpus_per_worker", f"must be >= 1, got {self.cpus_per_worker}")
        p.check(self.build_threads >= 0, "build_threads", f"must be >= 0, got {self.build_threads}")
        p.raise_if_any()

    @property
    def modalities(self) -> list[tuple[str, str, float]]:
        """``(name, feature store, weight)`` of each configured feature source of weight > 0, titles first.
        A source of weight 0 adds nothing to any similarity, so it is not read: MMRA's frame store may then
        hold only the items that have a video."""
        out = []
        if self.text_features and self.text_weight > 0:
            out.append(("title", self.text_features, self.text_weight))
        if self.frame_features and self.frame_weight > 0:
            out.append(("frames", self.frame_features, self.frame_weight))
        return out
