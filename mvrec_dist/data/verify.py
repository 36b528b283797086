"""Verify an ingested dataset against its manifest: ``python -m mvrec_dist.data.verify DATASET``.

Recomputes every shard's and file's sha256 and size, reads every sample (``.npy`` with
``allow_pickle=False``), and checks (content split and trunk-feature stores: ``verify_content``): key order, uniqueness and member adjacency; sample counts per
shard; member sets, dtypes and shapes per split; that train/valid/test of a user agree (valid
history = train items, test history = valid history + valid target); ids against the maps; the
train item counts; and the count identities of ``shards/README.md``. Prints every problem and
exits 1 when there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import sys
import tarfile
from typing import Iterator

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.manifest import ManifestError, load_manifest

__all__ = ["verify_dataset", "main"]

_MEMBERS = {"valid": {"history.npy", "target.npy", "json"}, "test": {"history.npy", "target.npy", "json"},
            "items": {"json", "txt"}}


class _Problems(list):
    def add(self, where: str, message: str) -> None:
        if len(self) < 200:
            self.append(f"{where}: {message}")
        elif len(self) == 200:
            self.append("... (more problems not shown)")


def _read(path: str) -> bytes:
    with dfs.open_input_file(path) as f:
        return f.read()


def _check_file(root: str, rel: str, expected: dict, problems: _Problems) -> bytes | None:
    try:
        data = _read(f"{root.rstrip('/')}/{rel}")
    except FileNotFoundError:
        problems.add(rel, "missing")
        return None
    if len(data) != expected.get("bytes"):
        problems.add(rel, f"{len(data)} bytes, manifest says {expected.get('bytes')}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.get("sha256"):
        problems.add(rel, f"sha256 {digest[:16]}... differs from the manifest's {str(expected.get('sha256'))[:16]}...")
    return data


def _expected(shard) -> dict:
    return {"bytes": shard.bytes, "sha256": shard.sha256}


def _tar_members(data: bytes) -> Iterator[tuple[str, str, memoryview]]:
    """``(name, typeflag, content)`` of each member; strict about headers (checksums, sizes).

    A small parser instead of ``tarfile``: verification reads every member of every shard, and
    ``tarfile`` spends most of its time building ``TarInfo`` objects. PAX ``path`` records apply.
    """
    view, pos, pax_name = memoryview(data), 0, None
    while pos + 512 <= len(data):
        header = data[pos:pos + 512]
        if header == bytes(512):
            return
        stored = header[148:156].replace(b"\0", b" ").strip()
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.TarError(f"bad header checksum at byte {pos}")
        size = int(header[124:136].replace(b"\0", b" ").strip() or b"0", 8)
        flag = chr(header[156]) if header[156] else "0"
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8") if header[257:262] == b"ustar" else ""
        name = f"{prefix}/{name}" if prefix else name
        body = view[pos + 512:pos + 512 + size]
        if len(body) != size:
            raise tarfile.TarError(f"member {name!r} is truncated")
        pos += 512 + -(-size // 512) * 512
        if flag in "xg":
            for record in bytes(body).decode("utf-8").splitlines():
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path" and flag == "x":
                    pax_name = value
            continue
        yield (pax_name or name), flag, body
        pax_name = None
    raise tarfile.TarError("no end-of-archive blocks")


def _samples(data: bytes, rel: str, problems: _Problems) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of one tar in file order; reports non-adjacent members and unsafe extensions."""
    seen: set[str] = set()
    key, members = None, {}
    try:
        for name, flag, body in _tar_members(data):
            if flag != "0":
                problems.add(rel, f"member {name!r} is not a regular file")
                continue
            k, _, ext = name.partition(".")
            if ext not in ("npy", "json", "txt") and not ext.endswith(".npy"):
                problems.add(rel, f"member {name!r} has an unsafe or unknown extension")
            if k != key:
                if key is not None:
                    yield key, members
                if k in seen:
                    problems.add(rel, f"members of sample {k} are not adjacent (or the key repeats)")
                seen.add(k)
                key, members = k, {}
            if ext in members:
                problems.add(rel, f"sample {k} has {ext} twice")
            members[ext] = body
    except (tarfile.TarError, ValueError, UnicodeDecodeError) as exc:
        problems.add(rel, f"not a readable tar ({exc})")
    if key is not None:
        yield key, members


