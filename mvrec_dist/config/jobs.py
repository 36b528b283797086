"""Top-level configs of the jobs: one nested dataclass per job, one section per concern."""

from __future__ import annotations

from dataclasses import dataclass

from mvrec_dist.config import content as _content  # noqa: F401  (registers content-encoder variants)
from mvrec_dist.config.data import DataConfig
from mvrec_dist.config.eval import EvalConfig
from mvrec_dist.config.features import TrunkCacheConfig
from mvrec_dist.config.fields import Problems, setting
from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig, TextIngestConfig, VideoIngestConfig
from mvrec_dist.config.model import ModelConfig
from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.config.retrieval import RetrievalConfig
from mvrec_dist.config.runtime import RayConfig
from mvrec_dist.config.task import MetricSpec, NextItemTaskConfig, TaskConfig, candidate_metric_specs
from mvrec_dist.config.train import TrainConfig

__all__ = ["IngestJobConfig", "TrainJobConfig"]


@dataclass(frozen=True, kw_only=True)
class IngestJobConfig:
    """``jobs/ingest_microlens.py``: raw MicroLens (or synthetic) interactions -> webdataset shards."""

    ingest: IngestConfig = setting(factory=IngestConfig, doc="Input files, reading and shard writing.")
    synthetic: SyntheticConfig = setting(factory=SyntheticConfig, doc="Optional synthetic MicroLens-shaped input.")
    video: VideoIngestConfig = setting(factory=VideoIngestConfig, doc="Optional decoding of raw videos into item-content shards.")
    text: TextIngestConfig = setting(factory=TextIngestConfig, doc="Optional tokenisation of item titles into item-content shards.")
    ray: RayConfig = setting(factory=RayConfig, doc="Ray cluster to run on.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.synthetic.enabled or bool(self.ingest.input), "ingest.input",
                "must be set (or enable synthetic.enabled to generate a synthetic input)")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class TrainJobConfig:
    """``jobs/train_videorec.py``: distributed training, validation and test of a recommender."""

    task: TaskConfig = setting(
        factory=NextItemTaskConfig,
        doc="What the run learns; 'name' picks next_item (default), item_popularity, mtin, mmra or frame.")
    data: DataConfig = setting(factory=DataConfig, doc="Dataset and batching.")
    model: ModelConfig = setting(factory=ModelConfig, doc="Item tower, user encoder and loss.")
    parallel: ParallelConfig = setting(factory=ParallelConfig, doc="Workers, sharding and ZeRO.")
    train: TrainConfig = setting(factory=TrainConfig, doc="Optimisation, cadence and checkpoints.")
    eval: EvalConfig = setting(factory=EvalConfig, doc="Validation and test.")
    trunk_cache: TrunkCacheConfig = setting(
        factory=TrunkCacheConfig, doc="Computing cached trunk features (content_encoder.cached_trunk).")
    retrieval: RetrievalConfig = setting(factory=RetrievalConfig, doc="MMRA's retriever: item neighbours (jobs/build_neighbours.py).")
    ray: RayConfig = setting(factory=RayConfig, doc="Ray cluster to run on.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.train.batch_size % self.parallel.num_workers == 0, "train.batch_size",
                f"{self.train.batch_size} does not split evenly over parallel.num_workers="
                f"{self.parallel.num_workers}")
        p.check(not self.model.uses_cached_features or bool(self.data.content_features), "data.content_features",
                "must name the trunk-feature store when the content encoder's features are cached "
                "(video: model.content_encoder.cached_trunk=true; jobs/cache_trunk_features.py writes it)")
        p.check(self.task.name != "item_popularity" or not self.model.uses_content, "model.item_tower",
                "task item_popularity trains on the ID table only in this version (content towers for a "
                f"regression task arrive with MMRA); set model.item_tower=id, got {self.model.item_tower!r}")
        p.check(self.task.name != "mtin" or self.model.item_tower == "id", "model.item_tower",
                "task mtin reads item IDs only in this version (a content tower would need its content in the "
                f"histories' and candidates' batches); set model.item_tower=id, got {self.model.item_tower!r}")
        p.check(self.task.name != "mtin" or self.parallel.zero_stage < 3 or self.task.mtin.l2 == 0,
                "parallel.zero_stage", "task mtin adds lambda ||Theta||^2 of Eq. 12 in the forward, which reads whole "
                "parameters; ZeRO-3 partitions them outside their module's forward: use zero_stage 0, 1 or 2 "
                "(MTIN's dense tower is small) or task.mtin.l2=0")
        p.check(self.task.name not in ("item_popularity", "mmra") or self.eval.click_cutoff is None, "eval.click_cutoff",
                f"task {self.task.name} ranks nothing, so it has no click metrics; leave eval.click_cutoff null")
        if self.task.name == "mmra":
            for key in ("text_features", "frame_features", "output_dir"):
                p.check(bool(getattr(self.retrieval, key)), f"retrieval.{key}",
                        "task mmra reads its inputs from the retrieval section: text_features (title vectors), "
                        "frame_features (per-frame features) and output_dir (the neighbour store); set all three")
            p.check(self.model.content_encoder is None or self.data.content_features == self.retrieval.frame_features,
                    "data.content_features", "task mmra with a model.content_encoder caches its per-frame features "
                    "(jobs/cache_trunk_features.py) for the task to read: data.content_features must be "
                    f"retrieval.frame_features ({self.retrieval.frame_features!r}), got {self.data.content_features!r}")
            p.check(self.task.retrieved <= self.retrieval.k, "task.retrieved",
                    f"reads {self.task.retrieved} neighbours but the store keeps retrieval.k={self.retrieval.k}")
        per_frame_ok = self.task.name in ("mmra", "frame")
        p.check(getattr(self.model.content_encoder, "frame_pool", "mean") == "mean" or per_frame_ok,
                "model.content_encoder.frame_pool", "'none' gives per-frame features [F, C], which only tasks mmra "
                "and frame read (item towers take one vector per item): use 'mean'")
        p.check(getattr(self.task, "clip_init", "random") == "random" or bool(self.data.content_features),
                "data.content_features", "task.clip_init=features reads the clips' per-frame features from this "
                "store (jobs/cache_trunk_features.py with model.content_encoder.frame_pool=none writes it)")
        p.check(getattr(self.task, "clip_init", "random") == "random" or not self.trunk_cache.build_if_missing,
                "trunk_cache.build_if_missing", "task.clip_init=features sizes the clip table from the feature store "
                "before any worker starts: compute it first with jobs/cache_trunk_features.py")
        p.check(not self.eval.candidate_negatives or self.task.name == "next_item", "eval.candidate_negatives",
                f"is for task next_item (task frame draws its own candidates: task.eval_negatives); task "
                f"{self.task.name!r} needs 0, got {self.eval.candidate_negatives}")
        names = [m.name for m in self.metrics]
        p.check(self.eval.select_metric is None or self.eval.select_metric in names, "eval.select_metric",
                f"must be a metric of task '{self.task.name}': one of {names}, got {self.eval.select_metric!r}")
        p.raise_if_any()

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """The task's validation/test metrics, in display order (a next-item task's with the candidate metrics
        when ``eval.candidate_negatives`` asks for them)."""
        out = self.task.metrics(self.eval.ks, self.click_cutoff)
        if self.eval.candidate_negatives:
            out += candidate_metric_specs(self.eval.candidate_ks)
        return out

    @property
    def click_cutoff(self) -> int | None:
        """K of the click metrics (AUC, Precision/Recall/F1@K) the task reports, or None: ``eval.click_cutoff``,
        else the task's default."""
        return self.eval.click_cutoff or self.task.default_click_cutoff()

    @property
    def select_metric(self) -> MetricSpec:
        """The metric that selects the best epoch and drives early stopping (with its direction)."""
        name = self.eval.select_metric or self.task.default_select_metric(self.eval.ks)
        return next(m for m in self.metrics if m.name == name)

    @property
    def batch_size_per_worker(self) -> int:
        """Training sequences each worker takes per step."""
        return self.train.batch_size // self.parallel.num_workers
