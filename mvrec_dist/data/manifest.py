"""The dataset manifest (``manifest.json``): schema constants and the reading side.

``shards/README.md`` specifies the format. Ingestion writes manifests (``mvrec_dist.data.ingest``);
everything that reads a dataset goes through ``load_manifest`` so that a missing, partial or
newer-schema dataset fails with one clear message naming the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SCHEMA_VERSION", "MANIFEST_NAME", "SPLITS", "BLOCK_SIZE_KEYS", "ShardInfo", "Manifest", "ManifestError",
           "load_manifest"]

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "valid", "test", "items", "content", "text", "exposures")
BLOCK_SIZE_KEYS = {"train": "users_per_block", "valid": "users_per_block", "test": "users_per_block",
                   "items": "items_per_block", "exposures": "users_per_block"}
"""The split entry key holding the rows per block of each blocked split (schema 2)."""


class ManifestError(ValueError):
    """A dataset directory has no usable manifest."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard of a split, as listed in the manifest."""

    path: str
    """Path relative to the dataset directory."""
    samples: int
    """Samples in the shard: users or items in the blocked splits (the reader's index unit)."""
    bytes: int
    """Size of the tar file."""
    sha256: str
    """Hex sha256 of the tar file."""
    blocks: int | None = None
    """Tar samples (blocks) in a shard of a blocked split; None for per-item splits (``content``)."""


@dataclass(frozen=True)
class Manifest:
    """A loaded, schema-checked manifest."""

    root: str
    """Dataset directory (local path or URI) the manifest was read from."""
    data: dict[str, Any]
    """The manifest JSON as written."""

    def shards(self, split: str) -> list[ShardInfo]:
        """Shards of ``split`` in manifest (ascending key) order; raises if the split is absent."""
        entry = self.data["splits"].get(split)
        if entry is None:
            raise ManifestError(f"{self.root}/{MANIFEST_NAME}: no split '{split}' "
                                f"(has {sorted(self.data['splits'])})")
        return [ShardInfo(path=s["path"], samples=int(s["samples"]), bytes=int(s["bytes"]),
                          sha256=s["sha256"], blocks=None if s.get("blocks") is None else int(s["blocks"]))
                for s in entry["shards"]]

    def block_size(self, split: str) -> int:
        """Rows (users or items) per block of a blocked split (``users_per_block``/``items_per_block``).

        Args:
            split: ``train``, ``valid``, ``test`` or ``items``.

        Returns:
            The block size (>= 1).

        Raises:
            ManifestError: when the split is absent or is not blocked.
        """
        self.shards(split)  # raises for an absent split
        key = BLOCK_SIZE_KEYS.get(split)
        value = self.data["splits"][split].get(key) if key else None
        if not isinstance(value, int) or value < 1:
            raise ManifestError(f"{self.root}/{MANIFEST_NAME}: split '{split}' has no block size "
                                f"({key or 'not a blocked split'})")
        return value

    def has_split(self, split: str) -> bool:
        """Whether the dataset has ``split`` (``content`` is optional)."""
        return split in self.data["splits"]

    @property
    def counts(self) -> dict[str, Any]:
        """The ``counts`` section."""
        return self.data["counts"]

    @property
    def num_items(self) -> int:
        """Number of items N (dense ids 1..N; 0 is padding)."""
        return int(self.data["counts"]["items"])

    @property
    def num_users(self) -> int:
        """Number of kept users U."""
        return int(self.data["counts"]["users"])

    @property
    def input_format(self) -> str | None:
        """The ingested input's format (``pairs_csv``, ``pairs_tsv``), None when the manifest does not say."""
        return self.data.get("config", {}).get("ingest", {}).get("format")

    @property
    def labels(self) -> dict[str, Any] | None:
        """The ``labels`` section (input with a per-interaction click label), None without labels."""
        return self.data.get("labels")

    @property
    def item_labels(self) -> dict[str, Any] | None:
        """The ``item_labels`` section (popularity label counts and the item split), None in datasets
        ingested before it existed (``mvrec_dist.data.item_split`` loads it)."""
        return self.data.get("item_labels")

    @property
    def timestamp_splits(self) -> frozenset[str]:
        """The user splits whose blocks hold timestamps (``timestamps.splits``; before that section
        existed, csv datasets stored them in ``train`` only)."""
        section = self.data.get("timestamps")
        if section is not None:
            return frozenset(section.get("splits", ()))
        return frozenset({"train"}) if self.input_format == "pairs_csv" else frozenset()

    @property
    def plays(self) -> dict[str, Any] | None:
        """The ``plays`` section (FRAME's ``plays_csv`` input: every interaction's playing time and duration
        in ``play.npy``/``duration.npy`` and ``targets_*`` of the user splits), None for other input."""
        return self.data.get("plays")

    def path(self, relative: str) -> str:
        """Join ``relative`` onto the dataset directory."""
        return f"{self.root.rstrip('/')}/{relative}"


def load_manifest(dataset_dir: str) -> Manifest:
    """Read and check ``<dataset_dir>/manifest.json``.

    Args:
        dataset_dir: Local directory or pyarrow/fsspec URI of an ingested dataset.

    Returns:
        The ``Manifest``.

    Raises:
        ManifestError: when the manifest is missing (an unfinished or absent ingestion), unreadable,
            of another schema version, or lacks a required section.
    """
    from mvrec_dist.data.fs import open_input_file

    location = f"{dataset_dir.rstrip('/')}/{MANIFEST_NAME}"
    try:
        with open_input_file(location) as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{location}: not found; run jobs/ingest_microlens.py to create the dataset "
                            "(a manifest is written last, so an interrupted ingestion has none)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{location}: not valid JSON ({exc})") from None
    if data.get("kind") != "mvrec_dist.dataset":
        raise ManifestError(f"{location}: not an mvrec_dist dataset manifest")
    version = data.get("schema_version")
    if isinstance(version, int) and version < SCHEMA_VERSION:
        raise ManifestError(f"{location}: schema_version {version} is an older shard format (this code reads "
                            f"{SCHEMA_VERSION}: blocked, columnar user splits and item table); re-ingest the "
                            "dataset with jobs/ingest_microlens.py and ingest.overwrite=true")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{location}: schema_version {version} is not supported "
                            f"(this code reads {SCHEMA_VERSION})")
    for key in ("counts", "splits", "maps", "stats"):
        if key not in data:
            raise ManifestError(f"{location}: missing section '{key}'")
    for split, key in BLOCK_SIZE_KEYS.items():
        entry = data["splits"].get(split)
        if entry is None:
            continue
        size = entry.get(key)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ManifestError(f"{location}: split '{split}' needs '{key}' (a positive integer), got {size!r}")
        for shard in entry.get("shards", []):
            blocks = -(-int(shard.get("samples", 0)) // size)
            if shard.get("blocks") != blocks:
                raise ManifestError(f"{location}: shard {shard.get('path')} lists {shard.get('blocks')} blocks; "
                                    f"{shard.get('samples')} samples at {size} per block make {blocks}")
    return Manifest(root=dataset_dir, data=data)
