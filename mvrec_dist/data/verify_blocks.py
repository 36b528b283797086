"""Verification of the blocked splits (schema 2): train/valid/test blocks and the item table.

Used by ``python -m mvrec_dist.data.verify``. Works on the bytes of each shard, which the caller
has already checked against the manifest's size and sha256: parses the tar (``tar_samples``:
adjacency, duplicate members, safe extensions), decodes every member with the reader's decoders
(``members.member_decoder``: ``.npy`` never with pickle), checks the shard's block and row counts,
validates each block with ``blocks.Block.decode`` (members, dtypes, shapes, offsets, consecutive
ids where the manifest puts them, the key and the block json), and then checks
vectorised per block: train/valid/test of the same users agree (valid history = train items,
test history = valid history + valid target), dense item ids are in ``1..N``, raw ids match the
maps, the timestamps are present exactly in the splits the manifest lists (``timestamps.splits``;
train only for csv datasets from before that section), agree across the splits and never decrease
within a user, item train counts and title flags; and the ``exposures`` split of labelled datasets
(``verify_exposures``).
"""

from __future__ import annotations

import hashlib
import tarfile
from typing import Iterator

import numpy as np

from mvrec_dist.data import fs as dfs
from mvrec_dist.data.blocks import LAYOUTS, Block, BlockError, block_sizes
from mvrec_dist.data.manifest import Manifest, ShardInfo
from mvrec_dist.data.members import member_decoder

__all__ = ["Problems", "tar_samples", "read_file", "check_file", "verify_user_splits", "verify_items",
           "verify_exposures"]


class Problems(list):
    """Collected problems, capped so that a badly broken dataset still prints readably."""

    limit = 200

    def add(self, where: str, message: str) -> None:
        """Record ``where: message``."""
        if len(self) < self.limit:
            self.append(f"{where}: {message}")
        elif len(self) == self.limit:
            self.append("... (more problems not shown)")


def read_file(location: str) -> bytes:
    """The whole file at ``location`` (local path or URI)."""
    with dfs.open_input_file(location) as f:
        return f.read()