_npy_specs: dict[bytes, tuple[str, tuple]] = {}


def _npy(blob, dtype: str, length: int, where: str, problems: _Problems) -> np.ndarray | None:
    if blob is None:
        return None
    blob = bytes(blob)
    try:
        if blob[:8] != b"\x93NUMPY\x01\x00":
            return _npy_slow(blob, dtype, length, where, problems)
        hlen = int.from_bytes(blob[8:10], "little")
        header = blob[10:10 + hlen]
        spec = _npy_specs.get(header)
        if spec is None:
            meta = ast.literal_eval(header.decode("latin1"))
            if meta.get("fortran_order") or not isinstance(meta.get("descr"), str):
                return _npy_slow(blob, dtype, length, where, problems)
            spec = _npy_specs.setdefault(header, (meta["descr"], tuple(meta["shape"])))
    except (ValueError, SyntaxError, AttributeError) as exc:
        problems.add(where, f"unreadable .npy ({exc})")
        return None
    descr, shape = spec
    expected_bytes = 10 + hlen + length * np.dtype(dtype).itemsize
    if np.dtype(descr) != np.dtype(dtype) or shape != (length,) or len(blob) != expected_bytes:
        problems.add(where, f"expected {dtype} [{length}], got {descr} {list(shape)} ({len(blob)} bytes)")
        return None
    return np.frombuffer(blob, dtype=dtype, offset=10 + hlen)


def _npy_slow(blob: bytes, dtype: str, length: int, where: str, problems: _Problems) -> np.ndarray | None:
    try:
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError) as exc:
        problems.add(where, f"unreadable .npy ({exc})")
        return None
    if arr.dtype != np.dtype(dtype) or arr.shape != (length,):
        problems.add(where, f"expected {dtype} [{length}], got {arr.dtype} {list(arr.shape)}")
        return None
    return arr


def _json(blob: bytes | None, where: str, problems: _Problems) -> dict:
    try:
        return json.loads(bytes(blob).decode("utf-8")) if blob is not None else {}
    except (UnicodeDecodeError, ValueError) as exc:
        problems.add(where, f"bad json ({exc})")
        return {}


