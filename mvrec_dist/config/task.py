"""What a run learns: the task variants (next-item ranking, item popularity regression, ...).

A task config names its metrics and which way each is better; the job config checks
``eval.select_metric`` against them, and ``mvrec_dist.tasks`` builds the task's data, model and
evaluation from the variant. ``next_item`` (the MicroLens protocol) is the default, so a config
without a ``task`` section means what it always meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting
from mvrec_dist.config.mtin import MTINConfig

__all__ = ["MetricSpec", "TaskConfig", "NextItemTaskConfig", "ItemPopularityTaskConfig", "MTINTaskConfig",
           "MMRATaskConfig", "FRAMETaskConfig", "candidate_metric_specs"]


@dataclass(frozen=True)
class MetricSpec:
    """One validation/test metric of a task."""

    name: str
    """Key in the metrics dicts, logs, TensorBoard and ``result.json`` (e.g. ``ndcg@10``, ``mae``)."""
    higher_is_better: bool
    """Direction: early stopping and the best checkpoint maximise it when True, minimise it otherwise."""

    def better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` (strictly; NaN never does)."""
        if value != value:  # NaN
            return False
        return value > best if self.higher_is_better else value < best


def ranking_metrics(ks: tuple[int, ...], click_cutoff: int | None) -> tuple[MetricSpec, ...]:
    """HR@K and NDCG@K for every K of ``ks``; with ``click_cutoff`` K', then AUC, Precision@K', Recall@K',
    F1@K' (``mvrec_dist.eval.scored_ranking``); all higher is better."""
    out = tuple(MetricSpec(f"{m}@{k}", True) for k in ks for m in ("hr", "ndcg"))
    if click_cutoff:
        out += tuple(MetricSpec(n, True) for n in ("auc", f"precision@{click_cutoff}", f"recall@{click_cutoff}",
                                                   f"f1@{click_cutoff}"))
    return out


def candidate_metric_specs(ks: tuple[int, ...]) -> tuple[MetricSpec, ...]:
    """FRAME's metrics over each user's scored candidates (``eval.candidate_metrics``): ``frame/auc``,
    ``frame/user_auc``, ``frame/logloss`` (lower is better), then ``frame/{recall,ndcg,dcg}@K`` for K in ``ks``."""
    return ((MetricSpec("frame/auc", True), MetricSpec("frame/user_auc", True), MetricSpec("frame/logloss", False))
            + tuple(MetricSpec(f"frame/{m}@{k}", True) for k in ks for m in ("recall", "ndcg", "dcg")))


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Base of the task variants; ``name`` selects one."""

    @staticmethod
    def default_variant() -> type:
        return NextItemTaskConfig

    def metrics(self, ks: tuple[int, ...], click_cutoff: int | None = None) -> tuple[MetricSpec, ...]:
        """Every metric the task reports, in display order (``ks``: the ``eval.ks`` cut-offs; ``click_cutoff``:
        K of the click metrics of ranking tasks, ``TrainJobConfig.click_cutoff``)."""
        raise NotImplementedError

    def default_click_cutoff(self) -> int | None:
        """K of the click metrics when ``eval.click_cutoff`` is null (None: the task does not report them)."""
        return None

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """The metric that selects the best epoch when ``eval.select_metric`` is not set."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class NextItemTaskConfig(TaskConfig):
    """Next-item recommendation (MicroLens protocol: leave-one-out, full ranking, history excluded)."""

    name: Literal["next_item"] = setting("next_item", doc="Selects next-item sequential recommendation.")

    def metrics(self, ks: tuple[int, ...], click_cutoff: int | None = None) -> tuple[MetricSpec, ...]:
        """HR@K and NDCG@K for every K, then (with ``click_cutoff``) the click metrics; all higher is better."""
        return ranking_metrics(ks, click_cutoff)

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """NDCG@10 (the paper's headline metric), or NDCG at the first cut-off when 10 is not one."""
        return "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"


