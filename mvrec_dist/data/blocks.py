"""Schema-2 blocks: the columnar tar samples of the user splits and of the item table.

``shards/README.md`` specifies the format; this module is its one description in code, shared by
the writers (``ingest.shard_writer``, ``ingest.items``), the reader and the verifier:

* ``LAYOUTS``: the members of a block of each split, their dtypes, and how they index rows
  (one value per row, or jagged through ``offsets.npy``, or a JSON list);
* ``Block``: one decoded block, validated (``Block.decode``), with per-row access:
  ``Block.samples`` builds the per-user (per-item) ``Sample``s of the reader contract out of views
  of the block arrays, and ``Block.slice`` cuts a row range for vectorised bulk readers.

A block holds ``n`` consecutive rows (dense ids ``first .. first+n-1``); in the user splits each
row is a user, in ``items`` an item. Jagged members concatenate the rows' sequences:
row ``i`` is ``values[offsets[i]:offsets[i+1]]``.

Timestamps are optional members (csv input only): ``ts.npy`` beside a split's items, and in valid
and test ``targets_ts.npy`` beside ``targets.npy`` (datasets ingested before those existed have the
train ``ts.npy`` only; the manifest's ``timestamps`` section lists the splits that hold them). The
``exposures`` split (labelled input only) holds each user's label-0 rows, possibly none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = ["Layout", "LAYOUTS", "BLOCKED_SPLITS", "Block", "BlockError", "Sample", "block_key", "block_meta",
           "block_sizes", "row_members", "needed_members", "encode_titles"]

BLOCKED_SPLITS = ("train", "valid", "test", "items", "exposures")
"""Splits stored as blocks (schema 2); ``content`` stays one sample per item."""


class Sample(NamedTuple):
    """One decoded per-row sample (a user of a user split, an item, a content item)."""

    key: str
    """Sample key, e.g. ``u0000000123``."""
    members: dict[str, Any]
    """Member extension (``items.npy``, ``json``, ``txt``) -> ndarray, JSON value or str."""


class BlockError(ValueError):
    """A block breaks the format; the message says what (the caller adds file and key)."""


@dataclass(frozen=True)
class Layout:
    """The members of one split's blocks and the per-row samples built from them."""

    split: str
    row_prefix: str
    """Key prefix of the per-row samples: ``u`` (users) or ``i`` (items)."""
    noun: str
    """``user`` or ``item``: names the block json's ``first_<noun>``/``last_<noun>``."""
    ids: str
    """Member holding the dense ids, int64 [n]."""
    raw_ids: str
    """Member holding the raw ids, int64 [n]."""
    rows: dict[str, str] = field(default_factory=dict)
    """Further members with one value per row: name -> dtype."""
    jagged: dict[str, str] = field(default_factory=dict)
    """Members indexed through ``offsets.npy``: name -> dtype."""
    optional: frozenset[str] = frozenset()
    """Members a block may lack (the timestamps without input timestamps)."""
    min_length: int = 0
    """Shortest jagged row (train and valid histories hold >= 1 item, test >= 2, exposures >= 0)."""
    length_to_n: int = 0
    """A user's ``n`` (per-row json) = jagged row length + this (train/valid 2, test 1; exposures 0: the
    exposures)."""
    text: str | None = None
    """Member holding a JSON list of one string per row (item titles), or None."""

    @property
    def members(self) -> frozenset[str]:
        """Every member name a block of this split may hold."""
        names = {"json", self.ids, self.raw_ids, *self.rows, *self.jagged}
        if self.jagged:
            names.add("offsets.npy")
        if self.text:
            names.add(self.text)
        return frozenset(names)

    @property
    def required(self) -> frozenset[str]:
        """Member names every block of this split holds."""
        return self.members - self.optional


