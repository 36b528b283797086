"""The index backends behind ``retrieval.backend``: build once (driver), ship, search (Ray Data workers).

``exact``: the index is the index items' vectors; queries run ``exact_topk`` (blocked matmul + top-k).
``faiss``: the index is a serialised faiss index (``approximate.FaissIndex``), built on the driver with
every core, deserialised once per worker. Both return ``NeighbourResult`` ordered by (similarity
descending, id ascending) with the query itself excluded; only the set found differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvrec_dist.config.retrieval import RetrievalConfig
from mvrec_dist.retrieval.approximate import FaissIndex, faiss_version, ivf_lists_for
from mvrec_dist.retrieval.exact import NeighbourResult, exact_topk

__all__ = ["IndexPayload", "build_index", "Searcher", "backend_identity"]


@dataclass
class IndexPayload:
    """What a worker needs to search: picklable, large arrays only (zero-copy through Ray's object store).

    Attributes:
        kind: ``'exact'`` or ``'faiss'``.
        index_ids: ``int64 [M]`` ascending ids of the indexed items.
        data: ``float32 [M, D]`` index vectors (exact) or ``uint8`` serialised faiss index.
        settings: Backend settings (faiss: index kind and probe; exact: score block MiB).
        build_seconds: Time the build took on the driver.
    """

    kind: str
    index_ids: np.ndarray
    data: np.ndarray
    settings: dict
    build_seconds: float = 0.0


def backend_identity(cfg: RetrievalConfig, num_index: int) -> dict:
    """The backend and the settings that change its results (recorded in the neighbour manifest)."""
    if cfg.backend == "exact":
        return {"name": "exact"}
    out = {"name": "faiss", "library": f"faiss-cpu {faiss_version()}", "index": cfg.faiss_index}
    if cfg.faiss_index == "ivf":
        lists = ivf_lists_for(num_index, cfg.ivf_lists)
        out.update(lists=lists, probe=min(cfg.ivf_probe, lists), seed=cfg.seed)
    else:
        out.update(m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, ef_search=cfg.hnsw_ef_search)
    return out


def build_index(vectors: np.ndarray, index_ids: np.ndarray, cfg: RetrievalConfig) -> IndexPayload:
    """Build ``cfg.backend``'s index over the items ``index_ids`` (ascending) of ``vectors`` (``[N+1, D]`` by id)."""
    index_ids = np.asarray(index_ids, dtype=np.int64)
    if cfg.backend == "exact":
        return IndexPayload("exact", index_ids, np.ascontiguousarray(vectors[index_ids]),
                            {"block_mib": cfg.score_block_mib})
    built = FaissIndex.build(vectors[index_ids], index_ids, kind=cfg.faiss_index, ivf_lists=cfg.ivf_lists,
                             ivf_probe=cfg.ivf_probe, hnsw_m=cfg.hnsw_m, hnsw_ef_construction=cfg.hnsw_ef_construction,
                             hnsw_ef_search=cfg.hnsw_ef_search, seed=cfg.seed, threads=cfg.build_threads)
    return IndexPayload("faiss", index_ids, built.to_bytes(), {"index": built.kind, "probe": built.probe},
                        build_seconds=built.build_seconds)


class Searcher:
    """A worker's open index (the faiss index deserialised once; ``threads`` are faiss's search threads,
    the caller sets torch's)."""

    def __init__(self, payload: IndexPayload, threads: int = 1):
        self.payload, self.threads = payload, threads
        self._faiss = None
        if payload.kind == "faiss":
            self._faiss = FaissIndex.from_bytes(payload.settings["index"], payload.data, payload.index_ids,
                                                payload.settings["probe"])

    def search(self, query_ids: np.ndarray, vectors: np.ndarray, k: int) -> NeighbourResult:
        """Top-k of the items ``query_ids`` (each with a vector) among the index, themselves excluded.

        Args:
            query_ids: ``int64 [Q]`` item ids.
            vectors: ``float32 [N+1, D]`` every item's vector by id.
            k: Neighbours per query.
        """
        queries = vectors[query_ids]
        if self._faiss is not None:
            return self._faiss.search(queries, query_ids, vectors, k, threads=self.threads)
        return exact_topk(queries, query_ids, self.payload.data, self.payload.index_ids, k,
                          block_mib=self.payload.settings["block_mib"])
