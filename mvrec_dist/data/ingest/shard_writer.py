"""Writing the train/valid/test shards: leave-one-out splits as blocked, columnar tars (schema 2).

Shard ``j`` of every split holds the users with dense ids ``j*S+1 .. (j+1)*S`` (``S`` =
``ingest.shard_max_samples``), so shard names and contents depend only on the data, ``S`` and the
block size ``B``, never on how Ray partitioned the work. ``write_user_shards`` is called with
whole shards (``range_writer``: by the task holding a shard's user range, or from the pieces of
neighbouring ranges) and checks that each shard arrived whole (exactly the users of its id range)
before writing it.

A shard is cut into blocks of ``B`` consecutive users (the last block of a shard may be shorter);
block ``k`` of shard ``j`` has the split-wide index ``j * ceil(S/B) + k`` (every shard but the last
is full, so indices run 0, 1, 2, ... without gaps) and the key ``b%010d``. For users with ordered
dense items ``s[0..n-1]`` a block holds (``shards/README.md``, ``mvrec_dist.data.blocks``): train
``items.npy`` = the ``s[:n-2]`` concatenated (+ ``ts.npy``), valid ``history.npy`` = the same with
``targets.npy`` = ``s[n-2]``, test ``history.npy`` = the ``s[:n-1]`` with ``targets.npy`` =
``s[n-1]``; each with ``users.npy``, ``raw_users.npy``, ``offsets.npy`` and the block ``json``.
With timestamps (csv input) every split carries them: train ``ts.npy``, valid and test ``ts.npy``
beside ``history.npy`` and ``targets_ts.npy`` beside ``targets.npy``. With labelled input a fourth
split, ``exposures``, holds each user's exposures (``items.npy``, ``ts.npy``; possibly none). FRAME's
input (``plays_csv``) adds the playing time and duration of every interaction the same way as the
timestamps: ``play.npy``/``duration.npy`` beside the items or history, ``targets_play.npy``/
``targets_duration.npy`` beside the targets.
Rendering is a handful of numpy gathers per shard and a few members per block: nothing per user.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa

from mvrec_dist.data.blocks import LAYOUTS, block_key, block_meta, block_sizes
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.resume import verified_entries, write_shard
from mvrec_dist.data.ingest.tar_writer import Payload, tar_bytes, write_bytes

__all__ = ["USER_SPLITS", "EXPOSURE_SPLIT", "UserShard", "npy_header", "npy_payload", "json_payload", "render_blocks",
           "render_user_shards", "write_user_shards", "shard_path", "first_block_index", "dense_schema", "PLAY_MEMBERS"]

USER_SPLITS = ("train", "valid", "test")
EXPOSURE_SPLIT = "exposures"
"""The user split of labelled datasets holding each user's label-0 rows (``shards/README.md``)."""
_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")
_npy_headers: dict[tuple[str, int], bytes] = {}


PLAY_MEMBERS = ("play", "duration")
"""Per-interaction values of ``plays_csv`` input, stored as ``<name>.npy`` / ``targets_<name>.npy``."""


def dense_schema(with_ts: bool, labels: bool = False, plays: bool = False) -> pa.Schema:
    """Per-user rows with dense ids, as the write stage receives them (``exp_*``: the exposures; with
    ``plays`` the ``play`` and ``duration`` lists)."""
    fields = [pa.field("shard", pa.int64()), pa.field("user", pa.int64()), pa.field("raw_user", pa.int64()),
              pa.field("n", pa.int64()), pa.field("items", pa.large_list(pa.int32()))]
    if with_ts:
        fields.append(pa.field("ts", pa.large_list(pa.int64())))
    if plays:
        fields += [pa.field(c, pa.large_list(pa.int64())) for c in PLAY_MEMBERS]
    if labels:
        fields += [pa.field("exp_items", pa.large_list(pa.int32())), pa.field("exp_ts", pa.large_list(pa.int64()))]
    return pa.schema(fields)


