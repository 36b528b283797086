"""Writing the train/valid/test shards: leave-one-out samples into deterministic tars.

Shard ``j`` of every split holds the users with dense ids ``j*S+1 .. (j+1)*S`` (``S`` =
``ingest.shard_max_samples``), so shard names and contents depend only on the data and ``S``,
never on how Ray partitioned the work. The pipeline hash-partitions the per-user rows by shard
index and a ``ShardDatasink`` write task renders every shard of its block; it checks that each
shard arrived whole (exactly the users of its id range) before writing it.

Members per sample (``shards/README.md``), for a user with ordered dense items ``s[0..n-1]``:
train ``items.npy`` = ``s[:n-2]`` (+ ``ts.npy`` with timestamps), valid ``history.npy`` =
``s[:n-2]`` and ``target.npy`` = ``[s[n-2]]``, test ``history.npy`` = ``s[:n-1]`` and
``target.npy`` = ``[s[n-1]]``; each with ``json`` = ``{"user", "raw_user", "n"}``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
from ray.data.datasource import Datasink

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.tar_writer import BLOCK, scatter, tar_frame, write_bytes

__all__ = ["USER_SPLITS", "UserShard", "npy_header", "render_user_shards", "shard_path", "ShardDatasink",
           "dense_schema"]

USER_SPLITS = ("train", "valid", "test")
_I32 = np.dtype("<i4")
_I64 = np.dtype("<i8")
_npy_headers: dict[tuple[str, int], bytes] = {}


def dense_schema(with_ts: bool) -> pa.Schema:
    """Per-user rows with dense ids, as the write stage receives them."""
    fields = [pa.field("shard", pa.int64()), pa.field("user", pa.int64()), pa.field("raw_user", pa.int64()),
              pa.field("n", pa.int64()), pa.field("items", pa.large_list(pa.int32()))]
    if with_ts:
        fields.append(pa.field("ts", pa.large_list(pa.int64())))
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


def shard_path(split: str, index: int) -> str:
    """Relative path of shard ``index`` of ``split``."""
    return f"{split}/{split}-{index:05d}.tar"


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


@dataclass
class _Kind:
    """One member kind of a split (e.g. train ``items.npy``): its name suffix and per-user content."""

    suffix: bytes
    sizes: np.ndarray
    """Member size per user, int64 [K]."""
    src: np.ndarray
    """Where the data comes from (items int32, timestamps int64 or json bytes uint8)."""
    src_starts: np.ndarray
    lengths: np.ndarray
    """Elements of ``src`` per user."""
    headers: np.ndarray | None = None
    """``.npy`` header bytes per distinct length, uint8 [H, header length] (None for json)."""
    header_of: np.ndarray | None = None
    """Row of ``headers`` per user, int64 [K]."""


def _npy_kind(suffix: bytes, src: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> _Kind:
    uniq, inverse = np.unique(lengths, return_inverse=True)
    table = [npy_header(src.dtype, int(k)) for k in uniq]
    width = len(table[0])
    if any(len(h) != width for h in table):  # only for lengths with 10**15+ digits; keep it simple
        raise ValueError("npy headers of different lengths in one shard")
    headers = np.frombuffer(b"".join(table), dtype=np.uint8).reshape(len(table), width)
    return _Kind(suffix=suffix, sizes=width + lengths * src.dtype.itemsize, src=src, src_starts=starts,
                 lengths=lengths, headers=headers, header_of=inverse.reshape(-1))


def _name_fields(users: np.ndarray, kinds: list[_Kind]) -> np.ndarray:
    """NUL-padded tar name fields ``u%010d<suffix>``, kind-interleaved per user, uint8 [K * kinds, 100]."""
    k = len(users)
    digits = (users[:, None] // 10 ** np.arange(9, -1, -1, dtype=np.int64)) % 10 + 48
    fields = np.zeros((k, len(kinds), 100), dtype=np.uint8)
    fields[:, :, 0] = ord("u")
    fields[:, :, 1:11] = digits[:, None, :]
    for j, kind in enumerate(kinds):
        fields[:, j, 11:11 + len(kind.suffix)] = np.frombuffer(kind.suffix, dtype=np.uint8)
    return fields.reshape(k * len(kinds), 100)


def _render_split(users: np.ndarray, kinds: list[_Kind]) -> bytearray:
    sizes = np.stack([kind.sizes for kind in kinds], axis=1).reshape(-1)
    out, data_at = tar_frame(_name_fields(users, kinds), sizes)
    data_at = data_at.reshape(len(users), len(kinds))
    raw = np.frombuffer(out, dtype=np.uint8)
    for j, kind in enumerate(kinds):
        at = data_at[:, j]
        if kind.headers is None:
            scatter(raw, at, kind.src, kind.src_starts, kind.lengths)
            continue
        width = kind.headers.shape[1]
        # Data areas start on 512-byte blocks: headers are rows of the block view.
        raw.reshape(-1, BLOCK)[at // BLOCK, :width] = kind.headers[kind.header_of]
        item = kind.src.dtype.itemsize
        scatter(raw.view(kind.src.dtype), (at + width) // item, kind.src, kind.src_starts, kind.lengths)
    return out


def render_user_shards(s: UserShard) -> dict[str, bytearray]:
    """Render the train, valid and test tars of one shard.

    Everything is laid out per member kind over all users at once (numpy gathers into the archive
    buffer, no per-user Python): this is the hot loop of ingestion, nine members per user.

    Args:
        s: The shard's users.

    Returns:
        ``{split: tar bytes}``.
    """
    items = np.ascontiguousarray(s.items, dtype=_I32)
    a, n = s.offsets[:-1].astype(np.int64), s.n.astype(np.int64)
    users = s.users.astype(np.int64)
    meta = [b'{"user": %d, "raw_user": %d, "n": %d}' % t
            for t in zip(users.tolist(), s.raw_users.tolist(), n.tolist())]
    meta_len = np.fromiter(map(len, meta), dtype=np.int64, count=len(meta))
    json = _Kind(suffix=b".json", sizes=meta_len, src=np.frombuffer(b"".join(meta), dtype=np.uint8),
                 src_starts=np.cumsum(meta_len) - meta_len, lengths=meta_len)
    ones = np.ones_like(n)
    history = _npy_kind(b".history.npy", items, a, n - 2)
    train = [_npy_kind(b".items.npy", items, a, n - 2)]
    if s.ts is not None:
        train.append(_npy_kind(b".ts.npy", np.ascontiguousarray(s.ts, dtype=_I64), a, n - 2))
    splits = {
        "train": train + [json],
        "valid": [history, _npy_kind(b".target.npy", items, a + n - 2, ones), json],
        "test": [_npy_kind(b".history.npy", items, a, n - 1), _npy_kind(b".target.npy", items, a + n - 1, ones),
                 json],
    }
    return {split: _render_split(users, kinds) for split, kinds in splits.items()}


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets from 0, values)`` of a list column, whatever slicing it went through."""
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    return offsets - offsets[0], arr.values.to_numpy()[offsets[0]:offsets[-1]]


