"""Approximate cosine top-k through faiss-cpu, for 1M+ items.

Why faiss (``faiss-cpu==1.15.1``, pinned in pyproject.toml): of the libraries the issue names it is
the one that installs here as a prebuilt wheel for CPython 3.11 on x86-64 (an abi3 manylinux wheel,
numpy 2 compatible, nothing compiled at install), it is maintained by Meta's FAISS team with regular
releases, and it offers both index families worth measuring at this scale behind one API: IVF-Flat
(k-means lists) and HNSW-Flat (a graph). At 1,142,528 items x 384 on this 2-core machine IVF (the
default) built in 65 s against HNSW's 447 s, and recalled more at a similar query rate
(``benchmarks/results/retrieval.md``). ``hnswlib`` (last release 2023)
ships no wheel for this Python and would compile from source; ``usearch`` would do, but faiss also
carries the exact ``IndexFlatIP`` the tests cross-check against.

What the results mean: faiss finds candidates; their similarities are then recomputed exactly from
the item vectors (an inner product per neighbour), the query itself is dropped by id, and the
neighbours are ordered by (similarity descending, id ascending) as the exact backend orders them.
So a returned similarity is always the true cosine; only *which* neighbours are found is approximate
(recall@k against ``exact_topk``: ``benchmarks/results/retrieval.md``). faiss builds with several
threads, so two builds of the same data may differ slightly; the exact backend is byte-reproducible.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from mvrec_dist.retrieval.exact import NeighbourResult

__all__ = ["FaissIndex", "faiss_version", "ivf_lists_for"]

KMEANS_MIN_POINTS = 39
"""faiss warns below 39 training points per list (its k-means minimum)."""
KMEANS_POINTS_PER_LIST = 64
"""IVF k-means trains on a seeded sample of this many points a list (faiss's default is up to 256: 4x the
training time at 1M items for no recall measured here)."""
KMEANS_ITERATIONS = 10
SEARCH_CHUNK = 1024
"""Queries searched (and re-scored) at once: bounds the ``[chunk, k+1, D]`` gather of neighbour vectors."""


def _faiss():
    import faiss

    return faiss


def faiss_version() -> str:
    """The installed faiss-cpu version."""
    return _faiss().__version__


def ivf_lists_for(num_index: int, requested: int = 0) -> int:
    """IVF lists: ``requested``, or 4 sqrt(M); never more than M / 39 (k-means needs 39 points a list), at least 1."""
    lists = requested or int(round(4 * math.sqrt(max(num_index, 1))))
    return max(1, min(lists, num_index // KMEANS_MIN_POINTS))


class FaissIndex:
    """An approximate inner-product index over L2-normalised item vectors.

    Args:
        kind: ``'ivf'`` (IVF-Flat) or ``'hnsw'`` (HNSW-Flat).
        index_ids: ``int64 [M]`` item ids in the order the vectors were added (faiss labels are positions).
        index: The faiss index (built or deserialised).
        probe: IVF lists scanned per query; HNSW's efSearch.
        build_seconds: Time the build took (0 for a deserialised index).
    """

    def __init__(self, kind: str, index_ids: np.ndarray, index, probe: int, build_seconds: float = 0.0):
        self.kind, self.index_ids, self.index, self.probe = kind, np.asarray(index_ids, np.int64), index, probe
        self.build_seconds = build_seconds

    @classmethod
    def build(cls, vectors: np.ndarray, index_ids: np.ndarray, *, kind: str = "ivf", ivf_lists: int = 0,
              ivf_probe: int = 64, hnsw_m: int = 32, hnsw_ef_construction: int = 64, hnsw_ef_search: int = 128,
              seed: int = 0, threads: int = 0) -> "FaissIndex":
        """Build the index over ``vectors`` (``float32 [M, D]``, L2-normalised) labelled ``index_ids``.

        Args:
            vectors: The index items' vectors.
            index_ids: Their item ids.
            kind: ``'ivf'`` or ``'hnsw'``.
            ivf_lists: IVF lists (0: ``ivf_lists_for``).
            ivf_probe: IVF lists scanned per query.
            hnsw_m: HNSW links per node.
            hnsw_ef_construction: HNSW build candidate list.
            hnsw_ef_search: HNSW search candidate list.
            seed: Seed of the k-means training sample and of faiss's k-means.
            threads: OpenMP threads of the build (0: every core).

        Returns:
            The built index.
        """
        faiss = _faiss()
        faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        m, d = x.shape
        t0 = time.perf_counter()
        if kind == "ivf":
            lists = ivf_lists_for(m, ivf_lists)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed, index.cp.niter = seed, KMEANS_ITERATIONS
            sample = min(m, KMEANS_POINTS_PER_LIST * lists)
            rows = np.sort(np.random.Generator(np.random.PCG64(seed)).choice(m, sample, replace=False))
            index.train(x[rows])
            index.add(x)
            probe = min(ivf_probe, lists)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = hnsw_ef_construction
            index.add(x)
            probe = hnsw_ef_search
        else:
            raise ValueError(f"unknown faiss index kind {kind!r} (ivf, hnsw)")
        return cls(kind, index_ids, index, probe, build_seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------------ shipping to Ray workers
    def to_bytes(self) -> np.ndarray:
        """The serialised faiss index (``uint8``), for the object store."""
        return _faiss().serialize_index(self.index)

    @classmethod
    def from_bytes(cls, kind: str, data: np.ndarray, index_ids: np.ndarray, probe: int) -> "FaissIndex":
        """The index ``to_bytes`` serialised."""
        return cls(kind, index_ids, _faiss().deserialize_index(np.asarray(data, dtype=np.uint8)), probe)

    @property
    def nbytes(self) -> int:
        """Size of the serialised index (vectors, lists or graph)."""
        return int(self.to_bytes().nbytes)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, query_ids: np.ndarray, vectors: np.ndarray, k: int,
               *, threads: int = 1) -> NeighbourResult:
        """Approximate top-k neighbours of ``queries``, the query itself excluded.

        Args:
            queries: ``float32 [Q, D]`` L2-normalised.
            query_ids: ``int64 [Q]`` their item ids.
            vectors: ``float32 [N+1, D]`` every item's vector by id (to recompute similarities exactly).
            k: Neighbours per query.
            threads: OpenMP threads of the search.

        Returns:
            A ``NeighbourResult`` ordered by (similarity descending, id ascending).
        """
        faiss = _faiss()
        faiss.omp_set_num_threads(threads)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        query_ids = np.asarray(query_ids, dtype=np.int64)
        out_ids = np.zeros((len(q), k), dtype=np.int64)
        out_sims = np.zeros((len(q), k), dtype=np.float32)
        counts = np.zeros(len(q), dtype=np.int64)
        want = min(k + 1, len(self.index_ids))  # one more: the query itself may be among them
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.probe, want)
        else:
            self.index.nprobe = self.probe
        for lo in range(0, len(q), SEARCH_CHUNK):
            hi = min(lo + SEARCH_CHUNK, len(q))
            _, labels = self.index.search(q[lo:hi], want)
            found = labels >= 0
            ids = np.where(found, self.index_ids[np.where(found, labels, 0)], 0)
            keep = found & (ids != query_ids[lo:hi, None])
            sims = np.einsum("qd,qkd->qk", q[lo:hi], vectors[ids]).astype(np.float32)
            sims = np.where(keep, sims, -np.inf)
            # Order by (similarity desc, id asc); dropped slots (-inf) go last.
            order = np.lexsort((np.where(keep, ids, np.iinfo(np.int64).max), -sims), axis=-1)[:, :k]
            ids, sims, keep = (np.take_along_axis(a, order, axis=1) for a in (ids, sims, keep))
            w = ids.shape[1]
            out_ids[lo:hi, :w] = np.where(keep, ids, 0)
            out_sims[lo:hi, :w] = np.where(keep, sims, 0.0)
            counts[lo:hi] = keep.sum(axis=1)
        return NeighbourResult(out_ids, out_sims, counts)
