"""MMRA's retriever: item vectors from the cached content features, a cosine top-k index over the
train and valid items, and each item's neighbours stored as shards (``jobs/build_neighbours.py``).

* ``features``: one L2-normalised vector per item from the feature stores (the combination rule).
* ``exact``: exact top-k by blocked matrix products, self excluded, ties by ascending id.
* ``approximate``: the faiss-cpu backend (IVF-Flat or HNSW-Flat) for 1M+ items.
* ``backends``: ``retrieval.backend`` -> build on the driver, search in the workers.
* ``store``: the neighbour shards and manifest (format, reader).
* ``job``: the Ray Data job.
"""

from mvrec_dist.retrieval.exact import NeighbourResult, exact_topk
from mvrec_dist.retrieval.features import ItemFeatures, RetrievalError, assemble_item_features, combine_modalities
from mvrec_dist.retrieval.store import Neighbours, load_neighbours

__all__ = ["NeighbourResult", "exact_topk", "ItemFeatures", "RetrievalError", "assemble_item_features",
           "combine_modalities", "Neighbours", "load_neighbours"]
