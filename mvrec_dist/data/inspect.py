"""Print a dataset's summary or one sample: ``python -m mvrec_dist.data.inspect DATASET [--split S] [--key K]``.

Without ``--key`` it prints the manifest summary (counts, reconciliation, shards and blocks per
split); with ``--split`` alone, that split's shards and its first sample; with ``--key``
(``u0000000001`` or ``i0000000001``) that sample as the reader returns it (in the blocked splits
it is built from its block), arrays shown with dense ids and the raw ids they map to.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from typing import Any

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.blocks import BLOCKED_SPLITS
from mvrec_dist.data.manifest import BLOCK_SIZE_KEYS, Manifest, ManifestError, load_manifest
from mvrec_dist.data.members import member_decoder
from mvrec_dist.data.plan import Chunk
from mvrec_dist.data.reader import ShardFormatError, ShardReader

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
    if d.get("labels"):
        lab = d["labels"]
        lines.append(f"labels ({lab['column']}): {lab['clicked_rows']} clicked rows, {lab['exposure_rows']} exposure "
                     f"rows ({lab['exposures']['kept']} kept for {lab['exposures']['users']} users)")
    if d.get("timestamps"):
        lines.append(f"timestamps in: {', '.join(d['timestamps']['splits'])}")
    for split, entry in d["splits"].items():
        size = sum(s["bytes"] for s in entry.get("shards", []))
        blocks = ""
        if split in BLOCK_SIZE_KEYS:
            blocks = (f" ({sum(s.get('blocks', 0) for s in entry['shards'])} blocks of <= "
                      f"{entry.get(BLOCK_SIZE_KEYS[split])})")
        lines.append(f"  {split:9s} {entry.get('samples', 0):>10} samples in {len(entry.get('shards', []))} shards, "
                     f"{size / 1e6:.1f} MB{blocks}")
    q = d.get("quarantine") or {}
    if q.get("path"):
        lines.append(f"quarantine: {q['rows']} rows in {q['path']}")
    return "\n".join(lines)


def _row_index(key: str | None) -> int | None:
    """Global index of a per-row key (``u``/``i`` + dense id) in a blocked split."""
    if key is None:
        return 0
    if len(key) == 11 and key[0] in "ui" and key[1:].isdigit() and int(key[1:]) >= 1:
        return int(key[1:]) - 1
    return None


def _scan(m: Manifest, split: str, key: str | None) -> tuple[str, dict[str, Any]] | None:
    """Find a sample of a per-item split (``content``) by scanning its tars."""
    for shard in m.shards(split):
        with dfs.open_input_file(m.path(shard.path)) as f:
            data = f.read()
        members: dict[str, Any] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                k, _, ext = info.name.partition(".")
                if key is None:
                    key = k
                if k == key:
                    blob = tar.extractfile(info).read()
                    members[ext] = member_decoder(ext)(blob, 0, len(blob), True)
                elif members:
                    break
        if members:
            return key, members
    return None


def find_sample(m: Manifest, split: str, key: str | None) -> tuple[str, dict[str, Any]] | None:
    """Find sample ``key`` (or the first sample when ``key`` is None) of ``split``.

    Args:
        m: The manifest.
        split: Split name.
        key: Per-row sample key (``u%010d``, ``i%010d``), or None.

    Returns:
        ``(key, {member: decoded value})`` or None when absent.
    """
    if split not in BLOCKED_SPLITS:
        return _scan(m, split, key)
    g = _row_index(key)
    reader = ShardReader(m.root, split, manifest=m)
    if g is None or g >= reader.num_samples:
        return None
    for _, sample in reader.iter_chunks([Chunk(g, g + 1, None, 0, 1)]):
        if key is not None and sample.key != key:
            return None
        return sample.key, sample.members
    return None


def format_sample(m: Manifest, key: str, members: dict[str, Any]) -> str:
    """Render a sample's members (arrays with their raw ids)."""
    item_map = np.load(io.BytesIO(_read(m, m.data["maps"]["items"])), allow_pickle=False)
    lines = [f"sample {key}"]
    for ext, value in members.items():
        if isinstance(value, np.ndarray):
            lines.append(f"  {ext}: {value.dtype} {list(value.shape)} {value.tolist()}")
            if ext != "ts.npy" and value.dtype.kind == "i" and value.size and 0 < value.min() and \
                    value.max() < len(item_map):
                lines.append(f"  {' ' * len(ext)}  raw item ids: {item_map[value].tolist()}")
        elif ext.endswith("json"):
            lines.append(f"  {ext}: {json.dumps(value, ensure_ascii=False)}")
        else:
            lines.append(f"  {ext}: {value!r}")
    return "\n".join(lines)


def _read(m: Manifest, rel: str) -> bytes:
    with dfs.open_input_file(m.path(rel)) as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mvrec_dist.data.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="dataset directory (local path or URI)")
    parser.add_argument("--split", default=None, help="train, valid, test, items or content")
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
                blocks = f" in {s.blocks} blocks" if s.blocks is not None else ""
                print(f"{s.path}  {s.samples} samples{blocks}  {s.bytes} bytes  sha256 {s.sha256[:16]}...")
        found = find_sample(m, split, args.key)
    except (ManifestError, ShardFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if found is None:
        print(f"error: no sample {args.key} in split {split}", file=sys.stderr)
        return 1
    print(format_sample(m, *found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