def npy_header(dtype: np.dtype, length: int) -> bytes:
    """The exact ``.npy`` header ``np.save`` writes for a 1-D array of ``length`` (cached)."""
    key = (dtype.str, length)
    header = _npy_headers.get(key)
    if header is None:
        bio = io.BytesIO()
        np.save(bio, np.zeros(length, dtype=dtype), allow_pickle=False)
        header = bio.getvalue()[:len(bio.getvalue()) - length * dtype.itemsize]
        if len(_npy_headers) < 1 << 16:
            _npy_headers[key] = header
    return header


def npy_payload(array: np.ndarray) -> Payload:
    """A 1-D array as ``.npy`` member pieces (header, then the array's bytes without a copy).

    Args:
        array: A 1-D array (made contiguous if it is not).

    Returns:
        The pieces ``tar_writer.tar_bytes`` writes back to back.
    """
    array = np.ascontiguousarray(array)
    return (npy_header(array.dtype, len(array)), memoryview(array.view(np.uint8)))


def shard_path(split: str, index: int) -> str:
    """Relative path of shard ``index`` of ``split``."""
    return f"{split}/{split}-{index:05d}.tar"


def first_block_index(shard: int, shard_size: int, block_size: int) -> int:
    """Split-wide index of the first block of shard ``shard`` (every earlier shard is full)."""
    return shard * -(-shard_size // block_size)


def render_blocks(blocks: Iterable[tuple[int, dict[str, Payload]]]) -> bytearray:
    """Render a tar of blocks: for each ``(index, {member: payload})`` the members ``b%010d.<member>``.

    Args:
        blocks: Blocks in ascending index order; each member's payload as ``tar_bytes`` pieces.

    Returns:
        The tar bytes (deterministic headers, members of a block adjacent).
    """
    names, payloads = [], []
    for index, members in blocks:
        key = block_key(index).encode("ascii")
        for name, payload in members.items():
            names.append(key + b"." + name.encode("ascii"))
            payloads.append(payload)
    return tar_bytes(names, payloads)


def json_payload(meta: dict) -> Payload:
    """A JSON value as member pieces (UTF-8)."""
    return (json.dumps(meta).encode("utf-8"),)


@dataclass
class UserShard:
    """The users of one shard, ascending by dense id."""

    index: int
    users: np.ndarray
    """Dense user ids, int64 [K]."""
    raw_users: np.ndarray
    """Raw user ids, int64 [K]."""
    n: np.ndarray
    """Sequence lengths, int64 [K] (each >= 3)."""
    offsets: np.ndarray
    """Start of each user's sequence in ``items``/``ts``, int64 [K+1]."""
    items: np.ndarray
    """Ordered dense item ids of all users, int32 [sum n]."""
    ts: np.ndarray | None
    """Their timestamps, int64 [sum n], or None without timestamps."""
    exp_offsets: np.ndarray | None = None
    """Start of each user's exposures in ``exp_items``/``exp_ts``, int64 [K+1]; None without labels."""
    exp_items: np.ndarray | None = None
    """Dense item ids of every user's exposures in time order, int32 [E]."""
    exp_ts: np.ndarray | None = None
    """Their timestamps, int64 [E]."""
    plays: dict[str, np.ndarray] | None = None
    """``plays_csv``: ``play`` and ``duration`` of every interaction, int64 [sum n] each, like ``ts``."""


def _prefix(values: np.ndarray, offsets: np.ndarray, n: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The first ``keep[i]`` of each user's ``n[i]`` values, concatenated (one boolean gather)."""
    within = np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], n)
    return values[within < np.repeat(keep, n)]


