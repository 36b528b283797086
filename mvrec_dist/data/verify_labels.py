"""Verification of the popularity labels and the item split (the manifest's ``item_labels`` section).

Used by ``python -m mvrec_dist.data.verify``. ``stats/item_interactions.npy`` must equal the item
counts recounted from the shards (train items + valid and test targets of every user) and sum to
``kept_interactions``; the label counts (the interactions, or a counts file's column) must give the
section's labelled/unlabelled items; ``stats/item_split.npy`` must hold exactly the labelled items,
in the section's sizes, and be the split ``item_split`` draws from the recorded seed and fractions.
A dataset ingested before the section existed has none of these files and is not checked for them.
"""

from __future__ import annotations

import io

import numpy as np

from mvrec_dist.data.item_split import NO_LABEL, SECTION, SPLIT_CODES, item_split, split_of_codes, split_sha256
from mvrec_dist.data.manifest import Manifest
from mvrec_dist.data.verify_blocks import Problems, check_file

__all__ = ["load_label_arrays", "check_item_labels"]


def _npy(root: str, m: Manifest, rel: str, dtype: type, problems: Problems) -> np.ndarray | None:
    """``rel`` checked against ``files`` (size, sha256), dtype and shape [N+1]; None when unusable."""
    files = m.data.get("files", {})
    if rel not in files:
        problems.add(rel, f"named by the manifest's '{SECTION}' but not listed in its files")
        return None
    data = check_file(root, rel, files[rel], problems)
    if data is None:
        return None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        problems.add(rel, f"unreadable .npy ({exc})")
        return None
    if array.dtype != np.dtype(dtype) or array.shape != (m.num_items + 1,):
        problems.add(rel, f"must be {np.dtype(dtype)} [{m.num_items + 1}], got {array.dtype} {list(array.shape)}")
        return None
    return array


def load_label_arrays(root: str, m: Manifest, problems: Problems) -> dict[str, np.ndarray | None] | None:
    """The section's files: ``{"interactions", "counts", "split"}`` -> array (None where unusable).

    Returns:
        None for a dataset without the ``item_labels`` section (ingested before it existed).
    """
    section = m.data.get(SECTION)
    if section is None:
        return None
    try:
        rels = {"interactions": section["interactions"], "counts": section["counts"], "split": section["split"]["file"]}
    except (KeyError, TypeError):
        problems.add(f"manifest {SECTION}", "needs 'interactions', 'counts' and 'split.file'")
        return {"interactions": None, "counts": None, "split": None}
    out = {name: _npy(root, m, rel, np.int8 if name == "split" else np.int64, problems)
           for name, rel in rels.items() if name != "counts" or rel != rels["interactions"]}
    out.setdefault("counts", out["interactions"])
    return out


def check_item_labels(m: Manifest, arrays: dict, recount: np.ndarray | None, problems: Problems) -> None:
    """Check the ``item_labels`` section against its files and the shards.

    Args:
        m: The manifest (with an ``item_labels`` section).
        arrays: ``load_label_arrays``'s result.
        recount: int64 [N+1]: every item's interactions recounted from the user splits, or None when
            the shards were unusable.
        problems: Where problems go.
    """
    section, where = m.data[SECTION], f"manifest {SECTION}"
    n, inter, counts, codes = m.num_items, arrays["interactions"], arrays["counts"], arrays["split"]
    if section.get("source") not in ("interactions", "file"):
        problems.add(where, f"source {section.get('source')!r} is neither 'interactions' nor 'file'")
    if (section.get("source") == "interactions") != (section.get("counts") == section.get("interactions")):
        problems.add(where, "the label counts must be the interaction counts exactly when source is 'interactions'")
    if inter is not None:
        if inter[0] != 0 or np.any(inter < 0):
            problems.add(section["interactions"], "must have row 0 = 0 and no negative count")
        if recount is not None and not np.array_equal(inter, recount):
            bad = np.flatnonzero(inter != recount)
            problems.add(section["interactions"], f"differs from the item counts of the train, valid and test shards "
                                                  f"({len(bad)} items, first dense id {int(bad[0])})")
        if int(inter.sum()) != m.counts["kept_interactions"]:
            problems.add(where, f"sum of item interactions {int(inter.sum())} != kept_interactions "
                                f"{m.counts['kept_interactions']}")
    if section.get("labelled_items", -1) + section.get("unlabelled_items", -1) != n:
        problems.add(where, f"labelled_items + unlabelled_items != items ({n})")
    if counts is not None:
        if counts[0] != 0 or np.any(counts < 0):
            problems.add(section["counts"], "must have row 0 = 0 and no negative count")
        labelled = int((counts[1:] > 0).sum())
        if labelled != section.get("labelled_items"):
            problems.add(where, f"labelled_items = {section.get('labelled_items')}, {section['counts']} has "
                                f"{labelled} items with a count > 0")
    entry = section.get("file")
    if section.get("source") == "file" and (not isinstance(entry, dict) or
                                            entry.get("rows") != n - entry.get("missing_items", 0)
                                            + entry.get("not_in_dataset", 0)):
        problems.add(where, "file.rows != items + not_in_dataset")
    if codes is None:
        return
    rel, s = section["split"]["file"], section["split"]
    if codes[0] != NO_LABEL or not np.isin(codes, [NO_LABEL, *SPLIT_CODES.values()]).all():
        problems.add(rel, f"must hold {NO_LABEL} (row 0, no label) or a split code {SPLIT_CODES}")
        return
    split = split_of_codes(codes)
    if counts is not None and not np.array_equal(codes >= 0, counts > 0):
        problems.add(rel, "does not hold exactly the labelled items (count > 0)")
    for name in split:
        if len(split[name]) != s.get(name):
            problems.add(where, f"split.{name} = {s.get(name)}, {rel} holds {len(split[name])}")
    if split_sha256(split) != s.get("sha256"):
        problems.add(where, f"split.sha256 differs from the split {rel} holds")
    if counts is not None:
        try:
            again = item_split(n, valid_fraction=s["valid_fraction"], test_fraction=s["test_fraction"], seed=s["seed"],
                               items=np.flatnonzero(counts[1:] > 0) + 1)
        except (KeyError, TypeError, ValueError) as exc:
            problems.add(where, f"split settings unusable ({exc})")
            return
        if any(not np.array_equal(again[k], split[k]) for k in split):
            problems.add(rel, "is not the split of the labelled items drawn from the recorded seed and fractions")