def _shard_from_rows(index: int, rows: pa.Table, with_ts: bool) -> UserShard:
    offsets, items = _flat(rows.column("items"))
    ts = _flat(rows.column("ts"))[1] if with_ts else None
    return UserShard(index=index, users=rows.column("user").to_numpy(), raw_users=rows.column("raw_user").to_numpy(),
                     n=rows.column("n").to_numpy(), offsets=offsets, items=items, ts=ts)


def write_user_shards(table: pa.Table, *, root: str, shard_size: int, num_users: int,
                      with_ts: bool) -> list[dict]:
    """Render and write every shard whose users are in ``table``.

    Args:
        table: Per-user rows (``dense_schema``) holding whole shards.
        root: Dataset directory being written (local or URI).
        shard_size: ``ingest.shard_max_samples``.
        num_users: Total kept users U (the last shard ends at U).
        with_ts: Write ``ts.npy`` in train samples.

    Returns:
        One entry per written tar: ``split``, ``index``, ``path``, ``samples``, ``bytes``,
        ``sha256``, ``interactions``.

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
        s = _shard_from_rows(j, rows, with_ts)
        train_interactions = int((s.n - 2).sum())
        for split, data in render_user_shards(s).items():
            path = shard_path(split, j)
            info = write_bytes(f"{root.rstrip('/')}/{path}", data)
            out.append({"split": split, "index": j, "path": path, "samples": len(users), **info,
                        "interactions": train_interactions if split == "train" else len(users)})
    return out


class ShardDatasink(Datasink):
    """Ray Data sink writing train/valid/test shards; the driver collects the shard entries."""

    def __init__(self, root: str, *, shard_size: int, num_users: int, with_ts: bool) -> None:
        """Create the sink.

        Args:
            root: Dataset directory being written (the temporary one).
            shard_size: ``ingest.shard_max_samples``.
            num_users: Total kept users U.
            with_ts: Whether train samples get ``ts.npy``.
        """
        self._root = root
        self._shard_size = shard_size
        self._num_users = num_users
        self._with_ts = with_ts
        self.entries: list[dict] = []

    def write(self, blocks: Iterable[pa.Table], ctx: object) -> list[dict]:
        """Write the shards held by this task's blocks."""
        tables = [b for b in blocks if b.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return write_user_shards(table, root=self._root, shard_size=self._shard_size,
                                 num_users=self._num_users, with_ts=self._with_ts)

    def on_write_complete(self, write_result: object) -> None:
        """Keep every task's entries (runs on the driver)."""
        self.entries = [e for returns in write_result.write_returns for e in returns]

    def get_name(self) -> str:
        """Name shown in progress bars."""
        return "WriteUserShards"