_I32, _I64, _BOOL = "<i4", "<i8", "|b1"
_EVAL_TIMES = frozenset({"ts.npy", "targets_ts.npy"})
# FRAME input (plays_csv): every interaction's playing time and duration, cut like the timestamps.
_PLAYS = {"play.npy": _I64, "duration.npy": _I64}
_TARGET_PLAYS = {"targets_play.npy": _I64, "targets_duration.npy": _I64}
_EVAL_OPTIONAL = _EVAL_TIMES | frozenset(_PLAYS) | frozenset(_TARGET_PLAYS)
LAYOUTS: dict[str, Layout] = {
    "train": Layout("train", "u", "user", "users.npy", "raw_users.npy",
                    jagged={"items.npy": _I32, "ts.npy": _I64, **_PLAYS},
                    optional=frozenset({"ts.npy", *_PLAYS}), min_length=1, length_to_n=2),
    "valid": Layout("valid", "u", "user", "users.npy", "raw_users.npy",
                    rows={"targets.npy": _I32, "targets_ts.npy": _I64, **_TARGET_PLAYS},
                    jagged={"history.npy": _I32, "ts.npy": _I64, **_PLAYS},
                    optional=_EVAL_OPTIONAL, min_length=1, length_to_n=2),
    "test": Layout("test", "u", "user", "users.npy", "raw_users.npy",
                   rows={"targets.npy": _I32, "targets_ts.npy": _I64, **_TARGET_PLAYS},
                   jagged={"history.npy": _I32, "ts.npy": _I64, **_PLAYS},
                   optional=_EVAL_OPTIONAL, min_length=2, length_to_n=1),
    "exposures": Layout("exposures", "u", "user", "users.npy", "raw_users.npy",
                        jagged={"items.npy": _I32, "ts.npy": _I64}, min_length=0, length_to_n=0),
    # interactions.npy (every kept interaction of the item) is optional: item tables from before it have none.
    "items": Layout("items", "i", "item", "items.npy", "raw_items.npy",
                    rows={"train_counts.npy": _I64, "interactions.npy": _I64, "has_title.npy": _BOOL},
                    optional=frozenset({"interactions.npy"}), text="titles.json"),
}

# Per-row member -> the block members it is built from (besides the ids, always read).
_ROW_SOURCES: dict[str, dict[str, frozenset[str]]] = {
    "train": {"items.npy": frozenset({"offsets.npy", "items.npy"}), "ts.npy": frozenset({"offsets.npy", "ts.npy"}),
              **{m: frozenset({"offsets.npy", m}) for m in _PLAYS},
              "json": frozenset({"offsets.npy", "raw_users.npy"})},
    "valid": {"history.npy": frozenset({"offsets.npy", "history.npy"}), "target.npy": frozenset({"targets.npy"}),
              "ts.npy": frozenset({"offsets.npy", "ts.npy"}), "target_ts.npy": frozenset({"targets_ts.npy"}),
              **{m: frozenset({"offsets.npy", m}) for m in _PLAYS},
              **{m.replace("targets_", "target_"): frozenset({m}) for m in _TARGET_PLAYS},
              "json": frozenset({"offsets.npy", "raw_users.npy"})},
    "items": {"json": frozenset({"raw_items.npy", "train_counts.npy", "interactions.npy", "has_title.npy"}),
              "txt": frozenset({"titles.json"})},
}
_ROW_SOURCES["test"] = _ROW_SOURCES["valid"]
_ROW_SOURCES["exposures"] = {m: v for m, v in _ROW_SOURCES["train"].items() if m not in _PLAYS}


def row_members(split: str) -> frozenset[str]:
    """The members of a per-row sample of ``split`` (e.g. ``{"items.npy", "ts.npy", "json"}`` for train)."""
    return frozenset(_ROW_SOURCES[split])


def needed_members(split: str, wanted: frozenset[str] | None) -> frozenset[str]:
    """Block members to decode so that the per-row members ``wanted`` (None: all) can be built.

    Args:
        split: A blocked split.
        wanted: Per-row member names, or None for every one.

    Returns:
        Block member names (the ids, the block json and, in user splits, the offsets included).

    Raises:
        ValueError: for a per-row member the split does not have.
    """
    sources = _ROW_SOURCES[split]
    layout = LAYOUTS[split]
    unknown = sorted(set(wanted or ()) - set(sources))
    if unknown:
        raise ValueError(f"split '{split}' has no per-row member {unknown} (it has {sorted(sources)})")
    names = {"json", layout.ids} | ({"offsets.npy"} if layout.jagged else set())
    for member in sources if wanted is None else wanted:
        names |= sources[member]
    return frozenset(names)


def block_key(index: int) -> str:
    """The tar sample key of block ``index`` (``b%010d``)."""
    return f"b{index:010d}"


def block_meta(layout: Layout, index: int, first: int, n: int) -> dict[str, int]:
    """The block's ``json`` member: ``{"block", "first_<noun>", "last_<noun>", "n"}``."""
    return {"block": index, f"first_{layout.noun}": first, f"last_{layout.noun}": first + n - 1, "n": n}


