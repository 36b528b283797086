"""Verification of per-item array stores: a dataset's ``content`` (frames) and ``text`` (title token ids)
splits, and trunk-feature stores.

Used by ``python -m mvrec_dist.data.verify`` (which dispatches on the manifest's ``kind``). Checks,
besides each shard's sha256, size and sample count: the tar structure (``ShardReader`` refuses
non-adjacent members, unordered keys and wrong counts), every sample's members, array dtype and
shape and json; that ``index.npy`` verifies and points at exactly the bytes of each item's array
(the training store reads through it without parsing the tar); and the content counts: items with
content + ID-only items = items, each ID-only item listed with a reason, none listed twice.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.manifest import Manifest
from mvrec_dist.data.plan import Chunk
from mvrec_dist.data.reader import ShardFormatError, ShardReader

__all__ = ["verify_content", "verify_text", "verify_features"]

_LIMIT = 200


def _read(root: str, rel: str) -> bytes | None:
    try:
        with dfs.open_input_file(f"{root.rstrip('/')}/{rel}") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _checked(root: str, rel: str, expected: dict, problems: list[str]) -> bytes | None:
    data = _read(root, rel)
    if data is None:
        problems.append(f"{rel}: missing")
        return None
    if len(data) != expected.get("bytes"):
        problems.append(f"{rel}: {len(data)} bytes, manifest says {expected.get('bytes')}")
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        problems.append(f"{rel}: sha256 differs from the manifest's")
    return data


def _verify_store(m: Manifest, split: str, member: str, shape: list, dtype: str, index_rel: str,
                  num_items: int, with_text: bool, problems: list[str], check_meta=None,
                  check_array=None) -> set[int]:
    """Check one store's shards and index; return the dense ids that have an array."""
    data = _checked(m.root, index_rel, m.data["files"].get(index_rel, {}), problems)
    index = None
    if data is not None:
        index = np.load(io.BytesIO(data), allow_pickle=False)
        if index.dtype != np.int64 or index.shape != (num_items + 1, 2) or index[0, 0] != -1:
            problems.append(f"{index_rel}: expected int64 [{num_items + 1}, 2] with row 0 empty, "
                            f"got {index.dtype} {list(index.shape)}")
            index = None
    expected_members = {member, "json"} | ({"txt"} if with_text else set())
    item_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    seen: set[int] = set()
    reader = ShardReader(m.root, split, manifest=m)
    for j, shard in enumerate(m.shards(split)):
        blob = _checked(m.root, shard.path, {"bytes": shard.bytes, "sha256": shard.sha256}, problems)
        if blob is None or shard.samples == 0:
            continue
        start = reader.starts[j]
        try:
            for _, sample in reader.iter_chunks([Chunk(start, start + shard.samples, None, 0, shard.samples)]):
                where = f"{shard.path}:{sample.key}"
                if len(problems) > _LIMIT:
                    return seen
                if not sample.key.startswith("i") or not sample.key[1:].isdigit():
                    problems.append(f"{where}: not an item key")
                    continue
                dense = int(sample.key[1:])
                if set(sample.members) != expected_members:
                    problems.append(f"{where}: members {sorted(sample.members)}, expected {sorted(expected_members)}")
                    continue
                arr, meta = sample.members[member], sample.members["json"]
                if arr.dtype != np.dtype(dtype) or list(arr.shape) != list(shape):
                    problems.append(f"{where}: {member} is {arr.dtype} {list(arr.shape)}, expected {dtype} {list(shape)}")
                    continue
                if not isinstance(meta, dict) or meta.get("item") != dense or not 1 <= dense <= num_items:
                    problems.append(f"{where}: json {meta} does not match the key (items 1..{num_items})")
                    continue
                if check_meta is not None:
                    check_meta(where, dense, meta, problems)
                if check_array is not None:
                    check_array(where, arr, meta, problems)
                if index is not None:
                    s, off = index[dense].tolist()
                    if s != j or bytes(blob[off:off + item_bytes]) != arr.tobytes():
                        problems.append(f"{where}: index.npy entry ({s}, {off}) does not point at this item's array")
                seen.add(dense)
        except ShardFormatError as exc:
            problems.append(str(exc))
    if index is not None:
        listed = set(np.nonzero(index[:, 0] >= 0)[0].tolist())
        if listed != seen:
            extra = sorted(listed - seen)[:5]
            problems.append(f"{index_rel}: lists {len(listed)} items with content, the shards hold {len(seen)} "
                            f"(e.g. {extra} only in the index)")
    if m.data["splits"][split]["samples"] != len(seen):
        problems.append(f"manifest: split {split} lists {m.data['splits'][split]['samples']} samples, "
                        f"shards hold {len(seen)}")
    return seen


