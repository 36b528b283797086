"""End-to-end ingestion on the shared loopback Ray cluster: real MicroLens-50K, synthetic csv, tsv,
determinism, URI/glob inputs, standard webdataset readers, quarantine and interrupted runs."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig
from mvrec_dist.data.ingest import IngestError, run_ingest
from mvrec_dist.data.ingest import pipeline as pipeline_module
from mvrec_dist.data.synthetic import generate
from mvrec_dist.data.verify import verify_dataset

pytestmark = pytest.mark.integration
BLOCKS = {"users_per_block": 64, "items_per_block": 50}
"""Small blocks: every shard of the synthetic dataset holds several, the last one shorter."""
BOM = b"\xef\xbb\xbf"


def ingest(input, out, **kw):
    return run_ingest(IngestConfig(input=str(input), output_dir=str(out), progress=False, **kw))


def read_split(root, split):
    """``{per-row key: {member: value}}`` of ``split`` in manifest order, rebuilt from the block arrays
    with ``tarfile`` and numpy (independently of ``ShardReader``)."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    out = {}
    for shard in manifest["splits"][split]["shards"]:
        blocks = {}
        with tarfile.open(Path(root) / shard["path"]) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                blob = tar.extractfile(info).read()
                blocks.setdefault(key, {})[ext] = np.load(io.BytesIO(blob), allow_pickle=False) \
                    if ext.endswith("npy") else json.loads(blob)
        for b in blocks.values():
            if split == "items":
                for i, item in enumerate(b["items.npy"].tolist()):
                    out[f"i{item:010d}"] = {"json": {"item": item, "raw_item": int(b["raw_items.npy"][i]),
                                                     "train_count": int(b["train_counts.npy"][i]),
                                                     "has_title": bool(b["has_title.npy"][i])},
                                            "txt": b["titles.json"][i]}
                    if "interactions.npy" in b:
                        out[f"i{item:010d}"]["json"]["interactions"] = int(b["interactions.npy"][i])
                continue
            seq = "items.npy" if split == "train" else "history.npy"
            off = b["offsets.npy"]
            for i, user in enumerate(b["users.npy"].tolist()):
                row = {seq: b[seq][off[i]:off[i + 1]]}
                if "ts.npy" in b:
                    row["ts.npy"] = b["ts.npy"][off[i]:off[i + 1]]
                if "targets.npy" in b:
                    row["target.npy"] = b["targets.npy"][i:i + 1]
                n = len(row[seq]) + (1 if split == "test" else 2)
                row["json"] = {"user": user, "raw_user": int(b["raw_users.npy"][i]), "n": n}
                out[f"u{user:010d}"] = row
    return out


def checksums(root):
    m = json.loads((Path(root) / "manifest.json").read_text())
    shards = {s["path"]: s["sha256"] for split in m["splits"].values() for s in split["shards"]}
    return shards | {k: v["sha256"] for k, v in m["files"].items()}


def raw_sequence(root, key, test=None):
    """The raw item ids of ``key``'s full sequence (test history + target), and its json."""
    items = np.load(Path(root) / "maps" / "items.npy")
    sample = (test or read_split(root, "test"))[key]
    return items[np.concatenate([sample["history.npy"], sample["target.npy"]])].tolist(), sample["json"]


@pytest.fixture(scope="module")
def synthetic_input(tmp_path_factory):
    """Three csv parts (~100 KB each, so 64 KiB read ranges split them), generated without Ray."""
    cfg = SyntheticConfig(output=str(tmp_path_factory.mktemp("raw")), users=1200, items=300,
                          interactions=14000, seed=3, chunk_users=400)
    return Path(generate(cfg, use_ray=False))


