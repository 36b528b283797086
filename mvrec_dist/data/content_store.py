"""Random access to an item's content by dense id: video frames, token ids or precomputed features.

Design: the content shards are the store. Every content (or feature) shard is an uncompressed
tar whose per-item arrays start at known, 64-byte aligned offsets, recorded at ingestion time in
``index.npy`` (``mvrec_dist.data.ingest.array_shards``). Reading item ``i`` is one ``mmap`` slice
of its shard (local disk or a shared filesystem: the page cache is the node's cache, shared by
every rank and loader worker of the node) or one range read (object stores). So there is no
second copy of the data to build per node (0.75 MB/item for 5x224x224 frames would be ~860 GB for
the full MicroLens), nothing to rebuild when content changes, and memory is the index (16
bytes/item) plus the pages actually touched.

One store class serves every content kind (``ContentKind``): the kind, dtype and per-item shape
come from the manifest (a dataset's ``content`` section, whose ``kind`` defaults to ``'frames'``
for manifests written before kinds existed; a feature store always holds ``'features'``), and
``CONTENT_KIND_RULES`` says which arrays each kind may hold and how messages name it. Adding a
kind is one entry there plus the ``ContentKind`` literal (``mvrec_dist.config.model``).

A ``ContentStore`` holds no open file when pickled, so the loader's worker processes each open
their own (lazily, at most ``max_open`` shards at once).
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mvrec_dist.config.model import CONTENT_KINDS, ContentKind
from mvrec_dist.data import fs as dfs
from mvrec_dist.data.manifest import Manifest

__all__ = ["ContentStore", "ContentStoreError", "ContentSpec", "ContentKindRules", "CONTENT_KIND_RULES",
           "CONTENT_SECTIONS", "content_section", "content_spec", "FEATURES_KIND", "FEATURES_MANIFEST",
           "load_features_manifest"]

FEATURES_KIND = "mvrec_dist.trunk_features"
"""The ``kind`` of a feature store's manifest (the file's type; its content kind is ``'features'``)."""
FEATURES_MANIFEST = "manifest.json"


class ContentStoreError(ValueError):
    """Content cannot be served as asked (absent split, stale index, an item without content)."""


@dataclass(frozen=True)
class ContentKindRules:
    """What one content kind's arrays may be, and how messages name it."""

    noun: str
    """Names the content in messages ("needs video content")."""
    ingest: str
    """How a dataset gets this content (the command a message suggests)."""
    accepts: Callable[[tuple[int, ...], np.dtype], bool]
    """Whether an item array of this shape and dtype is of this kind."""
    layout: str
    """The accepted arrays, for messages."""
    describe: Callable[[tuple[int, ...]], str]
    """One item's shape in words ("5 frames of 224x224")."""


CONTENT_KIND_RULES: dict[str, ContentKindRules] = {
    "frames": ContentKindRules(
        noun="video", ingest="jobs/ingest_microlens.py with video.enabled=true video.videos=<dir>",
        accepts=lambda shape, dtype: dtype == np.uint8 and len(shape) == 4 and shape[3] == 3,
        layout="uint8 [F, S, S, 3]", describe=lambda shape: f"{shape[0]} frames of {shape[1]}x{shape[2]}"),
    "tokens": ContentKindRules(
        noun="title token-id", ingest="jobs/ingest_microlens.py with text.enabled=true (titles tokenised)",
        accepts=lambda shape, dtype: np.issubdtype(dtype, np.integer) and len(shape) == 1,
        layout="int [T] (padded)", describe=lambda shape: f"{shape[0]} token ids"),
    "features": ContentKindRules(
        noun="feature", ingest="an ingestion that writes precomputed features (none does yet)",
        accepts=lambda shape, dtype: np.issubdtype(dtype, np.floating),
        layout="float [...]", describe=lambda shape: f"features of shape {list(shape)}"),
}


CONTENT_SECTIONS: dict[str, str] = {"frames": "content", "tokens": "text"}
"""The manifest section (and split) holding a dataset's content of each kind. A dataset holds at most
one store per kind, so video frames and title tokens live side by side (MMRA reads both); the
frames keep the name ``content`` they had before kinds existed. ``features`` are never in a
dataset: a feature store is a directory of its own (``ContentStore.from_features``)."""