def render_user_shards(s: UserShard, *, shard_size: int, block_size: int) -> dict[str, bytearray]:
    """Render the train, valid and test tars of one shard.

    Args:
        s: The shard's users (``s.index`` is the shard index).
        shard_size: ``ingest.shard_max_samples`` (fixes the split-wide block indices).
        block_size: ``ingest.users_per_block``.

    Returns:
        ``{split: tar bytes}`` (``exposures`` too when ``s`` has exposures).
    """
    users, raw = np.ascontiguousarray(s.users, dtype=_I64), np.ascontiguousarray(s.raw_users, dtype=_I64)
    n, offsets = s.n.astype(np.int64), s.offsets.astype(np.int64)
    items = np.ascontiguousarray(s.items, dtype=_I32)
    train = _prefix(items, offsets, n, n - 2)  # also the valid histories
    test = _prefix(items, offsets, n, n - 1)
    valid_at, test_at = offsets[:-1] + n - 2, offsets[:-1] + n - 1
    ts = np.ascontiguousarray(s.ts, dtype=_I64) if s.ts is not None else None
    train_ts = _prefix(ts, offsets, n, n - 2) if ts is not None else None
    test_ts = _prefix(ts, offsets, n, n - 1) if ts is not None else None
    plays = {}
    for name, values in (s.plays or {}).items():
        values = np.ascontiguousarray(values, dtype=_I64)
        plays[name] = (_prefix(values, offsets, n, n - 2), _prefix(values, offsets, n, n - 1), values)
    train_off = np.concatenate([[0], np.cumsum(n - 2)])
    test_off = np.concatenate([[0], np.cumsum(n - 1)])
    valid_targets, test_targets = items[valid_at], items[test_at]
    exp_off = s.exp_offsets.astype(np.int64) if s.exp_offsets is not None else None
    splits = USER_SPLITS + ((EXPOSURE_SPLIT,) if exp_off is not None else ())
    out: dict[str, list] = {split: [] for split in splits}
    lo, index = 0, first_block_index(s.index, shard_size, block_size)
    for size in block_sizes(len(users), block_size):
        hi = lo + size
        common = {"users.npy": npy_payload(users[lo:hi]), "raw_users.npy": npy_payload(raw[lo:hi])}
        t0, t1, h0, h1 = int(train_off[lo]), int(train_off[hi]), int(test_off[lo]), int(test_off[hi])
        train_offsets = npy_payload(train_off[lo:hi + 1] - t0)
        # Valid and test carry the times of their histories and targets, so evaluation can use time gaps.
        valid_times = {"ts.npy": npy_payload(train_ts[t0:t1]),
                       "targets_ts.npy": npy_payload(ts[valid_at[lo:hi]])} if ts is not None else {}
        test_times = {"ts.npy": npy_payload(test_ts[h0:h1]),
                      "targets_ts.npy": npy_payload(ts[test_at[lo:hi]])} if ts is not None else {}
        train_plays = {}
        for name, (tr, te, values) in plays.items():  # the same cuts as the timestamps
            train_plays[f"{name}.npy"] = npy_payload(tr[t0:t1])
            valid_times.update({f"{name}.npy": npy_payload(tr[t0:t1]),
                                f"targets_{name}.npy": npy_payload(values[valid_at[lo:hi]])})
            test_times.update({f"{name}.npy": npy_payload(te[h0:h1]),
                               f"targets_{name}.npy": npy_payload(values[test_at[lo:hi]])})
        parts = [("train", {"offsets.npy": train_offsets, "items.npy": npy_payload(train[t0:t1]),
                            **({"ts.npy": npy_payload(train_ts[t0:t1])} if train_ts is not None else {}),
                            **train_plays}),
                 ("valid", {"offsets.npy": train_offsets, "history.npy": npy_payload(train[t0:t1]),
                            "targets.npy": npy_payload(valid_targets[lo:hi]), **valid_times}),
                 ("test", {"offsets.npy": npy_payload(test_off[lo:hi + 1] - h0),
                           "history.npy": npy_payload(test[h0:h1]), "targets.npy": npy_payload(test_targets[lo:hi]),
                           **test_times})]
        if exp_off is not None:
            e0, e1 = int(exp_off[lo]), int(exp_off[hi])
            parts.append((EXPOSURE_SPLIT, {"offsets.npy": npy_payload(exp_off[lo:hi + 1] - e0),
                                           "items.npy": npy_payload(np.ascontiguousarray(s.exp_items[e0:e1], _I32)),
                                           "ts.npy": npy_payload(np.ascontiguousarray(s.exp_ts[e0:e1], _I64))}))
        for split, members in parts:
            meta = json_payload(block_meta(LAYOUTS[split], index, int(users[lo]), size))
            out[split].append((index, {"json": meta, **common, **members}))
        lo, index = hi, index + 1
    return {split: render_blocks(blocks) for split, blocks in out.items()}


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets from 0, values)`` of a list column, whatever slicing it went through."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    return offsets - offsets[0], arr.values.to_numpy()[offsets[0]:offsets[-1]]