def check_file(root: str, rel: str, expected: dict, problems: Problems) -> bytes | None:
    """Read ``rel`` and check its size and sha256 against ``expected``; None when missing."""
    try:
        data = read_file(f"{root.rstrip('/')}/{rel}")
    except FileNotFoundError:
        problems.add(rel, "missing")
        return None
    if len(data) != expected.get("bytes"):
        problems.add(rel, f"{len(data)} bytes, manifest says {expected.get('bytes')}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.get("sha256"):
        problems.add(rel, f"sha256 {digest[:16]}... differs from the manifest's {str(expected.get('sha256'))[:16]}...")
    return data


def _tar_members(data: bytes) -> Iterator[tuple[str, str, memoryview]]:
    """``(name, typeflag, content)`` of each member; strict about headers (checksums, sizes).

    A small parser instead of ``tarfile``'s ``TarInfo`` objects; PAX ``path`` records apply.
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


def tar_samples(data: bytes, rel: str, problems: Problems) -> Iterator[tuple[str, dict[str, memoryview]]]:
    """Samples of one tar in file order; reports non-adjacent members and unsafe extensions.

    Args:
        data: The tar bytes.
        rel: Its path in the dataset (for messages).
        problems: Where problems go.

    Returns:
        An iterator of ``(key, {member: bytes view})``.
    """
    seen: set[str] = set()
    key, members = None, {}
    try:
        for name, flag, body in _tar_members(data):
            if flag != "0":
                problems.add(rel, f"member {name!r} is not a regular file")
                continue
            k, _, ext = name.partition(".")
            if ext.rsplit(".", 1)[-1] not in ("npy", "json", "txt"):
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


def _blocks(root: str, m: Manifest, split: str, shard: ShardInfo, index: int, first: int,
            problems: Problems) -> list[Block] | None:
    """The validated blocks of one shard (None when the file is unusable); problems recorded."""
    data = check_file(root, shard.path, {"bytes": shard.bytes, "sha256": shard.sha256}, problems)
    if data is None:
        return None
    layout, size = LAYOUTS[split], m.block_size(split)
    sizes = block_sizes(shard.samples, size)
    decoded = []
    for key, blobs in tar_samples(data, shard.path, problems):
        try:
            decoded.append((key, {name: member_decoder(name)(bytes(blob), 0, len(blob), True)
                                  for name, blob in blobs.items()}, list(blobs)))
        except (ValueError, OSError) as exc:
            problems.add(f"{shard.path}:{key}", f"unreadable member ({exc})")
            return None
    ids = [members.get(layout.ids) for _, members, _ in decoded]
    rows = sum(len(a) for a in ids if isinstance(a, np.ndarray) and a.ndim == 1)
    if len(decoded) != len(sizes) or rows != shard.samples:
        problems.add(shard.path, f"{rows} rows in {len(decoded)} blocks, the manifest says {shard.samples} rows "
                                 f"in {len(sizes)} blocks of <= {size}")
        return None
    out = []
    for k, (key, members, present) in enumerate(decoded):
        try:
            out.append(Block.decode(layout, key, members, present, index=index + k, first=first + k * size,
                                    n=sizes[k]))
        except BlockError as exc:
            problems.add(f"{shard.path}:{key}", str(exc))
            return None
    return out


def _decreasing(ts: np.ndarray, offsets: np.ndarray) -> bool:
    """Whether any row of a jagged timestamp array goes back in time."""
    step = np.diff(ts) < 0
    starts = offsets[1:-1]
    step[starts[(starts > 0) & (starts < len(ts))] - 1] = False  # a new row may start earlier
    return bool(step.any())


def _times_agree(tr: Block, va: Block, te: Block) -> list[str]:
    """What is wrong with the valid/test timestamps against the train ones (all three present)."""
    bad = []
    vo, to = va.arrays["offsets.npy"], te.arrays["offsets.npy"]
    vts, vtt = va.arrays["ts.npy"], va.arrays["targets_ts.npy"]
    if not np.array_equal(vts, tr.arrays["ts.npy"]):
        bad.append("valid ts.npy differs from the train timestamps")
    if not np.array_equal(te.arrays["ts.npy"], np.insert(vts, vo[1:], vtt)):
        bad.append("test ts.npy is not the valid timestamps followed by the valid target's")
    full = np.insert(te.arrays["ts.npy"], to[1:], te.arrays["targets_ts.npy"])
    if _decreasing(full, to + np.arange(len(to))):
        bad.append("a user's timestamps decrease (sequences are in time order)")
    return bad


def _agree(tr: Block, va: Block, te: Block, n_items: int, user_map: np.ndarray | None,
           has_ts: bool, eval_ts: bool = False) -> list[str]:
    """What is wrong between the train, valid and test blocks of the same users."""
    bad = []
    vo, to = va.arrays["offsets.npy"], te.arrays["offsets.npy"]
    vh, vt = va.arrays["history.npy"], va.arrays["targets.npy"]
    if not (np.array_equal(tr.arrays["offsets.npy"], vo) and np.array_equal(tr.arrays["items.npy"], vh)):
        bad.append("valid histories differ from the train sequences")
    if not np.array_equal(to, vo + np.arange(len(vo))) or \
            not np.array_equal(te.arrays["history.npy"], np.insert(vh, vo[1:], vt)):
        bad.append("test histories are not the valid histories followed by the valid targets")
    for split, b in (("train", tr), ("valid", va), ("test", te)):
        if user_map is not None and (b.ids[-1] >= len(user_map) or
                                     not np.array_equal(b.arrays["raw_users.npy"], user_map[b.ids])):
            bad.append(f"{split} raw_users.npy differs from maps/users.npy")
    every = np.concatenate([te.arrays["history.npy"], te.arrays["targets.npy"]])
    if len(every) and (every.min() < 1 or every.max() > n_items):
        bad.append(f"dense item ids outside 1..{n_items}")
    if ("ts.npy" in tr.arrays) != has_ts:
        bad.append("ts.npy " + ("missing (csv input has timestamps)" if has_ts else "present without timestamps"))
    for split, b in (("valid", va), ("test", te)):
        if ("ts.npy" in b.arrays, "targets_ts.npy" in b.arrays) != (eval_ts, eval_ts):
            bad.append(f"{split} ts.npy/targets_ts.npy " + ("missing (the manifest lists timestamps for the split)"
                                                            if eval_ts else "present; the manifest lists none"))
    if has_ts and eval_ts and not bad:
        bad += _times_agree(tr, va, te)
    return bad


def verify_user_splits(root: str, m: Manifest, has_ts: bool, user_map: np.ndarray | None,
                       recount: np.ndarray, split_inter: dict[str, int], problems: Problems, *,
                       recount_all: np.ndarray | None = None) -> None:
    """Check the train/valid/test shards block by block.

    Args:
        root: Dataset directory.
        m: Its manifest (``timestamp_splits`` says whether valid/test blocks hold timestamps).
        has_ts: Whether the input had timestamps (train blocks hold ``ts.npy`` exactly then).
        user_map: ``maps/users.npy`` or None when unreadable.
        recount: int64 [N+1]; the train item counts are added to it.
        split_inter: ``{split: interactions}``; the blocks' counts are added to it.
        problems: Where problems go.
        recount_all: int64 [N+1] or None; every item's interactions (train items, valid and test
            targets: the full sequences) are added to it.
    """
    shards = {s: m.shards(s) for s in ("train", "valid", "test")}
    if not len(shards["train"]) == len(shards["valid"]) == len(shards["test"]):
        problems.add("manifest", "train, valid and test have different numbers of shards")
        return
    if len({m.block_size(s) for s in shards}) != 1:
        problems.add("manifest", "train, valid and test have different users_per_block")
        return
    n_items = recount.shape[0] - 1
    eval_ts = {"valid", "test"} <= m.timestamp_splits
    index = first = 0
    for j in range(len(shards["train"])):
        got = {s: _blocks(root, m, s, shards[s][j], index, first, problems) for s in shards}
        if len({shards[s][j].samples for s in shards}) != 1:
            problems.add(shards["train"][j].path, "train, valid and test shards hold different numbers of users")
            return
        index += len(block_sizes(shards["train"][j].samples, m.block_size("train")))
        first += shards["train"][j].samples
        if any(b is None for b in got.values()):
            continue
        for tr, va, te in zip(got["train"], got["valid"], got["test"]):
            for message in _agree(tr, va, te, n_items, user_map, has_ts, eval_ts):
                problems.add(f"{shards['train'][j].path}:{tr.key}", message)
            items = tr.arrays["items.npy"]
            if len(items) and 1 <= items.min() and items.max() <= n_items:  # else reported by _agree
                recount += np.bincount(items, minlength=len(recount))
            if recount_all is not None:
                every = np.concatenate([items, va.arrays["targets.npy"], te.arrays["targets.npy"]])
                if len(every) and 1 <= every.min() and every.max() <= n_items:
                    recount_all += np.bincount(every, minlength=len(recount_all))
            split_inter["train"] += len(tr.arrays["items.npy"])
            split_inter["valid"] += len(va)
            split_inter["test"] += len(te)


def verify_items(root: str, m: Manifest, item_map: np.ndarray | None, train_counts: np.ndarray | None,
                 problems: Problems, *, interactions: np.ndarray | None = None,
                 expect_interactions: bool = False) -> int:
    """Check the items shards block by block.

    Args:
        root: Dataset directory.
        m: Its manifest.
        item_map: ``maps/items.npy`` or None when unreadable.
        train_counts: ``stats/item_train_counts.npy`` or None when unreadable.
        problems: Where problems go.
        interactions: ``stats/item_interactions.npy`` or None (absent or unreadable).
        expect_interactions: Blocks must hold ``interactions.npy`` (datasets with an ``item_labels``
            section); without it they may (datasets from before it have none).

    Returns:
        The number of items whose ``has_title`` is false (to compare with the manifest's
        ``items_without_title``).
    """
    index = first = without = 0
    for shard in m.shards("items"):
        blocks = _blocks(root, m, "items", shard, index, first, problems)
        index += len(block_sizes(shard.samples, m.block_size("items")))
        first += shard.samples
        for block in blocks or []:
            where = f"{shard.path}:{block.key}"
            has, titles = block.arrays["has_title.npy"], block.arrays["titles.json"]
            without += int((~has).sum())
            if any(t for h, t in zip(has.tolist(), titles) if not h):
                problems.add(where, "an item the titles file does not list (has_title false) has a title")
            if expect_interactions and "interactions.npy" not in block.arrays:
                problems.add(where, "no interactions.npy (the manifest has an item_labels section)")
            for name, table, what in (("raw_items.npy", item_map, "maps/items.npy"),
                                      ("train_counts.npy", train_counts, "stats/item_train_counts.npy"),
                                      ("interactions.npy", interactions, "stats/item_interactions.npy")):
                if name not in block.arrays:
                    continue
                if table is not None and (block.ids[-1] >= len(table) or
                                          not np.array_equal(block.arrays[name], table[block.ids])):
                    problems.add(where, f"{name} differs from {what}")
    return without


def verify_exposures(root: str, m: Manifest, user_map: np.ndarray | None, problems: Problems) -> tuple[int, int]:
    """Check the ``exposures`` split block by block (labelled datasets).

    Every user has a row (possibly empty); items are dense ids in ``1..N``, timestamps never
    decrease within a user, raw ids match the maps.

    Args:
        root: Dataset directory.
        m: Its manifest.
        user_map: ``maps/users.npy`` or None when unreadable.
        problems: Where problems go.

    Returns:
        ``(exposures, users with at least one)`` found in the shards.
    """
    index = first = total = users = 0
    size = m.block_size("exposures")
    for shard in m.shards("exposures"):
        blocks = _blocks(root, m, "exposures", shard, index, first, problems)
        index += len(block_sizes(shard.samples, size))
        first += shard.samples
        for block in blocks or []:
            where = f"{shard.path}:{block.key}"
            items, ts, off = (block.arrays[k] for k in ("items.npy", "ts.npy", "offsets.npy"))
            total += len(items)
            users += int((np.diff(off) > 0).sum())
            if len(items) and (items.min() < 1 or items.max() > m.num_items):
                problems.add(where, f"dense item ids outside 1..{m.num_items}")
            if _decreasing(ts, off):
                problems.add(where, "a user's exposure timestamps decrease (exposures are in time order)")
            if user_map is not None and (block.ids[-1] >= len(user_map) or
                                         not np.array_equal(block.arrays["raw_users.npy"], user_map[block.ids])):
                problems.add(where, "raw_users.npy differs from maps/users.npy")
    return total, users