@pytest.fixture(scope="module")
def synthetic_ds(ray_local, synthetic_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "synthetic"
    result = ingest(synthetic_input, out, shard_max_samples=500, min_seq_len=6, **BLOCKS)
    return out, result


@pytest.mark.shared_data
def test_real_microlens_50k(ray_local, microlens_50k, tmp_path):
    out = tmp_path / "ml50k"
    result = ingest(microlens_50k / "MicroLens-50k_pairs.tsv", out,
                    titles=str(microlens_50k / "MicroLens-50k_titles.csv"))
    c = result.manifest["counts"]
    assert (c["users"], c["items"], c["kept_interactions"]) == (50_000, 19_220, 359_708)
    assert c["interactions"] == {"train": 359_708 - 2 * 50_000, "valid": 50_000, "test": 50_000}
    assert (c["input_rows"], c["filtered_users"], c["quarantined_rows"], c["items_without_title"]) == (50_000, 0, 0, 0)
    assert result.manifest["reconciliation"]["ok"]
    assert {s: result.manifest["splits"][s]["samples"] for s in ("train", "valid", "test", "items")} == \
        {"train": 50_000, "valid": 50_000, "test": 50_000, "items": 19_220}
    lines = (microlens_50k / "MicroLens-50k_pairs.tsv").read_text().splitlines()
    users = np.load(out / "maps" / "users.npy")
    test = read_split(out, "test")
    for line in (lines[0], lines[12_345], lines[-1]):
        raw_user, items = line.split("\t")
        dense = int(np.searchsorted(users[1:], int(raw_user))) + 1
        seq, meta = raw_sequence(out, f"u{dense:010d}", test)
        assert seq == [int(x) for x in items.split()] and meta["raw_user"] == int(raw_user)
    assert verify_dataset(str(out)) == []


def test_synthetic_csv_samples_equal_the_source(synthetic_ds, synthetic_input):
    out, result = synthetic_ds
    c = result.manifest["counts"]
    assert c["input_rows"] == c["input_interactions"] == 14_000 and c["header_rows"] == 3
    assert c["users"] + c["filtered_users"] == 1200 and c["filtered_rows"] == c["filtered_interactions"]
    assert c["kept_interactions"] + c["filtered_interactions"] == 14_000
    rows = np.concatenate([np.loadtxt(p, delimiter=",", skiprows=1, dtype=np.int64)
                           for p in sorted(synthetic_input.glob("part-*.csv"))])
    users = np.load(out / "maps" / "users.npy")
    train, test = read_split(out, "train"), read_split(out, "test")
    for dense in (1, 77, len(users) - 1):
        mine = rows[rows[:, 0] == users[dense]]
        mine = mine[np.argsort(mine[:, 2], kind="stable")]
        seq, meta = raw_sequence(out, f"u{dense:010d}", test)
        assert seq == mine[:, 1].tolist() and meta["n"] == len(mine)
        assert train[f"u{dense:010d}"]["ts.npy"].tolist() == mine[:-2, 2].tolist()
        # valid and test keep the times of their histories and targets (MTIN's time gaps in evaluation)
        assert test[f"u{dense:010d}"]["ts.npy"].tolist() == mine[:-1, 2].tolist()
    assert result.manifest["timestamps"]["splits"] == ["train", "valid", "test"]
    assert "labels" not in result.manifest and "exposures" not in result.manifest["splits"]
    assert verify_dataset(str(out)) == []


def test_deterministic_and_independent_of_blocks_partitions_and_uri(synthetic_ds, synthetic_input, tmp_path):
    out, first = synthetic_ds
    before = checksums(out)
    # The same dataset again into the same directory: replaced, byte-identical.
    ingest(synthetic_input, out, shard_max_samples=500, min_seq_len=6, **BLOCKS)
    assert checksums(out) == before
    # Other read ranges and partitions, a file:// glob: the same bytes.
    other = ingest(f"file://{synthetic_input}/part-*.csv", tmp_path / "other", shard_max_samples=500,
                   min_seq_len=6, read_block_bytes=1 << 16, group_partitions=3, **BLOCKS)
    assert checksums(tmp_path / "other") == before
    assert other.manifest["counts"] == first.manifest["counts"]


def test_standard_webdataset_readers(ray_local, synthetic_ds):
    import ray
    import webdataset as wds

    out, result = synthetic_ds
    users = result.manifest["counts"]["users"]
    shards = result.manifest["splits"]["valid"]["shards"]
    blocks = sum(s["blocks"] for s in shards)
    assert blocks == sum(-(-s["samples"] // result.manifest["splits"]["valid"]["users_per_block"]) for s in shards)
    paths = [str(out / s["path"]) for s in shards]
    rows = ray.data.read_webdataset(paths).take_all()  # one record per block
    assert len(rows) == blocks
    first = min(rows, key=lambda r: r["__key__"])
    assert first["__key__"] == "b0000000000" and first["json"]["first_user"] == 1
    seen = [(s["__key__"], np.load(io.BytesIO(s["users.npy"])), np.load(io.BytesIO(s["history.npy"])))
            for s in wds.WebDataset(paths, shardshuffle=False)]
    assert [k for k, _, _ in seen] == [f"b{i:010d}" for i in range(blocks)]
    assert np.concatenate([u for _, u, _ in seen]).tolist() == list(range(1, users + 1))
    assert np.array_equal(seen[0][2], first["history.npy"])


def test_tsv_keeps_file_order_and_filters_short_users(ray_local, tmp_path):
    # User 5 spans two lines (rows=2); user 8 is too short; the last line has no newline.
    (tmp_path / "pairs.tsv").write_bytes(b"5\t40 10 30\n8\t1 2\n2\t7 6 5 4\r\n5\t20 50\n9\t3 1 4 1 5")
    result = ingest(tmp_path / "pairs.tsv", tmp_path / "ds", min_seq_len=4, duplicates="keep")
    c = result.manifest["counts"]
    assert (c["input_rows"], c["kept_rows"], c["filtered_rows"], c["filtered_users"]) == (5, 4, 1, 1)
    assert (c["duplicate_users"], c["duplicate_rows"], c["dropped_rows"]) == (1, 1, 0)
    assert (c["users"], c["kept_interactions"], c["filtered_interactions"]) == (3, 14, 2)
    assert raw_sequence(tmp_path / "ds", "u0000000002")[0] == [40, 10, 30, 20, 50]  # raw user 5
    assert raw_sequence(tmp_path / "ds", "u0000000003")[0] == [3, 1, 4, 1, 5]
    assert "ts.npy" not in read_split(tmp_path / "ds", "train")["u0000000001"]
    assert np.load(tmp_path / "ds" / "maps" / "items.npy").tolist() == [-1, 1, 3, 4, 5, 6, 7, 10, 20, 30, 40, 50]
    assert verify_dataset(str(tmp_path / "ds")) == []


def bad_csv(tmp_path, bad_line: bytes, where: int = 5000, lines: int = 6000, name: str = "pairs.csv",
            tail: bytes = b"\n") -> Path:
    """A csv of ``lines`` valid rows (several 64 KiB ranges) with ``bad_line`` as line ``where``."""
    rows = [b"user,item,timestamp"] + [b"%d,%d,%d" % (i % 700, i % 97, i) for i in range(lines)]
    rows[where - 1] = bad_line
    path = tmp_path / name
    path.write_bytes(b"\n".join(rows) + tail)
    return path


@pytest.mark.parametrize("bad, reason", [
    (b"1,2", "expected 3 comma-separated fields (user,item,timestamp), got 2"),
    (b"1,x,3", "item id 'x' is not a decimal integer"),
    (b"-5,2,3", "user id -5 is negative"),
    (b"user,item,timestamp", "header line in the middle of the file"),
    (b"1,2,\xe9", "invalid UTF-8 (byte 0xe9 at column 5)"),
    (b"", "blank line"),
])
def test_bad_rows_stop_the_job_naming_file_and_line(ray_local, tmp_path, bad, reason):
    path = bad_csv(tmp_path, bad)
    with pytest.raises(IngestError) as exc:
        ingest(path, tmp_path / "ds", read_block_bytes=1 << 16)
    assert str(exc.value).startswith(f"{path}:5000: {reason}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv"]  # no output, no temporary directory


def test_truncated_last_line_and_empty_tsv_sequence(ray_local, tmp_path):
    path = bad_csv(tmp_path, b"1,2,3", tail=b"\n7,8")
    with pytest.raises(IngestError, match=rf"^{path}:6002: truncated last line \(no newline at end of file\)"):
        ingest(path, tmp_path / "ds", read_block_bytes=1 << 16)
    (tmp_path / "p.tsv").write_bytes(b"1\t2 3 4\n2\t\n")
    with pytest.raises(IngestError, match=rf"^{tmp_path}/p.tsv:2: empty item sequence"):
        ingest(tmp_path / "p.tsv", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_missing_empty_and_conflicting_inputs(ray_local, tmp_path, synthetic_ds):
    with pytest.raises(IngestError, match="missing input"):
        ingest(tmp_path / "nope.csv", tmp_path / "ds")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(IngestError, match="empty input"):
        ingest(tmp_path / "empty.csv", tmp_path / "ds")
    (tmp_path / "header.csv").write_bytes(b"user,item,timestamp\n")
    with pytest.raises(IngestError, match=r"header.csv: empty input \(no rows after the header\)"):
        ingest(tmp_path / "header.csv", tmp_path / "ds")
    (tmp_path / "other.csv").write_bytes(b"1,2,3\n1,3,4\n1,4,5\n1,5,6\n1,6,7\n")
    with pytest.raises(IngestError, match="already holds a different dataset"):
        ingest(tmp_path / "other.csv", synthetic_ds[0])
    assert verify_dataset(str(synthetic_ds[0])) == []


def test_quarantine_counts_every_bad_row_and_reconciles(ray_local, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = b"".join(b"%d,%d,%d\n" % (u, i, u * 10 + i) for u in range(1, 40) for i in range(6))
    bads = [b"1,2", b"a,2,3", b"-1,2,3", b"user,item,timestamp", b"1,2,\xff", b"", b"1,2,3,4"]
    cut = good.index(b"\n", 200) + 1
    (src / "a.csv").write_bytes(b"user,item,timestamp\n" + good[:cut] + b"\n".join(bads) + b"\n" + good[cut:])
    (src / "b.csv").write_bytes(b"77,1,1\n77,2,2\n77,3,3\n77,4,4\n77,5,5\n77,6")
    result = ingest(src, tmp_path / "ds", on_bad_rows="quarantine")
    c, q = result.manifest["counts"], result.manifest["quarantine"]
    assert c["quarantined_rows"] == q["rows"] == 8 and c["header_rows"] == 1
    assert c["input_rows"] == 39 * 6 + 5 + 8 == c["kept_rows"] + c["filtered_rows"] + c["quarantined_rows"]
    lines = (tmp_path / "ds" / "quarantine.tsv").read_text().splitlines()
    first_bad = good[:cut].count(b"\n") + 2  # after the header and the good lines before
    assert lines[0] == "file\tline\treason\traw"
    assert lines[1].startswith(f"{src}/a.csv\t{first_bad}\texpected 3 comma-separated fields")
    assert lines[5] == f"{src}/a.csv\t{first_bad + 4}\tinvalid UTF-8 (byte 0xff at column 5)\t1,2,\\xff"
    assert lines[8].startswith(f"{src}/b.csv\t6\ttruncated last line")
    assert verify_dataset(str(tmp_path / "ds")) == []


def test_an_interrupted_ingestion_leaves_no_manifest(ray_local, tmp_path, synthetic_input, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption after the user shards were written")

    monkeypatch.setattr(pipeline_module, "write_item_shards", boom)
    with pytest.raises(KeyboardInterrupt):
        ingest(synthetic_input, tmp_path / "ds", resume=False)
    assert list(tmp_path.iterdir()) == []  # neither a manifest nor the temporary directory
    # With ingest.resume (the default) the work directory stays for a rerun to reuse (test_resume.py), and
    # still no dataset appears.
    with pytest.raises(KeyboardInterrupt):
        ingest(synthetic_input, tmp_path / "ds")
    (work,) = tmp_path.iterdir()
    assert work.name.startswith("ds.partial-") and not (work / "manifest.json").exists()


def test_a_bom_at_the_start_of_each_input_is_stripped_and_counted(ray_local, tmp_path):
    # Spreadsheet exports start with a UTF-8 byte-order mark, with or without a header line.
    (tmp_path / "tsv").mkdir()
    (tmp_path / "tsv" / "a.tsv").write_bytes(BOM + b"1\t5 6 7 8 9\n2\t5 6 7\n")
    (tmp_path / "tsv" / "b.tsv").write_bytes(b"3\t9 8 7 6\n")
    (tmp_path / "titles.csv").write_bytes(BOM + b"5,five\n6,six\n")
    m = ingest(tmp_path / "tsv", tmp_path / "ds", min_seq_len=3, titles=str(tmp_path / "titles.csv")).manifest
    assert [i["bom_stripped"] for i in m["inputs"]] == [1, 0] and m["counts"]["bom_stripped"] == 1
    assert m["titles"]["bom_stripped"] == 1 and m["titles"]["rows"] == 2 and m["counts"]["items_without_title"] == 3
    assert (m["counts"]["input_rows"], m["counts"]["users"]) == (3, 3)
    assert raw_sequence(tmp_path / "ds", "u0000000001")[0] == [5, 6, 7, 8, 9]
    (tmp_path / "csv").mkdir()
    rows = {users: b"".join(b"%d,%d,%d\n" % (u, i, i) for u in users for i in range(5)) for users in ((1, 2), (3, 4))}
    (tmp_path / "csv" / "a.csv").write_bytes(BOM + rows[1, 2])
    (tmp_path / "csv" / "b.csv").write_bytes(BOM + b"user,item,timestamp\n" + rows[3, 4])
    m = ingest(tmp_path / "csv", tmp_path / "ds2").manifest
    assert [i["bom_stripped"] for i in m["inputs"]] == [1, 1] and m["counts"]["bom_stripped"] == 2
    assert (m["counts"]["input_rows"], m["counts"]["header_rows"], m["counts"]["users"]) == (20, 1, 4)
    assert verify_dataset(str(tmp_path / "ds2")) == []


def many_users_tsv(tmp_path, extra: bytes, where: int, lines: int = 8000) -> Path:
    """A tsv of ``lines`` users, one line each (several 64 KiB ranges), with ``extra`` inserted as line ``where``."""
    rows = [b"%d\t%s" % (u, b" ".join(b"%d" % ((u * 7 + k) % 500) for k in range(5))) for u in range(lines)]
    rows.insert(where - 1, extra)
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def reconciled(c) -> bool:
    return (c["input_rows"] == c["kept_rows"] + c["filtered_rows"] + c["quarantined_rows"] + c["dropped_rows"]
            and c["input_interactions"] == c["kept_interactions"] + c["filtered_interactions"]
            + c["dropped_interactions"])


# Duplicates meet only in the grouping stage: line 4 / 10 is in the first 64 KiB read range, the
# repeat at line 7000 / 11000 two ranges later, and the users are split over three partitions.
SPREAD = {"read_block_bytes": 1 << 16, "group_partitions": 3}


def test_a_tsv_user_on_two_lines_in_different_read_ranges(ray_local, tmp_path):
    path = many_users_tsv(tmp_path, b"3\t901 902", where=7000)
    assert path.read_bytes().index(b"\n3\t901") > 2 * SPREAD["read_block_bytes"]
    with pytest.raises(IngestError) as exc:  # the default: a user on several lines stops the job
        ingest(path, tmp_path / "ds", **SPREAD)
    assert str(exc.value).startswith(f"{path}:7000: user 3 again (first on line 4)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.tsv"]
    first = [21, 22, 23, 24, 25]
    for policy, sequence, dropped in (("keep", first + [901, 902], 0), ("drop", first, 1)):
        out = tmp_path / policy
        c = ingest(path, out, duplicates=policy, **SPREAD).manifest["counts"]
        assert (c["input_rows"], c["duplicate_users"], c["duplicate_rows"]) == (8001, 1, 1)
        assert (c["dropped_rows"], c["dropped_interactions"]) == (dropped, 2 * dropped) and reconciled(c)
        assert c["kept_rows"] == 8001 - dropped and c["kept_interactions"] == 40_000 + 2 - 2 * dropped
        assert raw_sequence(out, "u0000000004")[0] == sequence  # raw user 3
        assert verify_dataset(str(out)) == []


def test_exact_duplicate_csv_rows_in_different_read_ranges(ray_local, tmp_path):
    path = bad_csv(tmp_path, b"8,8,8", where=11_000, lines=12_000)  # line 10 is row 8: "8,8,8"
    assert path.read_bytes().split(b"\n")[9] == b"8,8,8"
    with pytest.raises(IngestError) as exc:
        ingest(path, tmp_path / "ds", **SPREAD)
    assert str(exc.value).startswith(f"{path}:11000: exact duplicate of line 10 (user 8, item 8, timestamp 8)")
    for policy, head, dropped in (("keep", [8, 8, 708 % 97], 0), ("drop", [8, 708 % 97, 1408 % 97], 1)):
        out = tmp_path / policy
        c = ingest(path, out, duplicates=policy, **SPREAD).manifest["counts"]
        assert (c["input_rows"], c["duplicate_users"], c["duplicate_rows"]) == (12_000, 1, 1)
        assert (c["dropped_rows"], c["dropped_interactions"]) == (dropped, dropped) and reconciled(c)
        assert raw_sequence(out, "u0000000009")[0][:3] == head  # raw user 8
        assert verify_dataset(str(out)) == []
