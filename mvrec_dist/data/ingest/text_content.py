"""The title stage of ingestion: every item's title -> token ids in ``text`` shards of an existing dataset.

Runs on a published dataset (in the same job as the interactions, or later), like the video stage
(``content.run_content_ingest``), and publishes the same way: a fresh ``text/g<G>/`` generation, the
manifest swapped in one atomic step, the old generation deleted afterwards.

Titles are tokenised **once**, here, with the tokenizer of a pretrained text model that ships in a
package (``mvrec_dist.data.pretrained_text``), truncated and padded to ``text.max_tokens`` ids
(``[CLS] ... [SEP] 0 0 ...``). Each item is one ``tokens.npy`` (``int32 [T]``) + ``json`` sample
(``tokens``: real ids, ``truncated``) + ``txt`` (the source title), so a shard can be checked
against its titles without the tokenizer. The manifest's ``text`` section records the tokenizer
(name, package, version, ``tokenizer.json`` sha256) and ``max_tokens``; the text encoder refuses
ids written by another tokenizer or length.

Items without a usable title are never given placeholder ids (which would make every such item
the same "empty" text, a silent shared vector): an item the titles file does not list
(``missing``) or whose title is blank (``empty``, whitespace only) has no text content. The
manifest counts both and lists the items, and the item tower represents them as it does items
without video (``models.item_tower``: the ID embedding alone for ID+Text, a learned ``no_content``
vector for Text only). Counts reconcile: ``with_text + missing + empty = items``.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import ray

from mvrec_dist.config.ingest import TextIngestConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data.ingest.array_shards import build_index, render_array_shard
from mvrec_dist.data.ingest.content import (ContentResult, item_titles, load_items_map, map_shards, next_generation,
                                            publish_content, removed_on_failure)
from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.manifest import Manifest, load_manifest
from mvrec_dist.data.pretrained_text import load_tokenizer, tokenizer_identity

__all__ = ["TextShardResult", "TOKENS_MEMBER", "tokenize_titles", "write_text_shard", "run_text_ingest"]

TOKENS_MEMBER = "tokens.npy"
SECTION = "text"


@dataclass
class TextShardResult:
    """What one text shard task wrote."""

    shard: int
    entry: dict
    """The split's shard entry (path, samples, bytes, sha256)."""
    ids: list[int]
    """Dense ids with text, ascending."""
    offsets: list[int]
    """Data offset of each id's token array in the tar."""
    missing: list[int] = field(default_factory=list)
    """Dense ids the titles file does not list."""
    empty: list[int] = field(default_factory=list)
    """Dense ids whose title is blank."""
    truncated: int = 0
    """Titles longer than ``max_tokens`` ids (cut at the end, [SEP] kept)."""
    seconds: float = 0.0