def _shard_from_rows(index: int, rows: pa.Table, with_ts: bool, labels: bool = False,
                     plays: bool = False) -> UserShard:
    offsets, items = _flat(rows.column("items"))
    ts = _flat(rows.column("ts"))[1] if with_ts else None
    exp_offsets, exp_items = _flat(rows.column("exp_items")) if labels else (None, None)
    exp_ts = _flat(rows.column("exp_ts"))[1] if labels else None
    return UserShard(index=index, users=rows.column("user").to_numpy(), raw_users=rows.column("raw_user").to_numpy(),
                     n=rows.column("n").to_numpy(), offsets=offsets, items=items, ts=ts, exp_offsets=exp_offsets,
                     exp_items=exp_items, exp_ts=exp_ts,
                     plays={c: _flat(rows.column(c))[1] for c in PLAY_MEMBERS} if plays else None)


def write_user_shards(table: pa.Table, *, root: str, shard_size: int, block_size: int, num_users: int,
                      with_ts: bool, labels: bool = False, plays: bool = False,
                      resume_key: str | None = None) -> list[dict]:
    """Render and write every shard whose users are in ``table``.

    Args:
        table: Per-user rows (``dense_schema``) holding whole shards.
        root: Dataset directory being written (local or URI).
        shard_size: ``ingest.shard_max_samples``.
        block_size: ``ingest.users_per_block``.
        num_users: Total kept users U (the last shard ends at U).
        with_ts: Write the timestamps (``ts.npy``, ``targets_ts.npy``).
        labels: Write the ``exposures`` split (``table`` has the ``exp_*`` columns).
        plays: Write ``play.npy``/``duration.npy`` and their ``targets_*`` (``table`` has the columns).
        resume_key: With ``ingest.resume``: this run's ``resume.resume_key``; a shard an interrupted run
            finished is reused when ``resume.verified_entries`` checks it, every file written gets a
            completion record. None: every shard is written, without records.

    Returns:
        One entry per tar: ``split``, ``index``, ``path``, ``samples`` (users), ``blocks``, ``bytes``,
        ``sha256``, ``interactions`` (in ``exposures``: the exposures); ``reused: True`` on a shard taken
        from an interrupted run instead of written.

    Raises:
        IngestError: when a shard's users are not exactly its id range (a grouping failure).
    """
    if table.num_rows == 0:
        return []
    order = np.lexsort((table.column("user").to_numpy(), table.column("shard").to_numpy()))
    table = table.take(order)
    shard = table.column("shard").to_numpy()
    bounds = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1], True])
    out = []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        j = int(shard[lo])
        rows = table.slice(lo, hi - lo)
        users = rows.column("user").to_numpy()
        first, last = j * shard_size + 1, min((j + 1) * shard_size, num_users)
        if len(users) != last - first + 1 or users[0] != first or users[-1] != last or \
                np.any(np.diff(users) != 1):
            raise IngestError(f"shard {j} received {len(users)} users ({users[:3].tolist()}...) instead of "
                              f"exactly users {first}..{last}: the partitioning split or duplicated users")
        s = _shard_from_rows(j, rows, with_ts, labels, plays)
        counted = {"train": int((s.n - 2).sum()), "valid": len(users), "test": len(users),
                   EXPOSURE_SPLIT: len(s.exp_items) if labels else 0}
        blocks = len(block_sizes(len(users), block_size))
        expected = {split: {"split": split, "index": j, "path": shard_path(split, j), "samples": len(users),
                            "blocks": blocks, "interactions": counted[split]}
                    for split in USER_SPLITS + ((EXPOSURE_SPLIT,) if labels else ())}
        reused = verified_entries(root, expected, resume_key) if resume_key else {}
        out += [dict(entry, reused=True) for entry in reused.values()]
        if len(reused) == len(expected):
            continue  # nothing to render
        for split, data in render_user_shards(s, shard_size=shard_size, block_size=block_size).items():
            if split in reused:
                continue
            entry = expected[split]
            info = write_shard(root, entry, data, resume_key) if resume_key else \
                write_bytes(f"{root.rstrip('/')}/{entry['path']}", data)
            out.append({**entry, **info})
    return out