def content_section(manifest: Manifest, kind: str) -> dict | None:
    """The manifest section of the dataset's ``kind`` content, or None when the dataset has none.

    Raises:
        ContentStoreError: for a kind a dataset cannot hold.
    """
    name = CONTENT_SECTIONS.get(kind)
    if name is None:
        raise ContentStoreError(f"{manifest.root}: a dataset holds no {kind!r} content (dataset kinds: "
                                f"{', '.join(CONTENT_SECTIONS)}; features live in a feature store)")
    section = manifest.data.get(name)
    if section is None or not manifest.has_split(name):
        return None
    # Manifests written before kinds existed have no ``kind`` in their (frames) ``content`` section.
    return section if section.get("kind", "frames") == kind else None


@dataclass(frozen=True)
class ContentSpec:
    """What a store holds per item: its kind, shape and dtype."""

    kind: ContentKind
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        """The item shape in words (``CONTENT_KIND_RULES[kind].describe``)."""
        return CONTENT_KIND_RULES[self.kind].describe(self.shape)


def _checked_spec(kind: str, shape: Any, dtype: str, name: str) -> ContentSpec:
    rules = CONTENT_KIND_RULES.get(kind)
    if rules is None:
        raise ContentStoreError(f"{name}: unknown content kind {kind!r} (known: {', '.join(CONTENT_KINDS)})")
    spec = ContentSpec(kind, tuple(int(d) for d in shape), str(np.dtype(dtype)))
    if not rules.accepts(spec.shape, np.dtype(spec.dtype)):
        raise ContentStoreError(f"{name}: {kind} content must be {rules.layout}, got {spec.dtype} {list(spec.shape)}")
    return spec


def content_spec(manifest: Manifest, kind: str = "frames") -> ContentSpec:
    """What a dataset's ``kind`` content holds per item, from its manifest alone (nothing else is read).

    Args:
        manifest: The dataset's manifest.
        kind: The content kind (``CONTENT_SECTIONS``).

    Returns:
        The ``ContentSpec``.

    Raises:
        ContentStoreError: when the dataset has no such content, or its arrays do not fit its kind.
    """
    section = content_section(manifest, kind)
    if section is None:
        rules = CONTENT_KIND_RULES[kind]
        raise ContentStoreError(f"{manifest.root}: the dataset has no {rules.noun} content; ingest it first "
                                f"({rules.ingest})")
    return _checked_spec(kind, section["shape"], section["dtype"], f"{manifest.root} {CONTENT_SECTIONS[kind]}")


def _read(uri: str) -> bytes:
    with dfs.open_input_file(uri) as f:
        return f.read()