def verify_content(m: Manifest, item_map: np.ndarray | None) -> list[str]:
    """Check a dataset's ``content`` split against its manifest section and the item map.

    Args:
        m: The dataset manifest (with a ``content`` split).
        item_map: ``maps/items.npy`` (raw id per dense id), or None when it did not load.

    Returns:
        Problems found (empty when the content verifies).
    """
    problems: list[str] = []
    c = m.data.get("content")
    if c is None:
        return ["manifest: split content without a content section"]

    def check_meta(where: str, dense: int, meta: dict, probs: list[str]) -> None:
        if item_map is not None and meta.get("raw_item") != int(item_map[dense]):
            probs.append(f"{where}: raw_item {meta.get('raw_item')} differs from maps/items.npy ({item_map[dense]})")
        synthetic = meta.get("source") == "synthetic"
        if not synthetic and len(meta.get("timestamps_s", [])) != c["shape"][0]:
            probs.append(f"{where}: {len(meta.get('timestamps_s', []))} timestamps for {c['shape'][0]} frames")

    n = m.num_items
    seen = _verify_store(m, "content", c["member"], c["shape"], c["dtype"], c["index"], n, True, problems, check_meta)
    counts = c["counts"]
    id_only = [e["item"] for e in c.get("id_only_items", [])]
    checks = {
        "with_content + id_only = items": counts["with_content"] + counts["id_only"] == counts["items"] == n,
        "decoded + synthetic = with_content": counts["decoded"] + counts["synthetic"] == counts["with_content"],
        "with_content = items in the shards": counts["with_content"] == len(seen),
        "every ID-only item listed once, with a reason": len(id_only) == len(set(id_only)) == counts["id_only"]
        and all(e.get("reason") for e in c.get("id_only_items", [])),
        "no item both with content and ID-only": not seen.intersection(id_only),
    }
    problems += [f"manifest content: {name} does not hold" for name, ok in checks.items() if not ok]
    return problems


def verify_text(m: Manifest, item_map: np.ndarray | None) -> list[str]:
    """Check a dataset's ``text`` split (title token ids) against its manifest section and the item map.

    Besides the store checks: every sample's ids start with a non-padding id, hold exactly
    ``json.tokens`` non-padding ids followed by padding only, and the counts reconcile (items with
    text + missing + empty titles = items, each item without text listed once).

    Args:
        m: The dataset manifest (with a ``text`` split).
        item_map: ``maps/items.npy``, or None when it did not load.

    Returns:
        Problems found (empty when the text verifies).
    """
    problems: list[str] = []
    c = m.data.get("text")
    if c is None:
        return ["manifest: split text without a text section"]
    member = c["member"]

    def check_meta(where: str, dense: int, meta: dict, probs: list[str]) -> None:
        if item_map is not None and meta.get("raw_item") != int(item_map[dense]):
            probs.append(f"{where}: raw_item {meta.get('raw_item')} differs from maps/items.npy ({item_map[dense]})")

    seen = _verify_store(m, "text", member, c["shape"], c["dtype"], c["index"], m.num_items, True, problems,
                         check_meta, check_array=_check_tokens)
    counts = c["counts"]
    without = c.get("missing_title_items", []) + c.get("empty_title_items", [])
    checks = {
        "with_text + missing_title + empty_title = items": counts["with_text"] + counts["missing_title"]
        + counts["empty_title"] == counts["items"] == m.num_items,
        "with_text = items in the shards": counts["with_text"] == len(seen),
        "every item without text listed once": len(without) == len(set(without))
        == counts["missing_title"] + counts["empty_title"],
        "no item both with text and without": not seen.intersection(without),
    }
    problems += [f"manifest text: {name} does not hold" for name, ok in checks.items() if not ok]
    return problems


def _check_tokens(where: str, ids: np.ndarray, meta: dict, probs: list[str]) -> None:
    real = int((ids != 0).sum())
    if ids.size and (ids[0] == 0 or real != meta.get("tokens") or (ids[:real] == 0).any()):
        probs.append(f"{where}: token ids are not {meta.get('tokens')} non-padding ids followed by padding")


def verify_features(root: str, data: dict[str, Any]) -> list[str]:
    """Check a trunk-feature store (``jobs/cache_trunk_features.py``).

    Args:
        root: The store directory.
        data: Its manifest.

    Returns:
        Problems found.
    """
    problems: list[str] = []
    m = Manifest(root=root, data=data)
    n = int(data["counts"]["items"])
    seen = _verify_store(m, "features", data["member"], data["shape"], data["dtype"], data["index"], n, False,
                         problems)
    if data["counts"]["with_features"] != len(seen):
        problems.append(f"manifest counts: with_features = {data['counts']['with_features']}, "
                        f"shards hold {len(seen)}")
    return problems