def _features_manifest(root: str) -> dict | None:
    """The manifest of a trunk-feature store at ``root``, None for anything else."""
    from mvrec_dist.data.content_store import FEATURES_KIND

    try:
        data = json.loads(_read(f"{root.rstrip('/')}/manifest.json").decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == FEATURES_KIND else None


def verify_dataset(root: str) -> list[str]:
    """Check a dataset directory; return every problem found (empty when it verifies).

    Args:
        root: Dataset directory (local path or URI).

    Returns:
        Human-readable problems, each naming the file or sample.
    """
    problems = _Problems()
    features = _features_manifest(root)
    if features is not None:
        from mvrec_dist.data.verify_content import verify_features

        return verify_features(root, features)
    try:
        m = load_manifest(root)
    except ManifestError as exc:
        return [str(exc)]
    files = m.data.get("files", {})
    arrays = {}
    for rel in ("maps/items.npy", "maps/users.npy", "stats/item_train_counts.npy"):
        data = _check_file(root, rel, files.get(rel, {}), problems)
        arrays[rel] = None
        if data is not None:
            try:
                arrays[rel] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                problems.add(rel, f"unreadable .npy ({exc})")
    item_map, user_map, train_counts = (arrays[k] for k in ("maps/items.npy", "maps/users.npy",
                                                            "stats/item_train_counts.npy"))
    counts = m.counts
    n_items, n_users = m.num_items, m.num_users
    for name, arr, size in (("maps/items.npy", item_map, n_items), ("maps/users.npy", user_map, n_users)):
        if arr is not None and (arr.shape != (size + 1,) or arr[0] != -1 or np.any(np.diff(arr[1:]) <= 0)):
            problems.add(name, f"must be int64 [{size + 1}] with entry 0 = -1 and strictly increasing raw ids")
    if "quarantine.tsv" in files:
        data = _check_file(root, "quarantine.tsv", files["quarantine.tsv"], problems)
        rows = data.count(b"\n") - 1 if data is not None else None
        if rows is not None and rows != m.data["quarantine"]["rows"]:
            problems.add("quarantine.tsv", f"{rows} rows, manifest says {m.data['quarantine']['rows']}")
    recount = np.zeros(n_items + 1, dtype=np.int64)
    split_inter = {"train": 0, "valid": 0, "test": 0}
    has_ts = m.data.get("config", {}).get("ingest", {}).get("format") == "pairs_csv"
    _verify_user_splits(root, m, has_ts, n_items, user_map, recount, split_inter, problems)
    if train_counts is not None and not np.array_equal(train_counts, recount):
        problems.add("stats/item_train_counts.npy", "differs from the item counts of the train shards")
    _verify_items(root, m, item_map, train_counts, problems)
    if m.has_split("content"):
        from mvrec_dist.data.verify_content import verify_content

        for p in verify_content(m, item_map):
            problems.add("content", p)
    for split, value in split_inter.items():
        if counts["interactions"][split] != value:
            problems.add("manifest", f"interactions.{split} = {counts['interactions'][split]}, shards hold {value}")
    c = counts
    identities = {
        "input_rows = kept_rows + filtered_rows + quarantined_rows":
            c["input_rows"] == c["kept_rows"] + c["filtered_rows"] + c["quarantined_rows"],
        "train + valid + test = kept_interactions": sum(c["interactions"].values()) == c["kept_interactions"],
        "valid = test = users": c["interactions"]["valid"] == c["interactions"]["test"] == c["users"],
    }
    for name, ok in identities.items():
        if not ok:
            problems.add("manifest counts", f"{name} does not hold")
    for split in ("train", "valid", "test", "items"):
        expected = n_users if split != "items" else n_items
        if m.has_split(split) and m.data["splits"][split]["samples"] != expected:
            listed = m.data["splits"][split]["samples"]
            problems.add("manifest", f"split {split} lists {listed} samples, expected {expected}")
    return list(problems)


def _verify_user_splits(root: str, m, has_ts: bool, n_items: int, user_map, recount: np.ndarray,
                        split_inter: dict, problems: _Problems) -> None:
    shards = {s: m.shards(s) for s in ("train", "valid", "test")}
    if not len(shards["train"]) == len(shards["valid"]) == len(shards["test"]):
        problems.add("manifest", "train, valid and test have different numbers of shards")
        return
    last_key = ""
    train_members = {"items.npy", "json"} | ({"ts.npy"} if has_ts else set())
    for j in range(len(shards["train"])):
        blobs = {s: _check_file(root, shards[s][j].path, _expected(shards[s][j]), problems) for s in shards}
        if any(b is None for b in blobs.values()):
            continue
        samples = {s: list(_samples(blobs[s], shards[s][j].path, problems)) for s in shards}
        for s in shards:
            if len(samples[s]) != shards[s][j].samples:
                problems.add(shards[s][j].path, f"{len(samples[s])} samples, manifest says {shards[s][j].samples}")
        keys = [k for k, _ in samples["train"]]
        if any(keys != [k for k, _ in samples[s]] for s in ("valid", "test")):
            problems.add(shards["train"][j].path, "train, valid and test shards hold different users")
            continue
        if keys and (keys != sorted(keys) or len(set(keys)) != len(keys) or keys[0] <= last_key):
            problems.add(shards["train"][j].path, "keys are not unique and ascending within and across shards")
        last_key = keys[-1] if keys else last_key
        for (key, tr), (_, va), (_, te) in zip(samples["train"], samples["valid"], samples["test"]):
            where = f"{shards['train'][j].path}:{key}"
            for split, members, expected in (("train", tr, train_members), ("valid", va, _MEMBERS["valid"]),
                                             ("test", te, _MEMBERS["test"])):
                if set(members) != expected:
                    problems.add(f"{split}:{key}", f"members {sorted(members)}, expected {sorted(expected)}")
            meta = _json(tr.get("json"), where, problems)
            n = int(meta.get("n", 0))
            if not key.startswith("u") or meta.get("user") != int(key[1:]) or n < 3 or \
                    meta != _json(va.get("json"), where, problems) or meta != _json(te.get("json"), where, problems):
                problems.add(where, f"json {meta} does not match the key or differs between splits")
                continue
            if user_map is not None and (meta["user"] >= len(user_map) or
                                         user_map[meta["user"]] != meta.get("raw_user")):
                problems.add(where, "raw_user differs from maps/users.npy")
            items = _npy(tr.get("items.npy"), "<i4", n - 2, where + ".items.npy", problems)
            if has_ts:
                _npy(tr.get("ts.npy"), "<i8", n - 2, where + ".ts.npy", problems)
            vh = _npy(va.get("history.npy"), "<i4", n - 2, where + " valid.history.npy", problems)
            vt = _npy(va.get("target.npy"), "<i4", 1, where + " valid.target.npy", problems)
            th = _npy(te.get("history.npy"), "<i4", n - 1, where + " test.history.npy", problems)
            tt = _npy(te.get("target.npy"), "<i4", 1, where + " test.target.npy", problems)
            if any(a is None for a in (items, vh, vt, th, tt)):
                continue
            full = np.concatenate([th, tt])
            if not (np.array_equal(items, vh) and np.array_equal(th, np.concatenate([vh, vt]))):
                problems.add(where, "valid/test histories do not extend the train sequence")
            if full.min() < 1 or full.max() > n_items:
                problems.add(where, f"dense item ids outside 1..{n_items}")
                continue
            np.add.at(recount, items, 1)
            split_inter["train"] += n - 2
            split_inter["valid"] += 1
            split_inter["test"] += 1


def _verify_items(root: str, m, item_map, train_counts, problems: _Problems) -> None:
    if not m.has_split("items"):
        problems.add("manifest", "no items split")
        return
    last_key, total = "", 0
    for shard in m.shards("items"):
        data = _check_file(root, shard.path, _expected(shard), problems)
        if data is None:
            continue
        samples = list(_samples(data, shard.path, problems))
        total += len(samples)
        if len(samples) != shard.samples:
            problems.add(shard.path, f"{len(samples)} samples, manifest says {shard.samples}")
        for key, members in samples:
            where = f"{shard.path}:{key}"
            if key <= last_key or not key.startswith("i"):
                problems.add(where, "item keys are not unique and ascending")
            last_key = key
            if set(members) != _MEMBERS["items"]:
                problems.add(where, f"members {sorted(members)}, expected json and txt")
                continue
            meta = _json(members["json"], where, problems)
            dense = meta.get("item")
            if dense != int(key[1:]) or not isinstance(meta.get("has_title"), bool):
                problems.add(where, f"json {meta} does not match the key")
            elif item_map is not None and train_counts is not None and (
                    not 1 <= dense < len(item_map) or item_map[dense] != meta.get("raw_item")
                    or train_counts[dense] != meta.get("train_count")):
                problems.add(where, f"json {meta} disagrees with maps/items.npy or the train counts")
            try:
                bytes(members["txt"]).decode("utf-8")
            except UnicodeDecodeError:
                problems.add(where, "title is not UTF-8")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mvrec_dist.data.verify", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset directory (local path or URI)")
    args = parser.parse_args(argv)
    problems = verify_dataset(args.dataset)
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    features = _features_manifest(args.dataset)
    if features is not None:
        print(f"{args.dataset}: OK (trunk features of {features['counts']['with_features']} items, "
              f"{len(features['splits']['features']['shards'])} shards verified)")
        return 0
    m = load_manifest(args.dataset)
    splits = [s for s in ("train", "valid", "test", "items", "content") if m.has_split(s)]
    print(f"{args.dataset}: OK ({m.num_users} users, {m.num_items} items, "
          f"{sum(len(m.shards(s)) for s in splits)} shards verified"
          + (f", content for {m.data['content']['counts']['with_content']} items" if "content" in splits else "")
          + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
