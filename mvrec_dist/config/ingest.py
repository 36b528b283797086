"""Settings of the ingestion job: raw MicroLens files -> Ray Data -> webdataset shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["IngestConfig", "SyntheticConfig", "VideoIngestConfig", "TextIngestConfig"]


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Where the raw interactions are, how to read them, and how to write the shards."""

    input: str = setting("", doc="Interactions: a file, a directory or a glob; local path or a pyarrow/fsspec URI.")
    format: Literal["auto", "pairs_tsv", "pairs_csv", "plays_csv"] = setting(
        "auto", doc="Input format; 'auto' decides from the file suffix (.tsv: user<TAB>items, .csv: "
                    "user,item,timestamp with an optional fourth column label, 1 = clicked, 0 = shown but not "
                    "clicked: an exposure) and, for .csv, the first line: FRAME's "
                    "user,item,playing_time,duration,timestamp[,like,follow,forward] (header, or 5 or 8 fields) "
                    "is plays_csv, whose playing time and duration are stored with every interaction.")
    titles: str | None = setting(None, doc="Titles CSV (header 'item,title'); null writes items without titles.")
    output_dir: str = setting("data/shards/demo", doc="Dataset directory to create; it gets manifest.json, shards and id maps.")
    min_seq_len: int = setting(5, doc="Users with fewer interactions are dropped and counted (paper: 5).")
    shard_max_samples: int = setting(10_000, doc="Most samples per tar shard (users for splits, items for the item table).")
    users_per_block: int = setting(
        1024, doc="Consecutive users per tar sample (block) of the train/valid/test shards, stored as columnar arrays.")
    items_per_block: int = setting(1024, doc="Consecutive items per tar sample (block) of the items shards.")
    on_bad_rows: Literal["error", "quarantine"] = setting(
        "error", doc="'error' stops at the first malformed row naming file, line and reason; 'quarantine' sets them aside.")
    duplicates: Literal["keep", "drop", "error"] = setting(
        "error", doc="A user on several lines of a *_pairs.tsv, or an exact duplicate row (same user, item, "
        "timestamp) of a *_pairs.csv: 'error' (the default: MicroLens has neither, and no sequence changes "
        "silently) stops naming the file, the line and the earlier line; "
        "'keep' merges the lines in file order / keeps both rows; 'drop' keeps the user's first line / the first "
        "row. Counted in the manifest either way.")
    overwrite: bool = setting(False, doc="Replace an output directory that already holds a different dataset.")
    read_block_bytes: int = setting(64 << 20, doc="Byte range each read task parses; large files are split on line boundaries.")
    group_partitions: int = setting(0, doc="User-range partitions for grouping interactions by user; 0 picks from input size and cores.")
    progress: bool = setting(True, doc="Show Ray Data progress bars on the driver (off in CI quiet mode).")
    warm: tuple[int, ...] = setting(
        (), doc="Also derive Warm-N datasets into <output_dir>-warm<N>: items with fewer than N interactions "
        "removed, short users dropped, re-split (mvrec_dist.data.ingest.warm; the paper: [20, 50, 200]).")
    item_counts: str | None = setting(
        None, doc="Per-item counts CSV (local path or URI; header 'item,<col>,...' e.g. 'item,likes,views,comments', "
        "raw item ids, non-negative integer counts, every item of the dataset listed): the popularity label "
        "(MMRA: log2 of the count, no label for 0) comes from its item_count_column instead of the item's "
        "interactions in the dataset (null: the interactions, which in MicroLens are the comments).")
    item_count_column: str = setting(
        "comments", doc="Column of ingest.item_counts holding the label counts.")
    item_split_seed: int = setting(
        0, doc="Seed of the random train/valid/test split of the labelled items saved with the dataset "
        "(stats/item_split.npy; MMRA's popularity prediction).")
    item_valid_fraction: float = setting(
        0.1, doc="Share of the labelled items in the item split's valid part (MMRA: 0.1).")
    item_test_fraction: float = setting(
        0.1, doc="Share of the labelled items in the item split's test part (MMRA: 0.1).")
    resume: bool = setting(
        True, doc="Build the dataset in <output_dir>.partial-<key> (key: the dataset fingerprint and the inputs' "
        "modification times) and, when a run of the same inputs and settings was interrupted there, reuse the "
        "shards it finished, each checked by sha256 against its completion record (mvrec_dist.data.ingest.resume); "
        "the directory is kept when a run is interrupted, deleted when the data fails. false: a fresh temporary "
        "directory, deleted on any failure.")
    check_free_space: bool = setting(
        True, doc="Refuse to start when the filesystem of ingest.output_dir (or of Ray's spill directory, or of "
        "synthetic.output) has less free space than the run's estimate (mvrec_dist.data.ingest.space: input "
        "bytes x the measured shard ratio, plus spill headroom); false skips the check.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(all(not isinstance(n, bool) and n >= 1 for n in self.warm), "warm",
                f"every N must be an integer >= 1 (items with fewer than N interactions are removed), "
                f"got {list(self.warm)}")
        p.check(len(set(self.warm)) == len(self.warm), "warm", f"lists an N twice: {list(self.warm)}")
        p.check(self.min_seq_len >= 3, "min_seq_len",
                f"must be >= 3 so that train keeps at least one item before valid/test, got {self.min_seq_len}")
        p.check(self.shard_max_samples >= 1, "shard_max_samples", f"must be >= 1, got {self.shard_max_samples}")
        p.check(self.users_per_block >= 1, "users_per_block", f"must be >= 1, got {self.users_per_block}")
        p.check(self.items_per_block >= 1, "items_per_block", f"must be >= 1, got {self.items_per_block}")
        p.check(self.read_block_bytes >= 1 << 16, "read_block_bytes", f"must be >= 65536, got {self.read_block_bytes}")
        p.check(self.group_partitions >= 0, "group_partitions", f"must be >= 0, got {self.group_partitions}")
        p.check(bool(self.output_dir), "output_dir", "must be set")
        p.check(bool(self.item_count_column) and self.item_count_column != "item", "item_count_column",
                f"must name a count column of ingest.item_counts other than 'item', got {self.item_count_column!r}")
        for name in ("item_valid_fraction", "item_test_fraction"):
            p.check(0.0 <= getattr(self, name) < 1.0, name, f"must be in [0, 1), got {getattr(self, name)}")
        p.check(self.item_valid_fraction + self.item_test_fraction < 1.0, "item_test_fraction",
                f"item_valid_fraction + item_test_fraction must be < 1 (train keeps the rest), got "
                f"{self.item_valid_fraction} + {self.item_test_fraction}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """A MicroLens-shaped synthetic interaction file generated before ingestion (demo, tests, scale)."""

    enabled: bool = setting(False, doc="Generate the synthetic csv first and ingest it instead of ingest.input.")
    output: str = setting("data/raw/synthetic", doc="Directory that receives the generated csv part files.")
    users: int = setting(20_000, doc="Number of users (MicroLens full: 34,492,051).")
    items: int = setting(5_000, doc="Number of items (MicroLens full: 1,142,528).")
    interactions: int = setting(150_000, doc="Target number of interactions (MicroLens full: 1,006,528,709).")
    seed: int = setting(0, doc="Seed of the generator; the same seed gives byte-identical files.")
    chunk_users: int = setting(250_000, doc="Users per generated part file; parts are produced in parallel tasks.")
    structure: float = setting(
        0.0, doc="Learnable sequential structure in [0, 1): the chance that a user's next item comes from the "
        "latent cluster of the previous one (0: popularity and length only, the benchmarks' data; the item "
        "and length marginals stay the fitted ones either way, see mvrec_dist.data.synthetic).")
    cluster_size: int = setting(
        25, doc="Items per latent item cluster (the last one takes the remainder; at least one cluster); "
        "used when structure > 0.")
    exposures: float = setting(
        0.0, doc="Exposures (label-0 rows: shown, not clicked) per interaction, drawn by popularity from clusters "
        "the user never clicks, so a model can learn them; the csv gets a label column. 0: none, the csv is byte "
        "for byte the one without the option. Needs structure > 0 (the clusters).")
    plays: bool = setting(
        False, doc="Give every interaction a playing time and a duration (ms) with clip-level structure (users "
        "leave videos in clips whose latent topic they dislike, mvrec_dist.data.synthetic_plays) and write FRAME's "
        "format, user,item,playing_time,duration,timestamp (plays_csv). Off: the csv is byte for byte the one "
        "without the option. Not with exposures (that format has no label column).")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.users >= 1, "users", f"must be >= 1, got {self.users}")
        p.check(0.0 <= self.structure < 1.0, "structure",
                f"must be in [0, 1) (1 would never leave a cluster), got {self.structure}")
        p.check(self.cluster_size >= 1, "cluster_size", f"must be >= 1, got {self.cluster_size}")
        p.check(self.items >= 10, "items",
                f"must be >= 10 (no user repeats an item, and a user may hold up to items/2), got {self.items}")
        p.check(self.interactions >= 5 * self.users, "interactions",
                f"must be >= 5 x users ({5 * self.users}) so every user can reach min_seq_len, got {self.interactions}")
        p.check(self.chunk_users >= 1, "chunk_users", f"must be >= 1, got {self.chunk_users}")
        p.check(0.0 <= self.exposures <= 20.0, "exposures", f"must be in [0, 20], got {self.exposures}")
        p.check(self.exposures == 0 or self.structure > 0, "exposures",
                "needs synthetic.structure > 0: exposures are drawn from the latent clusters a user does not follow")
        p.check(not (self.plays and self.exposures > 0), "plays",
                "cannot be combined with synthetic.exposures: FRAME's plays_csv format has no label column")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class VideoIngestConfig:
    """Decoding raw videos into item-content shards (frames as uint8 arrays)."""

    enabled: bool = setting(False, doc="Decode videos into the item-content shards (an existing dataset in output_dir with the same inputs gets content added).")
    videos: str = setting("", doc="Directory (local or URI) holding <raw_item_id>.mp4 files.")
    frames: int = setting(5, doc="Frames sampled per video, uniform over the duration (paper: 5).")
    mode: Literal["uniform", "clips"] = setting("uniform", doc="'uniform' frames, or 'clips' of consecutive frames (FRAME: 4 clips).")
    clips: int = setting(4, doc="Clips per video in 'clips' mode.")
    frames_per_clip: int = setting(2, doc="Consecutive frames per clip in 'clips' mode.")
    size: int = setting(224, doc="Frames are resized (short side) and center-cropped to size x size.")
    on_missing: Literal["id_only", "error"] = setting(
        "id_only", doc="A missing/unreadable video: keep the item ID-only and list it in the manifest, or stop.")
    shard_max_samples: int = setting(
        256, doc="Items per content shard (a 5x224x224 item is 0.75 MB, so 256 items make ~190 MB tars).")
    synthetic_missing: bool = setting(
        False, doc="Items whose video file does not exist get seeded noise frames (source 'synthetic'); CI-sized runs only, they carry no content signal.")
    synthetic_seed: int = setting(0, doc="Seed of the synthetic frames (with the raw item id).")

    @property
    def frames_per_item(self) -> int:
        """F, the frames stored per item: ``frames`` ('uniform') or ``clips * frames_per_clip`` ('clips')."""
        return self.frames if self.mode == "uniform" else self.clips * self.frames_per_clip

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.frames >= 1, "frames", f"must be >= 1, got {self.frames}")
        p.check(self.size >= 8, "size", f"must be >= 8, got {self.size}")
        p.check(self.clips >= 1 and self.frames_per_clip >= 1, "clips",
                "clips and frames_per_clip must be >= 1")
        p.check(not self.enabled or bool(self.videos), "videos", "must be set when video.enabled is true")
        p.check(self.shard_max_samples >= 1, "shard_max_samples", f"must be >= 1, got {self.shard_max_samples}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class TextIngestConfig:
    """Tokenising item titles into item-content shards (token ids as ``int32 [max_tokens]`` arrays)."""

    enabled: bool = setting(False, doc="Tokenise every item's title into the dataset's text content (an existing dataset in output_dir with the same inputs gets it added).")
    tokenizer: str = setting("all-minilm-l6-v2", doc="Pretrained text model whose tokenizer is used (mvrec_dist.data.pretrained_text; ships in a package).")
    max_tokens: int = setting(48, doc="Token ids per title, [CLS] and [SEP] included; longer titles are truncated (counted), shorter ones padded with id 0 (48 keeps 96% of MicroLens-50K titles whole).")
    shard_max_samples: int = setting(8192, doc="Items per text shard (48 int32 ids are 192 bytes an item).")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.max_tokens >= 2, "max_tokens", f"must be >= 2 ([CLS] and [SEP]), got {self.max_tokens}")
        p.check(self.shard_max_samples >= 1, "shard_max_samples", f"must be >= 1, got {self.shard_max_samples}")
        p.check(bool(self.tokenizer), "tokenizer", "must name a pretrained text model")
        p.raise_if_any()