def tokenize_titles(tokenizer, titles: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of ``titles`` with a tokenizer from ``load_tokenizer`` (truncating, padding to T).

    Returns:
        ``(ids int32 [K, T], real ids per title int32 [K], truncated bool [K])``.
    """
    if not titles:
        t = tokenizer.padding["length"]
        return np.zeros((0, t), np.int32), np.zeros(0, np.int32), np.zeros(0, bool)
    enc = tokenizer.encode_batch(titles)
    ids = np.asarray([e.ids for e in enc], dtype=np.int32)  # K,T
    real = np.asarray([sum(e.attention_mask) for e in enc], dtype=np.int32)
    truncated = np.asarray([len(e.overflowing) > 0 for e in enc], dtype=bool)
    return ids, real, truncated


def write_text_shard(*, root: str, text_dir: str, shard: int, first: int, raw_items: np.ndarray,
                     titles: list[str], has_title: np.ndarray, text: dict) -> TextShardResult:
    """Tokenise the titles of items ``first .. first + K - 1`` and write their text shard.

    Args:
        root: Dataset directory.
        text_dir: Generation directory relative to ``root`` (``text/g0001``).
        shard: Shard index.
        first: Dense id of the first item of the range.
        raw_items: Raw id of every item of the range, int64 [K].
        titles: Title of every item ('' where none).
        has_title: Whether the titles file listed each item, bool [K].
        text: ``TextIngestConfig`` as a dict.

    Returns:
        The ``TextShardResult``.
    """
    t0 = time.perf_counter()
    result = TextShardResult(shard=shard, entry={}, ids=[], offsets=[])
    keep = []
    for k, (title, has) in enumerate(zip(titles, np.asarray(has_title).tolist())):
        if not has:
            result.missing.append(first + k)
        elif not title.strip():
            result.empty.append(first + k)
        else:
            keep.append(k)
    tokenizer = load_tokenizer(text["tokenizer"], text["max_tokens"])
    ids, real, truncated = tokenize_titles(tokenizer, [titles[k] for k in keep])
    result.truncated = int(truncated.sum())
    dense = [first + k for k in keep]
    metas = [{"item": d, "raw_item": int(raw_items[k]), "tokens": int(r), "truncated": bool(t)}
             for d, k, r, t in zip(dense, keep, real.tolist(), truncated.tolist())]
    data, offsets = render_array_shard(dense, TOKENS_MEMBER, list(ids), metas, [titles[k] for k in keep])
    path = f"{text_dir}/text-{shard:06d}.tar"
    result.entry = {"path": path, "samples": len(dense), **write_bytes(f"{root.rstrip('/')}/{path}", data)}
    result.ids, result.offsets = dense, offsets.tolist()
    result.seconds = time.perf_counter() - t0
    return result


def _shard_task(batch: dict, *, root: str, text_dir: str, shard_size: int, maps: list, text: dict) -> dict:
    """Ray Data UDF: one row (a shard index) in, that shard's ``TextShardResult`` as JSON out."""
    (items_map,) = ray.get(maps)
    manifest = load_manifest(root)
    out = []
    for j in np.asarray(batch["shard"]).tolist():
        first, last = j * shard_size + 1, min((j + 1) * shard_size, len(items_map) - 1)
        titles, has_title = item_titles(manifest, first, last, with_flags=True)
        result = write_text_shard(root=root, text_dir=text_dir, shard=j, first=first,
                                  raw_items=items_map[first:last + 1], titles=titles, has_title=has_title, text=text)
        out.append(json.dumps(asdict(result)))
    return {"result": np.asarray(out, dtype=object)}


def _section(text: TextIngestConfig, results: list[TextShardResult], text_dir: str, manifest: Manifest,
             seconds: float, generation: int) -> dict:
    missing = sorted(d for r in results for d in r.missing)
    empty = sorted(d for r in results for d in r.empty)
    counts = {"items": manifest.num_items, "with_text": sum(len(r.ids) for r in results), "missing_title": len(missing),
              "empty_title": len(empty), "truncated": sum(r.truncated for r in results)}
    return {
        "generation": generation, "dir": text_dir, "kind": "tokens", "member": TOKENS_MEMBER,
        "shape": [text.max_tokens], "dtype": "int32", "index": f"{text_dir}/index.npy",
        "tokenizer": {**tokenizer_identity(text.tokenizer), "max_tokens": text.max_tokens, "pad_id": 0},
        "fallback": "items without a title have no text content: the item tower represents them without it "
                    "(ID alone, or the learned no_content vector when the tower has no IDs)",
        "counts": counts, "missing_title_items": missing, "empty_title_items": empty,
        "seconds": round(seconds, 3),
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _reconcile(section: dict, results: list[TextShardResult], num_shards: int, index: np.ndarray,
               manifest: Manifest) -> None:
    c = section["counts"]
    without = manifest.counts.get("items_without_title")
    checks = {
        "with_text + missing_title + empty_title = items": c["with_text"] + c["missing_title"] + c["empty_title"]
        == c["items"],
        "missing_title = the dataset's items_without_title": without is None or c["missing_title"] == without,
        "shard samples = with_text": sum(r.entry["samples"] for r in results) == c["with_text"],
        f"shards 0..{num_shards - 1} all written": sorted(r.shard for r in results) == list(range(num_shards)),
        "index rows with text = with_text": int((index[:, 0] >= 0).sum()) == c["with_text"],
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise IngestError("text counts do not reconcile, manifest not updated: " + "; ".join(failed)
                          + f" (counts: {json.dumps(c)})")


def run_text_ingest(text: TextIngestConfig, dataset_dir: str, *, progress: bool = True) -> ContentResult:
    """Tokenise every item's title into ``text`` shards of ``dataset_dir`` (Ray must be initialised).

    Args:
        text: The text settings (``text.enabled`` is not consulted: calling this is the intent).
        dataset_dir: A published dataset (local path or URI).
        progress: Ray Data progress bars and one line per finished shard.

    Returns:
        The ``ContentResult`` with the new manifest.

    Raises:
        IngestError: on counts that do not reconcile, or when another run changed the text meanwhile.
        PretrainedTextError: when the tokenizer's package is not installed.
    """
    t0 = time.perf_counter()
    tokenizer_identity(text.tokenizer)  # fails here, before any task, when the package is absent
    manifest = load_manifest(dataset_dir)
    generation, text_dir = next_generation(manifest, SECTION)
    items_map = load_items_map(manifest)
    n, size = manifest.num_items, text.shard_max_samples
    num_shards = -(-n // size)
    text_dict = config_to_dict(text)
    results: list[TextShardResult] = []
    with removed_on_failure(manifest.path(text_dir)):
        for row in map_shards(_shard_task, num_shards, progress=progress,
                              fn_kwargs={"root": dataset_dir, "text_dir": text_dir, "shard_size": size,
                                         "maps": [ray.put(items_map)], "text": text_dict}):
            r = TextShardResult(**row)
            results.append(r)
            if progress:
                print(f"text shard {r.shard + 1}/{num_shards} ({len(results)} done): {len(r.ids)} titles, "
                      f"{len(r.missing)} missing, {len(r.empty)} empty, {r.truncated} truncated in "
                      f"{r.seconds:.1f}s", flush=True)
        results.sort(key=lambda r: r.shard)
        index = build_index(n, [(r.shard, r.ids, r.offsets) for r in results])
        section = _section(text, results, text_dir, manifest, time.perf_counter() - t0, generation)
        _reconcile(section, results, num_shards, index, manifest)
    new = publish_content(manifest, SECTION, section, [r.entry for r in results], index, text=text_dict)
    return ContentResult(manifest=new, seconds=time.perf_counter() - t0)
