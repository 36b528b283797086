"""The video stage of ingestion: every item's video -> ``content`` shards of an existing dataset.

Runs on a dataset that ``run_ingest`` published (in the same job, or long before: content can be
added to e.g. a MicroLens-50K dataset ingested earlier). Stages:

1. one Ray Data task per content shard (``video_items.write_content_shard``): shard ``j`` covers
   dense items ``j*S+1 .. (j+1)*S`` (``S = video.shard_max_samples``), decodes their videos with
   seeks, reads their titles from the items split, and writes ``content/g<G>/content-<j>.tar``
   with the deterministic tar writer; results stream back as shards finish (progress lines);
2. the index (``array_shards.build_index``) and the manifest's ``content`` section, reconciled
   (``with_content + id_only = items``, ``decoded + synthetic = with_content``, shard samples);
3. publish: ``manifest.json`` is replaced in one atomic step (``manifest_writer.replace_manifest``).

Why generations: the new shards go to a fresh ``content/g<G+1>/`` that the current manifest does
not reference, so until the manifest is swapped the dataset (and anything reading it) sees the
old content intact, and after the swap the new content is complete; the old generation is
deleted afterwards. An interrupted run leaves only an unreferenced directory, which the next run
replaces. The swap re-reads the manifest first and refuses if another run changed the content
meanwhile. The interaction splits, maps and their checksums are untouched, so
``python -m mvrec_dist.data.verify`` keeps verifying them, and verifies the content split too.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import ray
from ray.data import DataContext

from mvrec_dist.config.ingest import VideoIngestConfig
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.data.ingest.array_shards import build_index, npy_bytes
from mvrec_dist.data.ingest.errors import IngestError, find_ingest_error
from mvrec_dist.data.ingest.manifest_writer import remove_tree, replace_manifest
from mvrec_dist.data.ingest.tar_writer import write_bytes
from mvrec_dist.data.ingest.video_items import FRAMES_MEMBER, ShardResult, write_content_shard
from mvrec_dist.data.manifest import Manifest, load_manifest
from mvrec_dist.data.plan import Chunk
from mvrec_dist.data.reader import ShardReader

__all__ = ["ContentResult", "run_content_ingest", "item_titles", "next_generation", "publish_content",
           "load_items_map", "map_shards", "removed_on_failure"]


@dataclass
class ContentResult:
    """What the video stage produced."""

    manifest: dict
    """The published manifest (with its ``content`` section)."""
    seconds: float


def item_titles(manifest: Manifest, first: int, last: int, *, with_flags: bool = False):
    """Titles of dense items ``first..last`` from the items split (index ``g = dense - 1``), read as
    block slices (``ShardReader.iter_blocks``: the blocks' ``titles.json`` lists, no per-item samples).

    Args:
        manifest: The dataset's manifest.
        first: First dense id.
        last: Last dense id (inclusive).
        with_flags: Also return whether the titles file listed each item (``has_title``).

    Returns:
        One title per item ('' where the titles file had none); with ``with_flags``,
        ``(titles, has_title bool [K])``.
    """
    reader = ShardReader(manifest.root, "items", members={"txt", "json"} if with_flags else {"txt"},
                         manifest=manifest)
    starts = reader.starts
    chunks, g = [], first - 1
    while g < last:
        s = int(np.searchsorted(starts, g, side="right")) - 1
        stop = min(last, starts[s + 1])
        chunks.append(Chunk(g, stop, None, 0, stop - g))
        g = stop
    titles, flags = [], []
    for block in reader.iter_blocks(chunks):
        titles += block.arrays["titles.json"]
        if with_flags:
            flags.append(np.asarray(block.arrays["has_title.npy"], dtype=bool))
    if not with_flags:
        return titles
    return titles, (np.concatenate(flags) if flags else np.zeros(0, dtype=bool))


def load_items_map(manifest: Manifest) -> np.ndarray:
    """``maps/items.npy``: the raw id of every dense id 0..N (checked against the manifest's N)."""
    from mvrec_dist.data.fs import open_input_file

    with open_input_file(manifest.path(manifest.data["maps"]["items"])) as f:
        items = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if items.shape != (manifest.num_items + 1,):
        raise IngestError(f"{manifest.root}: maps/items.npy has shape {items.shape}, expected "
                          f"({manifest.num_items + 1},)")
    return items


def next_generation(manifest: Manifest, name: str) -> tuple[int, str]:
    """The generation number and directory the next write of content section ``name`` goes to.

    The directory is emptied first: one left by an interrupted run is never referenced.
    """
    previous = manifest.data.get(name)
    generation = (int(previous["generation"]) + 1) if previous else 1
    content_dir = f"{name}/g{generation:04d}"
    remove_tree(manifest.path(content_dir))
    return generation, content_dir


def map_shards(task: Callable[..., dict], num_shards: int, *, fn_kwargs: dict, progress: bool) -> Iterator[dict]:
    """Run a content stage's ``task`` once per shard as a Ray Data job; yield each shard's result as it finishes.

    Args:
        task: A ``map_batches`` UDF taking ``{"shard": [j]}`` and returning ``{"result": [json]}``.
        num_shards: Shards 0..num_shards-1.
        fn_kwargs: The task's keyword arguments.
        progress: Ray Data progress bars.

    Yields:
        Each shard's decoded JSON result, in completion order.
    """
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    # Raise an IngestError from a task as itself, not as Ray Data's UserCodeException (whose pickled
    # form loses the original as its cause), so the job can name the file.
    ctx.raise_original_map_exception = True
    ds = ray.data.from_items([{"shard": j} for j in range(num_shards)], override_num_blocks=max(num_shards, 1))
    out = ds.map_batches(task, batch_size=1, batch_format="numpy", num_cpus=1, fn_kwargs=fn_kwargs)
    for row in out.iter_rows():
        yield json.loads(row["result"])


@contextlib.contextmanager
def removed_on_failure(path: str) -> Iterator[None]:
    """Remove ``path`` (an unpublished generation) if the block fails; an ``IngestError`` raised in a
    Ray task reaches the caller as itself (with its file and line), anything else unchanged."""
    try:
        yield
    except BaseException as exc:
        remove_tree(path)
        original = find_ingest_error(exc)
        if original is not None and original is not exc:
            raise IngestError(str(original)) from None
        raise


def publish_content(manifest: Manifest, name: str, section: dict, entries: list[dict], index: np.ndarray,
                    **config: dict) -> dict:
    """Swap a new generation of content section ``name`` (and its split) into the dataset's manifest.

    Args:
        manifest: The manifest the new generation was built from.
        name: ``content`` (frames) or ``text`` (title tokens): section and split name.
        section: The new section (``generation``, ``dir``, ``index``, ``counts``, ...), reconciled.
        entries: The split's shard entries, in shard order.
        index: The store's ``index.npy`` array (written here, its checksum into ``files``).
        **config: Config sections to record under the manifest's ``config`` (``video=...``).

    Returns:
        The published manifest.

    Raises:
        IngestError: when another run changed this section meanwhile (nothing is published).
    """
    previous = manifest.data.get(name)
    files = {k: v for k, v in manifest.data["files"].items() if not (previous and k.startswith(previous["dir"] + "/"))}
    files[section["index"]] = write_bytes(manifest.path(section["index"]), npy_bytes(index))
    new = dict(manifest.data)
    new["files"] = files
    new["splits"] = dict(manifest.data["splits"], **{name: {"samples": int((index[:, 0] >= 0).sum()),
                                                            "shards": entries}})
    new[name] = section
    new["config"] = dict(manifest.data["config"], **config)
    old_generation = previous["generation"] if previous else None
    replace_manifest(manifest.root, new, expect=lambda cur: (cur.get(name) or {}).get("generation") == old_generation,
                     what=f"{name} generation")
    if previous:
        remove_tree(manifest.path(previous["dir"]))
    return new


def _shard_task(batch: dict, *, root: str, content_dir: str, shard_size: int, maps: list, video: dict) -> dict:
    """Ray Data UDF: one row (a shard index) in, that shard's ``ShardResult`` as JSON out."""
    (items_map,) = ray.get(maps)
    out = []
    manifest = load_manifest(root)
    for j in np.asarray(batch["shard"]).tolist():
        first, last = j * shard_size + 1, min((j + 1) * shard_size, len(items_map) - 1)
        result = write_content_shard(root=root, content_dir=content_dir, shard=j, first=first,
                                     raw_items=items_map[first:last + 1], titles=item_titles(manifest, first, last),
                                     video=video)
        out.append(json.dumps(asdict(result)))
    return {"result": np.asarray(out, dtype=object)}


def _section(video: VideoIngestConfig, results: list[ShardResult], content_dir: str, num_items: int,
             seconds: float, generation: int) -> dict:
    id_only = sorted((e for r in results for e in r.id_only), key=lambda e: e["item"])
    with_content = sum(len(r.ids) for r in results)
    by_kind = {k: sum(1 for e in id_only if e["kind"] == k) for k in ("missing", "empty", "unreadable")}
    counts = {"items": num_items, "with_content": with_content, "decoded": sum(r.decoded for r in results),
              "synthetic": sum(r.synthetic for r in results), "id_only": len(id_only), "id_only_by_kind": by_kind}
    return {
        "generation": generation,
        "dir": content_dir,
        "kind": "frames",  # ContentKind; older manifests have none and mean frames (content_store.content_spec)
        "member": FRAMES_MEMBER,
        "shape": [video.frames_per_item, video.size, video.size, 3],
        "dtype": "uint8",
        "index": f"{content_dir}/index.npy",
        "videos": video.videos,
        # How the frames were taken: FRAME reads 'clips' content as clips x frames_per_clip consecutive frames.
        "sampling": ({"mode": "clips", "clips": video.clips, "frames_per_clip": video.frames_per_clip}
                     if video.mode == "clips" else {"mode": "uniform", "frames": video.frames}),
        "counts": counts,
        "id_only_items": id_only,
        "seconds": round(seconds, 3),
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _reconcile(section: dict, results: list[ShardResult], num_shards: int, index: np.ndarray) -> None:
    c = section["counts"]
    checks = {
        "with_content + id_only = items": c["with_content"] + c["id_only"] == c["items"],
        "decoded + synthetic = with_content": c["decoded"] + c["synthetic"] == c["with_content"],
        "id_only by kind adds up": sum(c["id_only_by_kind"].values()) == c["id_only"],
        "shard samples = with_content": sum(r.entry["samples"] for r in results) == c["with_content"],
        f"shards 0..{num_shards - 1} all written": sorted(r.shard for r in results) == list(range(num_shards)),
        "index rows with content = with_content": int((index[:, 0] >= 0).sum()) == c["with_content"],
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise IngestError("content counts do not reconcile, manifest not updated: " + "; ".join(failed)
                          + f" (counts: {json.dumps(c)})")


def run_content_ingest(video: VideoIngestConfig, dataset_dir: str, *, progress: bool = True) -> ContentResult:
    """Decode every item's video into ``content`` shards of ``dataset_dir`` (Ray must be initialised).

    Args:
        video: The video settings (``video.enabled`` is not consulted: calling this is the intent).
        dataset_dir: A published dataset (local path or URI).
        progress: Ray Data progress bars and one line per finished shard.

    Returns:
        The ``ContentResult`` with the new manifest.

    Raises:
        IngestError: with ``on_missing='error'`` naming the first unusable video; on counts that do
            not reconcile; or when another run changed the dataset's content meanwhile.
    """
    t0 = time.perf_counter()
    manifest = load_manifest(dataset_dir)
    generation, content_dir = next_generation(manifest, "content")
    items_map = load_items_map(manifest)
    n, size = manifest.num_items, video.shard_max_samples
    num_shards = -(-n // size)
    video_dict = config_to_dict(video)
    results: list[ShardResult] = []
    with removed_on_failure(manifest.path(content_dir)):
        for row in map_shards(_shard_task, num_shards, progress=progress,
                              fn_kwargs={"root": dataset_dir, "content_dir": content_dir, "shard_size": size,
                                         "maps": [ray.put(items_map)], "video": video_dict}):
            r = ShardResult(**row)
            results.append(r)
            if progress:
                print(f"content shard {r.shard + 1}/{num_shards} ({len(results)} done): {r.decoded} decoded, "
                      f"{r.synthetic} synthetic, {len(r.id_only)} ID-only in {r.seconds:.1f}s", flush=True)
    results.sort(key=lambda r: r.shard)
    index = build_index(n, [(r.shard, r.ids, r.offsets) for r in results])
    section = _section(video, results, content_dir, n, time.perf_counter() - t0, generation)
    _reconcile(section, results, num_shards, index)
    new = publish_content(manifest, "content", section, [r.entry for r in results], index, video=video_dict)
    return ContentResult(manifest=new, seconds=time.perf_counter() - t0)
