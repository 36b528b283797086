"""Item labels and the item split of popularity prediction (MMRA), torch-free.

MMRA's MicroLens label is ``log2`` of an item's comment count, items without one excluded. MicroLens
interactions are public comments, so ingestion counts every item's kept interactions (train positions and
the valid and test targets of every kept user; exposures are no interactions) into
``stats/item_interactions.npy``, or takes the counts from a per-item counts file
(``ingest.item_counts``); items with a count of 0 have no label. The labelled items are split 80/10/10
at random with a fixed seed (``ingest.item_split_seed``; MMRA uses ``sklearn``'s ``train_test_split``,
ours a numpy PCG64 permutation, ``item_split``) and the split is saved with the dataset as
``stats/item_split.npy``. The manifest's ``item_labels`` section records both (``shards/README.md``).

The loaders read what ingestion wrote; a dataset ingested before the section existed fails with a
``ManifestError`` that says to re-ingest it.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np

from mvrec_dist.data.manifest import MANIFEST_NAME, Manifest, ManifestError

__all__ = ["SECTION", "SPLIT_NAMES", "SPLIT_CODES", "NO_LABEL", "item_split", "split_codes", "split_of_codes",
           "split_sha256", "popularity_labels_from_counts", "load_item_counts", "load_item_split", "item_labels_section"]

SECTION = "item_labels"
"""The manifest section describing the labels and the split."""
SPLIT_NAMES = ("train", "valid", "test")
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
"""Values of ``stats/item_split.npy`` per split."""
NO_LABEL = -1
"""Value of ``stats/item_split.npy`` for padding (row 0) and items without a label."""


def item_split(num_items: int, *, valid_fraction: float, test_fraction: float, seed: int,
               items: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Random split of item ids: ``{"train", "valid", "test"}`` -> sorted ids (disjoint, covering ``items``).

    The ids are permuted with a numpy PCG64 generator seeded by ``seed``; test takes the first
    ``round(test_fraction * M)`` of the permutation, valid the next ``round(valid_fraction * M)``
    (each at least 1 when M >= 3), train the rest (M = number of ids).

    Args:
        num_items: N, the dataset's items (dense ids 1..N).
        valid_fraction: Share of the ids in valid.
        test_fraction: Share of the ids in test.
        seed: Seed of the permutation; the same seed and ids give the same split.
        items: The dense ids to split (e.g. the labelled items), each in 1..N; default every item 1..N.

    Returns:
        ``{"train", "valid", "test"}`` -> sorted int64 ids.

    Raises:
        ValueError: when ``items`` holds an id outside 1..N or twice.
    """
    if items is None:
        ids = np.arange(1, num_items + 1, dtype=np.int64)
    else:
        ids = np.asarray(items, dtype=np.int64)
        if len(ids) and (ids.min() < 1 or ids.max() > num_items or len(np.unique(ids)) != len(ids)):
            raise ValueError(f"items must be distinct dense ids in 1..{num_items}")
    m = len(ids)
    # ids[permutation] (not permutation + 1) so that items=None splits exactly as the function always did.
    perm = ids[np.random.Generator(np.random.PCG64(seed)).permutation(m)]
    n_test = max(1, round(test_fraction * m)) if m >= 3 else 0
    n_valid = max(1, round(valid_fraction * m)) if m >= 3 else 0
    return {"test": np.sort(perm[:n_test]), "valid": np.sort(perm[n_test:n_test + n_valid]),
            "train": np.sort(perm[n_test + n_valid:])}


def split_codes(num_items: int, split: dict[str, np.ndarray]) -> np.ndarray:
    """``int8 [N+1]``: the split code of every item (``SPLIT_CODES``), ``NO_LABEL`` for the rest and row 0."""
    codes = np.full(num_items + 1, NO_LABEL, dtype=np.int8)
    for name, code in SPLIT_CODES.items():
        codes[split[name]] = code
    return codes


def split_of_codes(codes: np.ndarray) -> dict[str, np.ndarray]:
    """The inverse of ``split_codes``: ``{"train", "valid", "test"}`` -> sorted int64 ids."""
    return {name: np.flatnonzero(codes == code).astype(np.int64) for name, code in SPLIT_CODES.items()}


def split_sha256(split: dict[str, np.ndarray]) -> str:
    """sha256 of an item split: its train, valid and test ids in order (each name, then the ids as int64
    bytes): what a neighbour store records of its split and a training run checks its own split against."""
    digest = hashlib.sha256()
    for name in SPLIT_NAMES:
        digest.update(name.encode() + np.ascontiguousarray(split[name], dtype=np.int64).tobytes())
    return digest.hexdigest()


def popularity_labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """``float32 [N+1]``: ``log2(count)`` of every item, NaN where the count is 0 (no label; row 0 too).

    Args:
        counts: ``int64 [N+1]`` label counts (``load_item_counts``).

    Returns:
        The labels.
    """
    counts = np.asarray(counts, dtype=np.float64)
    out = np.full(counts.shape, np.nan, dtype=np.float64)
    positive = counts > 0
    out[positive] = np.log2(counts[positive])
    return out.astype(np.float32)


def item_labels_section(manifest: Manifest) -> dict:
    """The manifest's ``item_labels`` section.

    Raises:
        ManifestError: for a dataset ingested before the section existed (naming the directory and
            what to do).
    """
    section = manifest.data.get(SECTION)
    if not isinstance(section, dict):
        raise ManifestError(f"{manifest.root}/{MANIFEST_NAME}: no '{SECTION}' section: the dataset was ingested "
                            "before item labels and the item split were saved with it (MMRA popularity); "
                            f"re-ingest {manifest.root} with jobs/ingest_microlens.py and ingest.overwrite=true")
    return section


def _load_npy(manifest: Manifest, rel: str, dtype: type, what: str) -> np.ndarray:
    from mvrec_dist.data.fs import open_input_file

    try:
        with open_input_file(manifest.path(rel)) as f:
            array = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except FileNotFoundError:
        raise ManifestError(f"{manifest.path(rel)}: missing ({what}, listed in the manifest's '{SECTION}')") from None
    if array.dtype != np.dtype(dtype) or array.shape != (manifest.num_items + 1,):
        raise ManifestError(f"{manifest.path(rel)}: {what} is {array.dtype} {list(array.shape)}, expected "
                            f"{np.dtype(dtype)} [{manifest.num_items + 1}]")
    return array


def load_item_counts(manifest: Manifest) -> np.ndarray:
    """``int64 [N+1]``: the count each item's popularity label is ``log2`` of (row 0 = 0).

    The dataset's interaction counts (``stats/item_interactions.npy``) or, when it was ingested with
    ``ingest.item_counts``, that file's column mapped to dense ids (``item_labels.counts`` names the file).

    Raises:
        ManifestError: when the dataset has no ``item_labels`` section or the file is unusable.
    """
    return _load_npy(manifest, item_labels_section(manifest)["counts"], np.int64, "the item label counts")


def load_item_split(manifest: Manifest) -> dict[str, np.ndarray]:
    """The item split saved at ingestion: ``{"train", "valid", "test"}`` -> sorted dense ids (labelled items only).

    Raises:
        ManifestError: when the dataset has no ``item_labels`` section or the split file is unusable.
    """
    section = item_labels_section(manifest)
    return split_of_codes(_load_npy(manifest, section["split"]["file"], np.int8, "the item split"))