def block_sizes(rows: int, per_block: int) -> list[int]:
    """Rows of each block of a shard of ``rows`` rows: full blocks, then the remainder."""
    full, rest = divmod(rows, per_block)
    return [per_block] * full + ([rest] if rest else [])


def _array(value: Any, name: str, dtype: str, length: int | None) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.dtype(dtype) or value.ndim != 1 or \
            (length is not None and len(value) != length):
        got = f"{value.dtype} {list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        want = f"[{length}]" if length is not None else "1-D"
        raise BlockError(f"member '{name}' is {got}, expected {np.dtype(dtype)} {want}")
    return value


class Block:
    """One decoded, validated block: ``n`` consecutive rows of a split.

    Attributes:
        layout: The split's ``Layout``.
        key: The block's tar key (``b%010d``).
        first: Global index ``g`` (position in the split) of row 0.
        ids: Dense ids, int64 [n] (``first + 1 ..``).
        arrays: The other decoded members: name -> ndarray (``offsets.npy`` int64 [n+1], per-row
            arrays [n], jagged arrays [offsets[-1]]) or, for ``titles.json``, a list of n str.
    """

    __slots__ = ("layout", "key", "first", "ids", "arrays", "_lists")

    def __init__(self, layout: Layout, key: str, first: int, ids: np.ndarray, arrays: dict[str, Any]):
        self.layout, self.key, self.first, self.ids, self.arrays = layout, key, first, ids, arrays
        self._lists: dict[str, list] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def decode(cls, layout: Layout, key: str, members: Mapping[str, Any], present: Sequence[str], *,
               index: int, first: int, n: int) -> "Block":
        """Validate a block's decoded members against the layout and where the block must be.

        Args:
            layout: The split's layout.
            key: The tar key found.
            members: Decoded members (name -> ndarray / JSON value); members not asked for are absent.
            present: Names of every member in the tar (decoded or not).
            index: The block index this position must hold.
            first: Global index ``g`` of its first row (its first dense id is ``first + 1``).
            n: Rows it must hold.

        Returns:
            The ``Block``.

        Raises:
            BlockError: naming the member and the reason.
        """
        if key != block_key(index):
            raise BlockError(f"found where block {block_key(index)} belongs (missing, extra or misnumbered block)")
        names = set(present)
        if names - layout.members or layout.required - names:
            raise BlockError(f"members {sorted(names)}, expected {sorted(layout.required)}"
                             + (f" (optional {sorted(layout.optional)})" if layout.optional else ""))
        ids = _array(members.get(layout.ids), layout.ids, _I64, n)
        if n and (ids[0] != first + 1 or ids[-1] != first + n or np.any(ids[1:] - ids[:-1] != 1)):
            raise BlockError(f"{layout.ids} holds ids {ids[:3].tolist()}..{ids[-1:].tolist()}, expected the "
                             f"consecutive ids {first + 1}..{first + n}")
        meta = members.get("json")
        if meta is not None and meta != block_meta(layout, index, first + 1, n):
            raise BlockError(f"json {meta} differs from {block_meta(layout, index, first + 1, n)}")
        arrays: dict[str, Any] = {}
        offsets = members.get("offsets.npy")
        if offsets is not None:
            offsets = arrays["offsets.npy"] = _array(offsets, "offsets.npy", _I64, n + 1)
            if offsets[0] != 0 or np.any(offsets[1:] - offsets[:-1] < layout.min_length):
                raise BlockError(f"offsets.npy must start at 0 and grow by >= {layout.min_length} per row")
        for name, dtype in layout.jagged.items():
            if name in members:
                if offsets is None:
                    raise BlockError(f"{name} cannot be read without offsets.npy")
                arrays[name] = _array(members[name], name, dtype, int(offsets[-1]))
        for name, dtype in ((layout.raw_ids, _I64), *layout.rows.items()):
            if name in members:
                arrays[name] = _array(members[name], name, dtype, n)
        if layout.text and layout.text in members:
            titles = members[layout.text]
            if not isinstance(titles, list) or len(titles) != n or not all(isinstance(t, str) for t in titles):
                raise BlockError(f"{layout.text} must be a JSON list of {n} strings")
            arrays[layout.text] = titles
        return cls(layout, key, first, ids, arrays)

    def _list(self, name: str) -> list:
        """``arrays[name]`` (or the ids) as a Python list, converted once per block."""
        out = self._lists.get(name)
        if out is None:
            source = self.ids if name == "ids" else self.arrays[name]
            out = self._lists[name] = source if isinstance(source, list) else source.tolist()
        return out

    def samples(self, rows: Sequence[int], wanted: frozenset[str] | None) -> list[Sample]:
        """The per-row samples of block rows ``rows`` (0-based, any order), arrays as views.

        Args:
            rows: Row positions in the block.
            wanted: Per-row member names to build (None: every one the block allows).

        Returns:
            One ``Sample`` per row, in ``rows`` order, with the members of ``shards/README.md``'s
            per-row view (``items.npy``/``ts.npy``/``json``, ``history.npy``/``target.npy``/``json``
            (and ``ts.npy``/``target_ts.npy``, ``play.npy``/``target_play.npy``, ``duration.npy``/
            ``target_duration.npy`` where stored), ``json``/``txt``).
        """
        layout, a = self.layout, self.arrays
        ids = self._list("ids")
        prefix = layout.row_prefix
        keys = [f"{prefix}{ids[i]:010d}" for i in rows]
        names, columns = [], []
        if layout.jagged:
            off = self._list("offsets.npy")
            for name in layout.jagged:  # the per-row member has the block member's name
                if name in a and (wanted is None or name in wanted):
                    values = a[name]
                    names.append(name)
                    columns.append([values[off[i]:off[i + 1]] for i in rows])
            for block_name in layout.rows:  # targets*.npy -> target*.npy: one value per row
                row_name = block_name.replace("targets", "target", 1)
                if block_name in a and (wanted is None or row_name in wanted):
                    targets = a[block_name]
                    names.append(row_name)
                    columns.append([targets[i:i + 1] for i in rows])
            if wanted is None or "json" in wanted:
                raw, k = self._list(layout.raw_ids), layout.length_to_n
                names.append("json")
                columns.append([{"user": ids[i], "raw_user": raw[i], "n": off[i + 1] - off[i] + k} for i in rows])
        else:
            if wanted is None or "json" in wanted:
                raw, counts, has = (self._list(m) for m in (layout.raw_ids, "train_counts.npy", "has_title.npy"))
                names.append("json")
                rows_json = [{"item": ids[i], "raw_item": raw[i], "train_count": counts[i], "has_title": has[i]}
                             for i in rows]
                if "interactions.npy" in a:
                    inter = self._list("interactions.npy")
                    for row, i in zip(rows_json, rows):
                        row["interactions"] = inter[i]
                columns.append(rows_json)
            if wanted is None or "txt" in wanted:
                titles = a[layout.text]
                names.append("txt")
                columns.append([titles[i] for i in rows])
        if len(names) == 1:
            (n0,), (c0,) = names, columns
            return [Sample(k, {n0: v0}) for k, v0 in zip(keys, c0)]
        if len(names) == 2:
            n0, n1 = names
            return [Sample(k, {n0: v0, n1: v1}) for k, v0, v1 in zip(keys, *columns)]
        return [Sample(k, dict(zip(names, values))) for k, *values in zip(keys, *columns)]

    def slice(self, lo: int, hi: int) -> "Block":
        """Rows ``lo .. hi-1`` as a block of their own (views; ``offsets.npy`` rebased, a small copy).

        Args:
            lo: First row.
            hi: One past the last row.

        Returns:
            The ``Block`` of those rows (its ``first`` is ``self.first + lo``; ``key`` stays).
        """
        if lo == 0 and hi == len(self):
            return self
        layout, a = self.layout, self.arrays
        out: dict[str, Any] = {}
        offsets = a.get("offsets.npy")
        if offsets is not None:
            a_lo, a_hi = int(offsets[lo]), int(offsets[hi])
            out["offsets.npy"] = offsets[lo:hi + 1] - a_lo
        for name, value in a.items():
            if name in layout.jagged:
                out[name] = value[a_lo:a_hi]
            elif name != "offsets.npy":
                out[name] = value[lo:hi]
        return Block(layout, self.key, self.first + lo, self.ids[lo:hi], out)


def encode_titles(titles: Sequence[str]) -> bytes:
    """``titles.json``: a compact JSON list of the titles, UTF-8 (any text round-trips)."""
    return json.dumps(list(titles), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