@dataclass(frozen=True, kw_only=True)
class ItemPopularityTaskConfig(TaskConfig):
    """Item popularity regression: predict ``log2(1 + train interactions)`` of an item from its embedding.

    The smallest task of the shape MMRA has (a regression over items, a lower-is-better metric):
    items 1..N are split at random into train/valid/test with ``split_seed``; the label is read from
    the dataset's ``stats/item_train_counts.npy``.
    """

    name: Literal["item_popularity"] = setting("item_popularity", doc="Selects item popularity regression.")
    valid_fraction: float = setting(0.1, doc="Share of items held out for validation (MMRA: 0.1).")
    test_fraction: float = setting(0.1, doc="Share of items held out for test (MMRA: 0.1).")
    split_seed: int = setting(0, doc="Seed of the random item split (fixed, so every run sees the same split).")
    hidden_dim: int = setting(64, doc="Width of the regression head's hidden layer.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(0 < self.valid_fraction < 1, "valid_fraction", f"must be in (0, 1), got {self.valid_fraction}")
        p.check(0 < self.test_fraction < 1, "test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        p.check(self.valid_fraction + self.test_fraction < 1, "test_fraction",
                f"valid_fraction + test_fraction must leave items to train on, got "
                f"{self.valid_fraction} + {self.test_fraction}")
        p.check(self.hidden_dim >= 1, "hidden_dim", f"must be >= 1, got {self.hidden_dim}")
        p.raise_if_any()

    def metrics(self, ks: tuple[int, ...], click_cutoff: int | None = None) -> tuple[MetricSpec, ...]:
        """Mean absolute and root mean squared error of the label, lower is better (no ranking, no click metrics)."""
        return (MetricSpec("mae", False), MetricSpec("rmse", False))

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """MAE (MMRA's selection metric is MSE-family; MAE is less swayed by a few viral items)."""
        return "mae"


@dataclass(frozen=True, kw_only=True)
class MTINTaskConfig(TaskConfig):
    """MTIN (Jiang et al., MM'20): click prediction from positive and negative histories and a per-user memory.

    Each training window of a user (``data.train_windows``) is one example: H_pos = its items but the
    last, the candidates = its last item (label 1) and ``num_negatives`` items (label 0), H_neg =
    ``negative_length`` items; the label-0 items are sampled non-interacted items or the user's exposures
    (``negatives``). The memory is the table ``mtin_memory`` (``2 s`` rows of d per user), written back
    every step. Evaluation: the MicroLens protocol (HR/NDCG@K, full ranking, history excluded) and MTIN's
    AUC, Precision/Recall/F1@``eval.click_cutoff`` (default 50) over the same full-ranking list
    (``mvrec_dist.eval.scored_ranking``). ``model.embedding_dim`` is d and ``model.init_std`` the init
    of weights, item rows and memory rows; ``model.user_encoder`` and ``model.loss`` are not used.
    """

    name: Literal["mtin"] = setting("mtin", doc="Selects MTIN click prediction (its own model, memory and metrics).")
    mtin: MTINConfig = setting(factory=MTINConfig, doc="The model's settings (s, p, routing, masks, lambda).")
    negatives: Literal["sampled", "exposures"] = setting(
        "sampled", doc="Where H_neg and label-0 candidates come from: 'sampled' = uniform draws from the items the "
                       "user never interacted with (MicroLens has no exposures); 'exposures' = the user's "
                       "shown-but-not-clicked rows of a dataset ingested with a label column: H_neg = the last "
                       "negative_length exposures before the positive, candidates drawn from the other exposures, "
                       "sampled items where a user has too few (counted in the result); refused for a dataset "
                       "without labels. result.json records which was used.")
    num_negatives: int = setting(4, doc="Label-0 candidates per example beside its positive (paper: not given).")
    negative_length: int | None = setting(
        None, doc="Items in the sampled negative history H_neg; null = data.max_seq_len (the positive's length).")
    user_chunk: int = setting(64, doc="Users ranked at once in full ranking (their [user_chunk, N+1] scores).")
    item_chunk: int = setting(256, doc="Items per scoring block of the MLP (8 users x item_chunk x 2 d hidden floats "
                                       "kept in cache; MTINScorer.score_all).")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_negatives >= 1, "num_negatives", f"must be >= 1, got {self.num_negatives}")
        p.check(self.negative_length is None or self.negative_length >= 1, "negative_length",
                f"must be >= 1 or null, got {self.negative_length}")
        p.check(self.user_chunk >= 1, "user_chunk", f"must be >= 1, got {self.user_chunk}")
        p.check(self.item_chunk >= 1, "item_chunk", f"must be >= 1, got {self.item_chunk}")
        p.raise_if_any()

    def metrics(self, ks: tuple[int, ...], click_cutoff: int | None = None) -> tuple[MetricSpec, ...]:
        """HR@K and NDCG@K for every K, then AUC, Precision/Recall/F1@``click_cutoff``; all higher is better."""
        return ranking_metrics(ks, click_cutoff or self.default_click_cutoff())

    def default_click_cutoff(self) -> int | None:
        """50, the paper's K of Precision/Recall/F1@K."""
        return 50

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """NDCG@10 (or at the first cut-off), as for next-item: the MicroLens headline metric."""
        return "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"


