"""Model settings: the item tower (ID table and/or a content encoder), the user encoder, the loss.

Pluggable components (user encoders, content encoders, losses) are *variant* configs: a base
class whose subclasses carry a ``name: Literal[...]`` tag. YAML picks one with ``name:`` and sets
its own fields; ``mvrec_dist.models.registry`` maps each config class to its builder. A new
component (MTIN, FRAME, a title-text tower) arrives as one config subclass plus one builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from mvrec_dist.config.fields import Problems, setting
from mvrec_dist.config.load import config_to_dict

__all__ = [
    "UserEncoderConfig", "SASRecConfig", "GRU4RecConfig", "NextItNetConfig",
    "LossConfig", "FullSoftmaxConfig", "InBatchSoftmaxConfig", "SampledSoftmaxConfig",
    "ContentKind", "CONTENT_KINDS", "ContentEncoderConfig", "ModelConfig",
]

ContentKind = Literal["frames", "tokens", "features"]
"""What an item-content store holds per item: ``uint8 [F, S, S, 3]`` video frames, ``int [T]`` padded
token ids, or float precomputed features (``mvrec_dist.data.content_store`` checks each kind's arrays)."""
CONTENT_KINDS: tuple[str, ...] = get_args(ContentKind)


# ---------------------------------------------------------------- user encoders
@dataclass(frozen=True, kw_only=True)
class UserEncoderConfig:
    """Base of the user-encoder variants; ``name`` selects one."""

    @staticmethod
    def default_variant() -> type:
        return SASRecConfig


@dataclass(frozen=True, kw_only=True)
class SASRecConfig(UserEncoderConfig):
    """SASRec (Kang & McAuley 2018): causal self-attention over the item sequence."""

    name: Literal["sasrec"] = setting("sasrec", doc="Selects SASRec.")
    num_blocks: int = setting(2, doc="Transformer blocks (paper: 2).")
    num_heads: int = setting(2, doc="Attention heads per block (paper: 2); must divide model.embedding_dim.")
    ffn_mult: int = setting(1, doc="Feed-forward width as a multiple of embedding_dim (original SASRec: 1).")
    dropout: float = setting(0.1, doc="Dropout on embeddings, attention and feed-forward outputs.")
    attention_dropout: float = setting(0.1, doc="Dropout on attention probabilities.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_blocks >= 1, "num_blocks", f"must be >= 1, got {self.num_blocks}")
        p.check(self.num_heads >= 1, "num_heads", f"must be >= 1, got {self.num_heads}")
        p.check(self.ffn_mult >= 1, "ffn_mult", f"must be >= 1, got {self.ffn_mult}")
        p.check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        p.check(0.0 <= self.attention_dropout < 1.0, "attention_dropout",
                f"must be in [0, 1), got {self.attention_dropout}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class GRU4RecConfig(UserEncoderConfig):
    """GRU4Rec (Hidasi et al. 2016): a GRU over the item sequence."""

    name: Literal["gru4rec"] = setting("gru4rec", doc="Selects GRU4Rec.")
    num_layers: int = setting(1, doc="Stacked GRU layers (paper: 1).")
    dropout: float = setting(0.1, doc="Dropout on the input embeddings and between layers.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        p.check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class NextItNetConfig(UserEncoderConfig):
    """NextItNet (Yuan et al. 2019): stacked causal dilated convolutions with residuals."""

    name: Literal["nextitnet"] = setting("nextitnet", doc="Selects NextItNet.")
    num_blocks: int = setting(2, doc="Residual blocks; each block applies the dilation list once (paper: 2).")
    dilations: tuple[int, ...] = setting((1, 4), doc="Dilations of the two convolutions in each block (paper: [1, 4]).")
    kernel_size: int = setting(3, doc="Causal convolution kernel width.")
    dropout: float = setting(0.1, doc="Dropout on the input embeddings.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_blocks >= 1, "num_blocks", f"must be >= 1, got {self.num_blocks}")
        p.check(len(self.dilations) >= 1 and all(d >= 1 for d in self.dilations), "dilations",
                f"must be a non-empty list of positive ints, got {list(self.dilations)}")
        p.check(self.kernel_size >= 2, "kernel_size", f"must be >= 2, got {self.kernel_size}")
        p.check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        p.raise_if_any()


# ---------------------------------------------------------------- losses
@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Base of the loss variants; ``name`` selects one. Every valid sequence position is a target."""

    @staticmethod
    def default_variant() -> type:
        return FullSoftmaxConfig


@dataclass(frozen=True, kw_only=True)
class FullSoftmaxConfig(LossConfig):
    """Cross-entropy over every item (ID item tower, or a content tower on cached features: a live encoder
    cannot encode all items per step)."""

    name: Literal["full_softmax"] = setting("full_softmax", doc="Selects the full softmax.")
    label_smoothing: float = setting(0.0, doc="Label smoothing of the cross-entropy.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(0.0 <= self.label_smoothing < 1.0, "label_smoothing",
                f"must be in [0, 1), got {self.label_smoothing}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class InBatchSoftmaxConfig(LossConfig):
    """MicroLens VideoRec loss: softmax over the batch's items, log-popularity corrected, own items masked."""

    name: Literal["inbatch_softmax"] = setting("inbatch_softmax", doc="Selects the in-batch softmax.")
    logq_correction: bool = setting(True, doc="Subtract log(train popularity) from each candidate's logit (MicroLens).")
    mask_own_items: bool = setting(True, doc="Mask candidates that occur in the row's own window, except the label (MicroLens).")
    temperature: float = setting(1.0, doc="Logits are divided by this temperature.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class SampledSoftmaxConfig(LossConfig):
    """Softmax over the label plus negatives sampled from all items, with logQ correction."""

    name: Literal["sampled_softmax"] = setting("sampled_softmax", doc="Selects the sampled softmax.")
    num_negatives: int = setting(256, doc="Negatives sampled per batch, shared by all rows of the batch.")
    sampler: Literal["uniform", "popularity"] = setting("uniform", doc="Negative distribution: uniform or train popularity.")
    logq_correction: bool = setting(True, doc="Subtract log(sampling probability) from negative logits.")
    mask_own_items: bool = setting(True, doc="Mask sampled negatives that occur in the row's own window.")
    temperature: float = setting(1.0, doc="Logits are divided by this temperature.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_negatives >= 1, "num_negatives", f"must be >= 1, got {self.num_negatives}")
        p.check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        p.raise_if_any()


# ---------------------------------------------------------------- content encoders
@dataclass(frozen=True, kw_only=True)
class ContentEncoderConfig:
    """Base of the item-content encoder variants (video encoders, title text); ``name`` selects one.

    Variants live in ``mvrec_dist.config.content`` so that each content modality owns its file.
    Every variant answers the properties below; the rest of the package asks them instead of
    testing for a modality's fields. An encoder whose bottom part never trains may have that
    part's output cached ("frozen encoder -> cached features", ``mvrec_dist.features``): it then
    overrides ``cached_features``, ``cache_problems`` and ``cache_identity``, and its module
    ``ContentEncoder.cache_split`` (``mvrec_dist.models.item_encoders``).
    """

    @property
    def content_kind(self) -> ContentKind:
        """The kind of content the encoder reads from the dataset's content split."""
        raise NotImplementedError(f"{type(self).__name__} must say which content kind it reads")

    @property
    def content_shape(self) -> tuple[int, ...] | None:
        """Per-item shape of that content the encoder takes (checked against the store), None for any."""
        return None

    @property
    def cached_features(self) -> bool:
        """Whether the encoder's frozen part is replaced by its stored output (a feature store)."""
        return False

    def source_problems(self, section: dict) -> list[str]:
        """Why the dataset's content section (its manifest entry) was written in a way this encoder
        cannot read, beyond kind and shape (text: another tokenizer). Empty by default."""
        return []

    def cache_problems(self) -> list[str]:
        """Why this encoder has no frozen part whose output could be cached (empty when it has one).

        Returns:
            ``"<field>: <message>"`` problems, keys relative to the encoder's config section.
        """
        return [f"name: {getattr(self, 'name', type(self).__name__)!r} has no frozen part whose output "
                "could be cached"]

    def cache_identity(self) -> dict[str, Any]:
        """This config's part of a feature store's identity (``mvrec_dist.features.identity``).

        Returns:
            The settings that fix the frozen part's input, each under its own key (a store whose
            value differs is refused), and ``encoder``: the settings for reference. A variant with
            a switch that turns caching on leaves it out of ``encoder`` (the same features serve
            both settings of it; video: ``cached_trunk``).
        """
        shape = self.content_shape
        return {"content_shape": None if shape is None else list(shape), "encoder": config_to_dict(self)}


# ---------------------------------------------------------------- the model
@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A sequential recommender: item tower + user encoder + loss."""

    item_tower: Literal["id", "content", "id+content"] = setting(
        "id", doc="IDRec ('id'), VideoRec ('content') or VIDRec ('id+content') item representations.")
    embedding_dim: int = setting(64, doc="Width D of item representations and user states.")
    fusion: Literal["sum", "concat"] = setting("sum", doc="How 'id+content' combines the two: sum, or concat then linear.")
    id_dropout: float = setting(
        0.0, doc="'id+content' only: in training, each unique item of a step that has content loses its ID "
        "embedding with this probability (it is then represented by its content alone), so the fused tower "
        "learns to stand on content for items whose ID rows carry nothing. 0 = off.")
    cold_items: Literal["fused", "content"] = setting(
        "fused", doc="'id+content' only: how items never seen in the train split are represented, in training "
        "(as negatives) and evaluation alike: 'fused' like every other item, or 'content' by their content "
        "alone (their ID rows never had a positive example, so they hold only noise pushed down as negatives).")
    init_std: float = setting(0.02, doc="Std of the normal init of ID embeddings and dense weights.")
    user_encoder: UserEncoderConfig = setting(factory=SASRecConfig, doc="User encoder; 'name' picks sasrec, gru4rec or nextitnet.")
    loss: LossConfig = setting(factory=FullSoftmaxConfig, doc="Training loss; 'name' picks full_softmax, inbatch_softmax or sampled_softmax.")
    content_encoder: ContentEncoderConfig | None = setting(None, doc="Item-content encoder for 'content' and 'id+content' towers.")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.embedding_dim >= 2, "embedding_dim", f"must be >= 2, got {self.embedding_dim}")
        p.check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")
        heads = getattr(self.user_encoder, "num_heads", 1)
        p.check(self.embedding_dim % heads == 0, "user_encoder.num_heads",
                f"{heads} heads do not divide embedding_dim {self.embedding_dim}")
        p.check(not self.uses_content or self.content_encoder is not None, "content_encoder",
                f"item_tower '{self.item_tower}' needs a content_encoder")
        p.check(self.uses_content or self.content_encoder is None, "content_encoder",
                "is set but item_tower is 'id'; set item_tower to 'content' or 'id+content'")
        fallback = self.id_dropout > 0 or self.cold_items != "fused"
        p.check(0.0 <= self.id_dropout < 1.0, "id_dropout", f"must be in [0, 1), got {self.id_dropout}")
        p.check(self.cold_items in ("fused", "content"), "cold_items",
                f"must be 'fused' or 'content', got {self.cold_items!r}")
        p.check(not fallback or self.item_tower == "id+content", "id_dropout" if self.id_dropout > 0 else "cold_items",
                f"falls back from the ID embedding to content, so it needs item_tower 'id+content', got "
                f"{self.item_tower!r}")
        # Cached features make every item's representation one pass of the trainable head over stored
        # features (text frozen + adapter: a [384] vector an item), so the full softmax stays
        # affordable; a live encoder would run over all N items every step.
        p.check(not (self.uses_content and not self.uses_cached_features and isinstance(self.loss, FullSoftmaxConfig)),
                "loss.name", "full_softmax needs every item's representation each step; with a live content encoder "
                "use inbatch_softmax or sampled_softmax (or cache the frozen part's features)")
        p.raise_if_any()

    # The item-tower mode is asked through these properties, never compared as a string elsewhere.
    @property
    def uses_id_table(self) -> bool:
        """Whether items have a row in the ID table ('id' and 'id+content')."""
        return self.item_tower != "content"

    @property
    def uses_content(self) -> bool:
        """Whether the item tower reads item content through a content encoder ('content', 'id+content')."""
        return self.item_tower != "id"

    @property
    def uses_cached_features(self) -> bool:
        """Whether that content is the encoder's cached frozen-part output (a feature store)."""
        return self.uses_content and self.content_encoder is not None and self.content_encoder.cached_features

    @property
    def content_kind(self) -> ContentKind | None:
        """What the item tower's store must hold: None (ID only), 'features' (cached), else the encoder's kind."""
        if not self.uses_content or self.content_encoder is None:
            return None
        return "features" if self.uses_cached_features else self.content_encoder.content_kind
