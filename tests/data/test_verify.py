"""The verify tool: passes on an ingested dataset, and catches corrupted, missing and miscounted data,
naming the shard, the block and the reason."""

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig
from mvrec_dist.data.ingest import run_ingest
from mvrec_dist.data.synthetic import generate
from mvrec_dist.data.verify import main, verify_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    raw = generate(SyntheticConfig(output=str(tmp_path_factory.mktemp("raw")), users=300, items=120,
                                   interactions=3000, chunk_users=300), use_ray=False)
    out = tmp_path_factory.mktemp("ds") / "ds"
    run_ingest(IngestConfig(input=raw, output_dir=str(out), shard_max_samples=100, users_per_block=32,
                            items_per_block=16, progress=False))
    return out  # 3 shards of 100 users, each 4 blocks (32, 32, 32, 4): block indices 0..3, 4..7, 8..11


@pytest.fixture
def copy(dataset, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(dataset, target)
    return target


def manifest(root):
    return json.loads((root / "manifest.json").read_text())


def rewrite_manifest(root, m):
    (root / "manifest.json").write_text(json.dumps(m))


def rewrite_shard(root, split, index, members):
    """Re-pack shard ``index`` of ``split`` with ``members(list of (TarInfo, bytes))`` applied, and record
    its new size and sha256 in the manifest: the checksums match, the content does not."""
    path = root / split / f"{split}-{index:05d}.tar"
    with tarfile.open(path) as tar:
        old = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, blob in members(old):
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    m = manifest(root)
    m["splits"][split]["shards"][index].update(bytes=path.stat().st_size,
                                               sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    rewrite_manifest(root, m)


def replace_array(name, change):
    """A ``rewrite_shard`` edit replacing member ``name``'s array by ``change(array)``."""
    def edit(members):
        out = []
        for info, blob in members:
            if info.name == name:
                buf = io.BytesIO()
                np.save(buf, change(np.load(io.BytesIO(blob))), allow_pickle=False)
                blob = buf.getvalue()
            out.append((info, blob))
        return out
    return edit


def test_a_fresh_dataset_verifies(dataset, capsys):
    assert verify_dataset(str(dataset)) == []
    assert main([str(dataset)]) == 0
    assert "OK (300 users" in capsys.readouterr().out


def test_a_flipped_byte_is_caught(copy):
    shard = copy / "train" / "train-00001.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 1
    shard.write_bytes(bytes(data))
    problems = verify_dataset(str(copy))
    assert any(p.startswith("train/train-00001.tar: sha256") for p in problems)


def test_a_missing_shard_is_caught(copy):
    (copy / "test" / "test-00002.tar").unlink()
    assert "test/test-00002.tar: missing" in verify_dataset(str(copy))


def test_a_wrong_count_is_caught(copy):
    m = manifest(copy)
    m["splits"]["valid"]["shards"][0]["samples"] += 1
    m["counts"]["interactions"]["train"] -= 1
    rewrite_manifest(copy, m)
    problems = verify_dataset(str(copy))
    assert "valid/valid-00000.tar: 100 rows in 4 blocks, the manifest says 101 rows in 4 blocks of <= 32" in problems
    assert "manifest: split valid lists 300 samples (301 in its shards), expected 300" in problems
    assert any("interactions.train" in p for p in problems)
    assert any("train + valid + test = kept_interactions does not hold" in p for p in problems)


def _rewrite_npy(root, rel, change, *, record=True):
    """Replace ``rel``'s array by ``change(array)``; with ``record`` its new size and sha256 go into the manifest."""
    path = root / rel
    buf = io.BytesIO()
    np.save(buf, change(np.load(path)), allow_pickle=False)
    path.write_bytes(buf.getvalue())
    if record:
        m = manifest(root)
        m["files"][rel] = {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        rewrite_manifest(root, m)


def _moved(counts):
    """One interaction moved from the most counted item to item 1: same sum, other counts."""
    out = counts.copy()
    out[np.argmax(out)] -= 1
    out[1] += 1
    return out


def test_a_tampered_item_interactions_file_is_caught(copy):
    _rewrite_npy(copy, "stats/item_interactions.npy", _moved, record=False)
    assert any(p.startswith("stats/item_interactions.npy: sha256") for p in verify_dataset(str(copy)))
    _rewrite_npy(copy, "stats/item_interactions.npy", lambda a: a, record=True)  # checksums match again
    problems = verify_dataset(str(copy))
    assert any("stats/item_interactions.npy: differs from the item counts of the train, valid and test shards" in p
               for p in problems)
    assert any("interactions.npy differs from stats/item_interactions.npy" in p for p in problems)


def test_item_labels_that_do_not_reconcile_are_caught(copy):
    m = manifest(copy)
    m["item_labels"]["labelled_items"] -= 1
    m["item_labels"]["split"]["seed"] += 1
    rewrite_manifest(copy, m)
    problems = verify_dataset(str(copy))
    assert any("labelled_items + unlabelled_items != items" in p for p in problems)
    assert any("labelled_items = " in p and "items with a count > 0" in p for p in problems)
    assert any("is not the split of the labelled items drawn from the recorded seed" in p for p in problems)


def test_a_dataset_from_before_the_item_labels_still_verifies(copy):
    m = manifest(copy)
    del m["item_labels"]
    rewrite_manifest(copy, m)
    assert verify_dataset(str(copy)) == []


def test_content_is_checked_not_only_checksums(copy):
    # Re-pack a shard with one block's members split apart: the hash matches, the layout does not.
    rewrite_shard(copy, "items", 0, lambda members: members[:1] + members[2:] + members[1:2])
    problems = verify_dataset(str(copy))
    assert any(p.startswith("items/items-00000.tar: members of sample b0000000000 are not adjacent")
               for p in problems)


def test_corrupted_offsets_are_named_by_shard_and_block(copy):
    def swap(offsets):
        offsets[[2, 3]] = offsets[[3, 2]]  # row 2 now ends before it starts
        return offsets

    rewrite_shard(copy, "train", 1, replace_array("b0000000005.offsets.npy", swap))
    assert "train/train-00001.tar:b0000000005: offsets.npy must start at 0 and grow by >= 1 per row" in \
        verify_dataset(str(copy))


def test_splits_that_disagree_are_named_by_shard_and_block(copy):
    def shift(offsets):
        offsets[1] += 1  # still ascending, same total: user 1 of the block takes an item of user 2
        return offsets

    rewrite_shard(copy, "valid", 2, replace_array("b0000000011.offsets.npy", shift))
    problems = verify_dataset(str(copy))
    assert "train/train-00002.tar:b0000000011: valid histories differ from the train sequences" in problems


def test_a_short_last_block_must_be_where_the_manifest_puts_it(copy):
    # Drop the last block of a shard: 96 rows in 3 blocks where the manifest says 100 in 4.
    rewrite_shard(copy, "test", 0, lambda members: [(i, b) for i, b in members if not i.name.startswith("b0000000003")])
    assert "test/test-00000.tar: 96 rows in 3 blocks, the manifest says 100 rows in 4 blocks of <= 32" in \
        verify_dataset(str(copy))


def test_command_line_exit_status(copy):
    (copy / "maps" / "users.npy").write_bytes(b"junk")
    run = subprocess.run([sys.executable, "-m", "mvrec_dist.data.verify", str(copy)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "maps/users.npy" in run.stderr
    run = subprocess.run([sys.executable, "-m", "mvrec_dist.data.verify", str(copy / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "manifest.json: not found" in run.stderr