@dataclass(frozen=True, kw_only=True)
class MMRATaskConfig(TaskConfig):
    """MMRA (retrieval-augmented micro-video popularity prediction; ICDM-UESTC/MMRA): a regression over items.

    Label: ``log2`` of the item's interaction count in the dataset (or of a per-item counts file's
    column), written at ingestion with the item split (80/10/10, seeded) that the task trains on
    (``mvrec_dist.data.item_split``); items without interactions have no label and are in no split.
    Inputs, all named by the ``retrieval`` section (the same preset builds the neighbours with
    ``jobs/build_neighbours.py``): ``retrieval.text_features`` (a title vector ``[Ct]`` per item),
    ``retrieval.frame_features`` (per-frame features ``[F, Cv]``, or ``[Cv]`` read as one frame) and
    ``retrieval.output_dir`` (each item's neighbours among the train and valid items, with cosine
    similarities). The model is ``mvrec_dist.models.mmra.MMRA``; no embedding tables.
    Metrics: nMSE, SRC, MAE over the whole split, their per-batch averages as MMRA's ``test.py``
    computes them (``eval_batch``), and MAE + nMSE, MMRA's selection criterion (lower is better).
    """

    name: Literal["mmra"] = setting("mmra", doc="Selects MMRA popularity prediction (its own model, data and metrics).")
    frames: int = setting(10, doc="Frames per item the model reads (MMRA: 10); the frame store must hold at least "
                                  "this many (a [Cv] store is one frame and needs frames=1).")
    retrieved: int = setting(10, doc="Retrieved neighbours per item the model reads, of the store's k (MMRA: 10 of 20).")
    alpha: float = setting(0.6, doc="Scale of the negated attention branch of the cross-modal attention (MMRA: 0.6).")
    feature_dim: int | None = setting(
        None, doc="Width d of the model's streams (MMRA: 768, its features' width). null = the text features' width. "
                  "A modality of another width passes through a linear projection to d first (ours: MMRA's ViT and "
                  "BERT features are both 768 wide, ours need not be).")
    use_retrieval: bool = setting(True, doc="False: the model without the retrieval branch (the ablation baseline): "
                                            "the fusion MLP reads the item's own text and frame streams only.")
    loss: Literal["mse", "bce"] = setting(
        "mse", doc="'mse' (MMRA's default); 'bce': the output is a logit of label / (the train labels' maximum), "
                   "predictions are sigmoid(output) x that maximum (MMRA's BCE option applies BCELoss to the raw output, "
                   "which is only defined in [0, 1]).")
    eval_batch: int = setting(256, doc="Items per batch of the per-batch metric variant (MMRA's test loader: 256), and "
                                       "per forward pass of evaluation.")
    missing_frames: Literal["error", "zeros"] = setting(
        "error", doc="A labelled item without frame features (no video file, ingested ID-only): 'error' refuses the "
                     "run naming the split; 'zeros' reads all-zero frames for it, and each evaluation reports how "
                     "many of its items did ('no_frames').")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.frames >= 1, "frames", f"must be >= 1, got {self.frames}")
        p.check(self.retrieved >= 1, "retrieved", f"must be >= 1, got {self.retrieved}")
        p.check(self.feature_dim is None or self.feature_dim >= 1, "feature_dim",
                f"must be >= 1 or null, got {self.feature_dim}")
        p.check(self.eval_batch >= 2, "eval_batch", f"must be >= 2, got {self.eval_batch}")
        p.raise_if_any()

    def metrics(self, ks: tuple[int, ...], click_cutoff: int | None = None) -> tuple[MetricSpec, ...]:
        """MAE + nMSE (selection), nMSE, SRC, MAE; then their per-batch variants (``*_b``). SRC is higher-is-better."""
        return (MetricSpec("mae_nmse", False), MetricSpec("nmse", False), MetricSpec("src", True),
                MetricSpec("mae", False), MetricSpec("nmse_b", False), MetricSpec("src_b", True),
                MetricSpec("mae_b", False))

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """MAE + nMSE on validation, lower is better: MMRA's early-stopping criterion."""
        return "mae_nmse"


