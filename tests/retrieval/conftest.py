"""Fixtures of the retriever's tests: a dataset manifest of N items (no Ray) and feature stores for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.retrieval.synthetic import write_feature_store


def item_dataset(root: Path, num_items: int, fingerprint: str = "fp-tiny") -> Path:
    """A spec-conformant dataset (tests/helpers/shards.py) whose manifest says ``num_items`` items, with
    ``maps/items.npy`` (raw id = 100 + dense id): all the retriever reads of a dataset."""
    from tests.helpers.shards import train_dataset

    root.mkdir(parents=True)
    train_dataset(root, [3])
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    m["counts"]["items"], m["fingerprint"] = num_items, fingerprint
    path.write_text(json.dumps(m))
    (root / "maps").mkdir(exist_ok=True)
    np.save(root / "maps" / "items.npy", np.concatenate([[-1], 100 + np.arange(1, num_items + 1)]).astype(np.int64))
    return root


def feature_store(root: Path, dataset: Path, vectors: dict[int, np.ndarray], **identity) -> str:
    """A feature store for ``dataset`` holding ``vectors`` (item -> array); items not given have none."""
    ids = np.array(sorted(vectors), dtype=np.int64)
    write_feature_store(str(root), str(dataset), ids, np.stack([vectors[i] for i in ids.tolist()]),
                        identity={"test": identity or True}, shard_items=7)
    return str(root)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return item_dataset(tmp_path / "ds", 30)
