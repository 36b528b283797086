"""The neighbour store: each item's top-k neighbours with similarities, as webdataset shards + manifest.

```
<output_dir>/
  manifest.json                          kind "mvrec_dist.neighbours"; written last (present = complete)
  neighbours/neighbours-00000.tar ...    shard j: items j*S+1 .. min((j+1)*S, N)  (S = retrieval.shard_items)
```
A shard holds blocks of ``retrieval.items_per_block`` consecutive items, one tar sample per block
(key ``b%010d``, the block index running on across shards as in the dataset's item table,
``shards/README.md``): ``items.npy`` int64 [n] (dense ids, consecutive), ``neighbours.npy`` int64
[n, k] (dense ids, most similar first, 0 past the item's count), ``similarities.npy`` float32 [n, k]
(cosines, 0 past the count), ``counts.npy`` int64 [n] (neighbours found) and ``json`` =
``{"block", "first_item", "last_item", "n"}``. Every item 1..N has a row, with or without neighbours.
Tar headers are deterministic (``tar_writer``) and readable by ``webdataset.WebDataset``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.array_shards import npy_bytes
from mvrec_dist.data.ingest.tar_writer import tar_bytes
from mvrec_dist.retrieval.features import RetrievalError

__all__ = ["NEIGHBOURS_KIND", "NEIGHBOURS_SCHEMA", "Neighbours", "render_shard", "shard_path", "shard_items",
           "load_neighbours_manifest", "load_neighbours"]

NEIGHBOURS_KIND = "mvrec_dist.neighbours"
NEIGHBOURS_SCHEMA = 1
MANIFEST = "manifest.json"
MEMBERS = ("items.npy", "neighbours.npy", "similarities.npy", "counts.npy", "json")


def shard_path(j: int) -> str:
    """Relative path of shard ``j``."""
    return f"neighbours/neighbours-{j:05d}.tar"


def shard_items(j: int, shard_size: int, num_items: int) -> np.ndarray:
    """Dense ids of shard ``j`` (``int64``)."""
    return np.arange(j * shard_size + 1, min((j + 1) * shard_size, num_items) + 1, dtype=np.int64)


def render_shard(j: int, shard_size: int, items: np.ndarray, ids: np.ndarray, sims: np.ndarray, counts: np.ndarray,
                 per_block: int) -> tuple[bytearray, int]:
    """Shard ``j``'s tar: ``items`` (consecutive) in blocks of ``per_block``.

    Returns:
        ``(archive bytes, blocks)``.
    """
    first_block = j * -(-shard_size // per_block)
    names, payloads = [], []
    for b, lo in enumerate(range(0, len(items), per_block)):
        hi = min(lo + per_block, len(items))
        key = "b%010d" % (first_block + b)
        meta = {"block": first_block + b, "first_item": int(items[lo]), "last_item": int(items[hi - 1]), "n": hi - lo}
        arrays = (items[lo:hi], ids[lo:hi], sims[lo:hi], counts[lo:hi])
        for member, value in zip(MEMBERS, (*(npy_bytes(np.ascontiguousarray(a)) for a in arrays),
                                           json.dumps(meta, sort_keys=True).encode())):
            names.append(f"{key}.{member}".encode())
            payloads.append([value])
    return tar_bytes(names, payloads), -(-len(items) // per_block)


@dataclass
class Neighbours:
    """A loaded neighbour store: row i is item i's (row 0, padding, is empty).

    Attributes:
        ids: ``int64 [N+1, k]``.
        sims: ``float32 [N+1, k]``.
        counts: ``int64 [N+1]``.
        manifest: The store's manifest.
    """

    ids: np.ndarray
    sims: np.ndarray
    counts: np.ndarray
    manifest: dict


def load_neighbours_manifest(output_dir: str) -> dict:
    """The store's manifest; ``RetrievalError`` when it is missing or of another kind."""
    uri = f"{output_dir.rstrip('/')}/{MANIFEST}"
    try:
        with dfs.open_input_file(uri) as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise RetrievalError(f"{uri}: not found; build the neighbours with jobs/build_neighbours.py") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RetrievalError(f"{uri}: not valid JSON ({exc})") from None
    if data.get("kind") != NEIGHBOURS_KIND:
        raise RetrievalError(f"{uri}: not a neighbour store (kind {data.get('kind')!r})")
    return data


def load_neighbours(output_dir: str) -> Neighbours:
    """Read every shard of a neighbour store into ``[N+1, k]`` arrays, checking sizes, sha256 and coverage.

    Raises:
        RetrievalError: naming the shard that is missing, rewritten, or does not cover its items.
    """
    m = load_neighbours_manifest(output_dir)
    n, k = int(m["counts"]["items"]), int(m["k"])
    ids = np.zeros((n + 1, k), dtype=np.int64)
    sims = np.zeros((n + 1, k), dtype=np.float32)
    counts = np.zeros(n + 1, dtype=np.int64)
    seen = np.zeros(n + 1, dtype=bool)
    for shard in m["splits"]["neighbours"]["shards"]:
        uri = f"{output_dir.rstrip('/')}/{shard['path']}"
        try:
            with dfs.open_input_file(uri) as f:
                data = f.read()
        except FileNotFoundError:
            raise RetrievalError(f"{uri}: neighbour shard listed in the manifest is missing") from None
        if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise RetrievalError(f"{uri}: size or sha256 differs from the manifest (rewritten or truncated)")
        blocks: dict[str, dict[str, bytes]] = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                key, _, member = info.name.partition(".")
                blocks.setdefault(key, {})[member] = tar.extractfile(info).read()
        for key, members in blocks.items():
            items = np.load(io.BytesIO(members["items.npy"]), allow_pickle=False)
            ids[items] = np.load(io.BytesIO(members["neighbours.npy"]), allow_pickle=False)
            sims[items] = np.load(io.BytesIO(members["similarities.npy"]), allow_pickle=False)
            counts[items] = np.load(io.BytesIO(members["counts.npy"]), allow_pickle=False)
            seen[items] = True
    if not seen[1:].all():
        raise RetrievalError(f"{output_dir}: items without a row, first {int(np.nonzero(~seen[1:])[0][0]) + 1}")
    return Neighbours(ids=ids, sims=sims, counts=counts, manifest=m)
