"""The dataset manifest (``manifest.json``): schema constants and the reading side.

``shards/README.md`` specifies the format. Ingestion writes manifests (``mvrec_dist.data.ingest``);
everything that reads a dataset goes through ``load_manifest`` so that a missing, partial or
newer-schema dataset fails with one clear message naming the path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SCHEMA_VERSION", "MANIFEST_NAME", "SPLITS", "ShardInfo", "Manifest", "ManifestError",
           "load_manifest"]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "valid", "test", "items", "content")


class ManifestError(ValueError):
    """A dataset directory has no usable manifest."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard of a split, as listed in the manifest."""

    path: str
    """Path relative to the dataset directory."""
    samples: int
    """Samples in the shard."""
    bytes: int
    """Size of the tar file."""
    sha256: str
    """Hex sha256 of the tar file."""


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
                          sha256=s["sha256"]) for s in entry["shards"]]

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
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{location}: schema_version {data.get('schema_version')} is not supported "
                            f"(this code reads {SCHEMA_VERSION})")
    for key in ("counts", "splits", "maps", "stats"):
        if key not in data:
            raise ManifestError(f"{location}: missing section '{key}'")
    return Manifest(root=dataset_dir, data=data)
