"""Item-table blocks: ids, raw ids, counts, title flags and titles of any text."""

import io
import json
import tarfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest.items import render_item_shard


def read_blocks(data):
    out = {}
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            blob = tar.extractfile(m).read()
            out.setdefault(key, {})[ext] = np.load(io.BytesIO(blob), allow_pickle=False) if ext.endswith("npy") \
                else json.loads(blob.decode("utf-8"))
    return out


def test_render_item_shard():
    data = render_item_shard(1, 11, np.array([500, 900, 901]), np.array([4, 0, 2]), np.array([True, False, True]),
                             ["ça va", "", "x"], shard_size=10, block_size=2)
    blocks = read_blocks(data)
    assert list(blocks) == ["b0000000005", "b0000000006"]  # shard 1 of 10 items in blocks of 2: blocks 5, 6
    first = blocks["b0000000005"]
    assert set(first) == {"json", "items.npy", "raw_items.npy", "train_counts.npy", "has_title.npy", "titles.json"}
    assert first["json"] == {"block": 5, "first_item": 11, "last_item": 12, "n": 2}
    assert first["items.npy"].tolist() == [11, 12] and first["items.npy"].dtype == np.int64
    assert first["raw_items.npy"].tolist() == [500, 900] and first["train_counts.npy"].tolist() == [4, 0]
    assert first["has_title.npy"].dtype == bool and first["has_title.npy"].tolist() == [True, False]
    assert first["titles.json"] == ["ça va", ""]
    assert blocks["b0000000006"]["titles.json"] == ["x"]
    with_counts = read_blocks(render_item_shard(1, 11, np.array([500, 900, 901]), np.array([4, 0, 2]),
                                                np.array([True, False, True]), ["ça va", "", "x"], shard_size=10,
                                                block_size=2, interactions=np.array([6, 1, 3])))
    assert with_counts["b0000000005"]["interactions.npy"].tolist() == [6, 1]
    assert with_counts["b0000000006"]["interactions.npy"].dtype == np.int64


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=9), st.integers(1, 4))
def test_titles_of_any_text_round_trip(titles, block_size):
    k = len(titles)
    data = render_item_shard(0, 1, np.arange(k), np.zeros(k, np.int64), np.ones(k, bool), titles,
                             shard_size=k, block_size=block_size)
    blocks = read_blocks(data)
    assert [t for b in blocks.values() for t in b["titles.json"]] == titles
    assert [i for b in blocks.values() for i in b["items.npy"].tolist()] == list(range(1, k + 1))