def load_features_manifest(features_dir: str) -> dict:
    """Read a feature store's ``manifest.json`` (written by ``mvrec_dist.features``).

    Args:
        features_dir: The store directory (local or URI).

    Returns:
        The manifest dict.

    Raises:
        ContentStoreError: when it is missing or is not a feature-store manifest.
    """
    uri = f"{features_dir.rstrip('/')}/{FEATURES_MANIFEST}"
    try:
        data = json.loads(_read(uri).decode("utf-8"))
    except FileNotFoundError:
        raise ContentStoreError(f"{uri}: not found; compute the trunk features first with "
                                "jobs/cache_trunk_features.py (a manifest is written last)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContentStoreError(f"{uri}: not valid JSON ({exc})") from None
    if data.get("kind") != FEATURES_KIND:
        raise ContentStoreError(f"{uri}: not a trunk-feature store (kind {data.get('kind')!r})")
    return data


@dataclass(frozen=True)
class _Layout:
    root: str
    shards: tuple[str, ...]
    shard_bytes: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: str


class ContentStore:
    """Fixed-shape arrays of items, read by dense id.

    Args:
        root: Directory the shard paths are relative to (local path or URI).
        shards: Relative shard paths, in shard-index order.
        shard_bytes: Size of each shard (checked when a shard is opened).
        index: ``int64 [N+1, 2]`` ``(shard, data offset)`` per dense id, ``-1`` without content.
        kind: What the arrays are (``ContentKind``): ``'frames'``, ``'tokens'`` or ``'features'``.
        shape: Shape of one item's array (frames ``[F, S, S, 3]``; tokens ``[T]``; features e.g. ``[C, T, H, W]``).
        dtype: Its dtype (``uint8`` frames, an int dtype for tokens, ``float16``/``float32`` features).
        name: What the store holds, for messages.
        max_open: Shards kept open (mmapped) at once per process.
        resident_bytes: A store whose arrays total at most this many bytes is read once, on the first
            ``gather``, into one in-memory array per process, and served from it by indexing: a
            full-softmax step on cached text features gathers every item each step (19,220 x 1.5 KB on
            MicroLens-50K: 0.11 s per step item by item, ~10 ms indexed). Larger stores (video
            frames, trunk features at full scale) are always read item by item. 0 turns it off.
    """

    def __init__(self, *, root: str, shards: list[str], shard_bytes: list[int], index: np.ndarray, kind: ContentKind,
                 shape: tuple[int, ...], dtype: str, name: str, max_open: int = 128, resident_bytes: int = 256 << 20):
        self.spec = _checked_spec(kind, shape, dtype, name)
        index = np.asarray(index)
        if index.ndim != 2 or index.shape[1] != 2 or index.dtype != np.int64:
            raise ContentStoreError(f"{name}: index must be int64 [N+1, 2], got {index.dtype} {index.shape}")
        if index.shape[0] < 1 or index[0, 0] != -1:
            raise ContentStoreError(f"{name}: index row 0 (padding) must be empty")
        used = index[:, 0]
        if used.max(initial=-1) >= len(shards):
            raise ContentStoreError(f"{name}: index names shard {int(used.max())} of {len(shards)}")
        self.layout = _Layout(root.rstrip("/"), tuple(shards), tuple(int(b) for b in shard_bytes),
                              self.spec.shape, self.spec.dtype)
        self.index = index
        self.name = name
        self.max_open = max_open
        self.item_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ends = index[index[:, 0] >= 0]
        if len(ends) and (ends[:, 1] < 0).any():
            raise ContentStoreError(f"{name}: index has negative offsets")
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()
        self._local = dfs.is_local(self.layout.root)
        self.resident_bytes = resident_bytes
        self._resident: np.ndarray | None = None
        self._total_bytes = int((index[:, 0] >= 0).sum()) * self.item_bytes

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, manifest: Manifest, kind: str = "frames", **kwargs: Any) -> "ContentStore":
        """The dataset's content of ``kind`` (``content_spec``): video frames or title token ids.

        Args:
            manifest: The dataset's manifest.
            kind: ``'frames'`` (the ``content`` split) or ``'tokens'`` (the ``text`` split).
            **kwargs: ``max_open``.

        Returns:
            A store of that split's arrays (``uint8 [F, S, S, 3]`` frames, ``int32 [T]`` token ids).

        Raises:
            ContentStoreError: when the dataset has no such content or its index does not verify.
        """
        spec = content_spec(manifest, kind)
        name = CONTENT_SECTIONS[kind]
        section = manifest.data[name]
        index = _load_index(manifest.root, section["index"], manifest.data["files"].get(section["index"], {}))
        _check_rows(index, manifest.num_items, manifest.root)
        shards = manifest.shards(name)
        return cls(root=manifest.root, shards=[s.path for s in shards], shard_bytes=[s.bytes for s in shards],
                   index=index, kind=spec.kind, shape=spec.shape, dtype=spec.dtype,
                   name=f"{manifest.root} {name}", **kwargs)

    @classmethod
    def from_features(cls, features_dir: str, **kwargs: Any) -> "ContentStore":
        """A feature store (``jobs/cache_trunk_features.py``): the cached output of an encoder's frozen part.

        Args:
            features_dir: The store directory.
            **kwargs: ``max_open``.

        Returns:
            A store of kind ``'features'``; ``store.manifest`` is the store's manifest (with its identity).
        """
        m = load_features_manifest(features_dir)
        index = _load_index(features_dir, m["index"], m["files"].get(m["index"], {}))
        _check_rows(index, int(m["counts"]["items"]), features_dir)
        shards = m["splits"]["features"]["shards"]
        store = cls(root=features_dir, shards=[s["path"] for s in shards], shard_bytes=[s["bytes"] for s in shards],
                    index=index, kind="features", shape=tuple(m["shape"]), dtype=m["dtype"],
                    name=f"{features_dir} trunk features", **kwargs)
        store.manifest = m
        return store

    # ------------------------------------------------------------------ reading
    @property
    def kind(self) -> ContentKind:
        """What the arrays are (``'frames'``, ``'tokens'``, ``'features'``)."""
        return self.spec.kind

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item's array."""
        return self.layout.shape

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the arrays."""
        return np.dtype(self.layout.dtype)

    @property
    def num_items(self) -> int:
        """N (ids 1..N)."""
        return self.index.shape[0] - 1

    @property
    def items_with_content(self) -> int:
        """Items that have an array."""
        return int((self.index[:, 0] >= 0).sum())

    def has(self, ids: np.ndarray) -> np.ndarray:
        """``bool [K]``: which of ``ids`` (dense, 0..N) have content."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > self.num_items):
            raise ContentStoreError(f"{self.name}: item ids outside 0..{self.num_items}")
        return self.index[ids, 0] >= 0

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """The arrays of ``ids``, in order.

        Args:
            ids: Dense ids, each with content (``has``), repeats allowed, [K].

        Returns:
            ``[K, *shape]`` of the store's dtype (a fresh array, not a view of the shards).

        Raises:
            ContentStoreError: naming the first id that has no content.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        present = self.has(ids)
        if not present.all():
            bad = int(ids[~present][0])
            raise ContentStoreError(f"{self.name}: item {bad} has no content (ID-only); the caller must "
                                    "mask it out with has()")
        if self._resident is None and 0 < self._total_bytes <= self.resident_bytes:
            every = np.nonzero(self.index[:, 0] >= 0)[0]
            resident = np.zeros((self.num_items + 1, *self.shape), dtype=self.dtype)
            resident[every] = self._read(every)
            self._resident = resident
        if self._resident is not None:
            return self._resident[ids]  # fancy indexing: a fresh array
        return self._read(ids)

    def _read(self, ids: np.ndarray) -> np.ndarray:
        """The arrays of ``ids`` (each with content) read from the shards, item by item."""
        out = np.empty((len(ids), *self.shape), dtype=self.dtype)
        if len(ids) == 0:
            return out
        flat = out.reshape(len(ids), -1).view(np.uint8)
        shard_of, offset = self.index[ids, 0], self.index[ids, 1]
        for s in np.unique(shard_of).tolist():
            rows = np.nonzero(shard_of == s)[0]
            handle = self._handle(s)
            for r in rows.tolist():
                off = int(offset[r])
                if self._local:
                    flat[r] = np.frombuffer(handle, dtype=np.uint8, count=self.item_bytes, offset=off)
                else:
                    flat[r] = np.frombuffer(handle.read_at(self.item_bytes, off), dtype=np.uint8)
        return out

    def _handle(self, s: int):
        if os.getpid() != self._pid:  # a forked loader worker: never share the parent's handles
            self._open = OrderedDict()
            self._pid = os.getpid()
        h = self._open.get(s)
        if h is not None:
            self._open.move_to_end(s)
            return h
        uri = f"{self.layout.root}/{self.layout.shards[s]}"
        expected = self.layout.shard_bytes[s]
        if self._local:
            path = dfs.resolve(uri)[1]
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size != expected:
                        raise ContentStoreError(f"{uri}: {size} bytes, the manifest says {expected} "
                                                "(rewritten or truncated; re-run the ingestion)")
                    h = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                raise ContentStoreError(f"{uri}: content shard listed in the manifest is missing") from None
        else:
            h = dfs.open_input_file(uri)
            if h.size() != expected:
                raise ContentStoreError(f"{uri}: {h.size()} bytes, the manifest says {expected}")
        self._open[s] = h
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return h

    def close(self) -> None:
        """Close every open shard of this process."""
        for h in self._open.values():
            h.close()
        self._open = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        state["_resident"] = None  # each process reads its own copy when it first gathers
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()


def _load_index(root: str, rel: str, expected: dict) -> np.ndarray:
    uri = f"{root.rstrip('/')}/{rel}"
    try:
        data = _read(uri)
    except FileNotFoundError:
        raise ContentStoreError(f"{uri}: content index listed in the manifest is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.get("sha256"):
        raise ContentStoreError(f"{uri}: sha256 {digest[:16]}... differs from the manifest's "
                                f"{str(expected.get('sha256'))[:16]}... (stale or rewritten index)")
    return np.load(io.BytesIO(data), allow_pickle=False)


def _check_rows(index: np.ndarray, num_items: int, root: str) -> None:
    if index.shape[0] != num_items + 1:
        raise ContentStoreError(f"{root}: content index has {index.shape[0]} rows for {num_items} items "
                                f"(expected {num_items + 1})")
