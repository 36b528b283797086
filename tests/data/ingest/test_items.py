"""Item-table samples: key, json and title per dense item."""

import io
import json
import tarfile

import numpy as np

from mvrec_dist.data.ingest.items import render_item_shard


def test_render_item_shard():
    data = render_item_shard(11, np.array([500, 900]), np.array([4, 0]), np.array([True, False]), ["ça va", ""])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert [m[0] for m in members] == ["i0000000011.json", "i0000000011.txt", "i0000000012.json", "i0000000012.txt"]
    assert json.loads(members[0][1]) == {"item": 11, "raw_item": 500, "train_count": 4, "has_title": True}
    assert members[1][1].decode("utf-8") == "ça va"
    assert json.loads(members[2][1])["has_title"] is False and members[3][1] == b""