@dataclass(frozen=True, kw_only=True)
class FRAMETaskConfig(TaskConfig):
    """FRAME (SIGIR'23): clip-level user interests from user x clip graphs of play ratios.

    Every play of a user but the first is an example (``tasks/frame_batch.py``): per-clip BCE (watched
    through / left in, the positive term weighted ``k/4``) plus a BPR term between the played video's score
    and that of a video the user never played (``bpr_negatives``). The graphs come from each user's train
    plays (``data/clip_graphs.py``); ``A E`` is a weighted pooled lookup of the sharded clip table, ``A^T U``
    the clip aggregates refreshed every ``refresh_every_steps`` (``models/frame.py``). Without play times
    (MicroLens) every play counts as watched through. Evaluation: the MicroLens protocol (HR/NDCG@K, full
    ranking of the video scores, history excluded) and FRAME's metrics over each user's test candidates (the
    target, label 1, and ``eval_negatives`` videos the user never played, label 0): ``frame/auc`` (global),
    ``frame/user_auc``, ``frame/logloss``, ``frame/recall@K``, ``frame/ndcg@K`` and FRAME's un-normalised
    ``frame/dcg@K`` for K in 3, 5 (``eval/candidate_metrics.py``). ``model.embedding_dim`` is D;
    ``model.item_tower``, ``user_encoder`` and ``loss`` are not used.
    """

    name: Literal["frame"] = setting("frame", doc="Selects FRAME (its own graphs, model, loss and metrics).")
    graph_rule: Literal["left_once", "released"] = setting(
        "left_once", doc="Negative edges: 'left_once' = one edge of weight 1 to the clip a play left in (also the "
                         "first clip); 'released' = the released code's (weight k, none when the play left in the "
                         "first clip). data/clip_graphs.py says why.")
    hidden: int = setting(64, doc="Hidden width of the clip scorer MLP (released: 256; 64 keeps full ranking of "
                                  "4 clips per video affordable on CPU).")
    bpr_weight: float = setting(1.0, doc="Weight of the BPR term (per play with an in-batch negative) beside the "
                                         "clip BCE (per labelled clip).")
    bpr_negatives: Literal["sampled", "in_batch"] = setting(
        "sampled", doc="The BPR term's negative video of each play: 'sampled' = a uniform draw from the videos the "
                       "user never played (as the evaluation's candidates); 'in_batch' = another play's video from "
                       "the rank's batch (popularity-distributed like the positives: it never learns popularity; "
                       "test AUC 0.50 on the synthetic demo).")
    clip_init: Literal["random", "features"] = setting(
        "random", doc="Where the clip table starts: 'random' (width model.embedding_dim, seeded normal) or "
                      "'features' (as released: each clip's visual feature, the mean of its frames' vectors in the "
                      "per-frame store data.content_features, width C, trained, then projected to D; the dataset's "
                      "video content must be taken as 4 clips, data/clip_features.py).")
    refresh_every_steps: int = setting(
        1, doc="Recompute the clip aggregates A^T U from every user's interest every N steps (1: every step, the "
               "released forward; larger: cheaper, staler). One pass reads every user's graph row once.")
    refresh_chunk: int = setting(4096, doc="Users per pooled lookup of a refresh pass (and of evaluation).")
    eval_negatives: int = setting(20, doc="Label-0 candidates per test user for FRAME's metrics (videos the user "
                                          "never played, keyed by seed, split and user).")
    ks: tuple[int, ...] = setting((3, 5), doc="Cut-offs of FRAME's Recall/NDCG/DCG over the candidates.")
    user_chunk: int = setting(64, doc="Users scored at once in full ranking.")
    item_chunk: int = setting(256, doc="Videos per scoring block of full ranking.")

    def __post_init__(self) -> None:
        p = Problems()
        for name in ("hidden", "refresh_every_steps", "refresh_chunk", "eval_negatives", "user_chunk", "item_chunk"):
            p.check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        p.check(self.bpr_weight >= 0, "bpr_weight", f"must be >= 0, got {self.bpr_weight}")
        p.check(bool(self.ks) and all(k >= 1 for k in self.ks), "ks", f"must be cut-offs >= 1, got {self.ks}")
        p.raise_if_any()

    def metrics(self, ks: tuple[int, ...], click_cutoff: int | None = None) -> tuple[MetricSpec, ...]:
        """HR/NDCG@K of full ranking, then FRAME's candidate metrics (log loss lower is better)."""
        return ranking_metrics(ks, None) + candidate_metric_specs(self.ks)

    def default_select_metric(self, ks: tuple[int, ...]) -> str:
        """NDCG@10 (or at the first cut-off), the MicroLens headline metric."""
        return "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"
