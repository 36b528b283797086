"""Print a dataset's summary or one sample: ``python -m mvrec_dist.data.inspect DATASET [--split S] [--key K]``.

Without ``--key`` it prints the manifest summary (counts, reconciliation, shards per split); with
``--split`` alone, that split's shards and its first sample; with ``--key`` (``u0000000001`` or
``i0000000001``) that sample, its arrays shown with dense ids and the raw ids they map to.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.manifest import Manifest, ManifestError, load_manifest

__all__ = ["summary", "find_sample", "format_sample", "main"]


def summary(m: Manifest) -> str:
    """The manifest summary as text."""
    d = m.data
    lines = [f"dataset {m.root}  (schema {d['schema_version']}, created {d.get('created_at')})",
             "inputs: " + ", ".join(f"{i['path']} ({i['bytes']} bytes, {i['format']})" for i in d.get("inputs", []))]
    c = d["counts"]
    lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in c.items() if not isinstance(v, dict)))
    lines.append("interactions per split: " + ", ".join(f"{k}={v}" for k, v in c["interactions"].items()))
    lines.append(f"reconciliation ok: {d.get('reconciliation', {}).get('ok')}")
    for split, entry in d["splits"].items():
        size = sum(s["bytes"] for s in entry["shards"])
        lines.append(f"  {split:6s} {entry['samples']:>10} samples in {len(entry['shards'])} shards, "
                     f"{size / 1e6:.1f} MB")
    q = d.get("quarantine") or {}
    if q.get("path"):
        lines.append(f"quarantine: {q['rows']} rows in {q['path']}")
    return "\n".join(lines)


def _shard_order(m: Manifest, split: str, key: str) -> list:
    shards = m.shards(split)
    size = m.data.get("config", {}).get("ingest", {}).get("shard_max_samples")
    if size and key[1:].isdigit() and int(key[1:]) >= 1:
        j = (int(key[1:]) - 1) // size
        if j < len(shards):
            return [shards[j]] + shards[:j] + shards[j + 1:]  # the likely shard first
    return shards


def find_sample(m: Manifest, split: str, key: str | None) -> tuple[str, dict[str, bytes]] | None:
    """Find sample ``key`` (or the first sample when ``key`` is None) of ``split``.

    Args:
        m: The manifest.
        split: Split name.
        key: Sample key, or None.

    Returns:
        ``(key, {extension: bytes})`` or None when absent.
    """
    for shard in (_shard_order(m, split, key) if key else m.shards(split)):
        with dfs.open_input_file(m.path(shard.path)) as f:
            data = f.read()
        members: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                k, _, ext = info.name.partition(".")
                if key is None:
                    key = k
                if k == key:
                    members[ext] = tar.extractfile(info).read()
                elif members:
                    break
        if members:
            return key, members
    return None


def format_sample(m: Manifest, key: str, members: dict[str, bytes]) -> str:
    """Render a sample's members (arrays with their raw ids)."""
    item_map = np.load(io.BytesIO(_read(m, m.data["maps"]["items"])), allow_pickle=False)
    lines = [f"sample {key}"]
    for ext, blob in members.items():
        if ext.endswith("npy"):
            arr = np.load(io.BytesIO(blob), allow_pickle=False)
            lines.append(f"  {ext}: {arr.dtype} {list(arr.shape)} {arr.tolist()}")
            if ext != "ts.npy" and arr.dtype.kind == "i" and arr.size and 0 < arr.min() and arr.max() < len(item_map):
                lines.append(f"  {' ' * len(ext)}  raw item ids: {item_map[arr].tolist()}")
        elif ext == "json":
            lines.append(f"  json: {json.dumps(json.loads(blob))}")
        else:
            lines.append(f"  {ext}: {blob.decode('utf-8', errors='backslashreplace')!r}")
    return "\n".join(lines)


def _read(m: Manifest, rel: str) -> bytes:
    with dfs.open_input_file(m.path(rel)) as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mvrec_dist.data.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset directory (local path or URI)")
    parser.add_argument("--split", default=None, help="train, valid, test or items")
    parser.add_argument("--key", default=None, help="sample key, e.g. u0000000001 (users) or i0000000001 (items)")
    args = parser.parse_args(argv)
    try:
        m = load_manifest(args.dataset)
        if args.split is None and args.key is None:
            print(summary(m))
            return 0
        split = args.split or ("items" if args.key.startswith("i") else "train")
        if args.key is None:
            for s in m.shards(split):
                print(f"{s.path}  {s.samples} samples  {s.bytes} bytes  sha256 {s.sha256[:16]}...")
        found = find_sample(m, split, args.key)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if found is None:
        print(f"error: no sample {args.key} in split {split}", file=sys.stderr)
        return 1
    print(format_sample(m, *found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
