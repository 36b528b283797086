"""Item-content encoder variants (video encoders, title text).

Each variant subclasses ``ContentEncoderConfig`` with a ``name`` tag; the builder registered for
it in ``mvrec_dist.models.registry`` turns it into a module. The video encoders share
``VideoEncoderConfig`` (fine-tuning mode, checkpoint, input frames); their defaults are the
public models' real sizes, and the width/depth fields exist so tests can build tiny versions.

Fine-tuning modes follow the MicroLens paper's Table 6: ``frozen`` (no encoder parameter
trains), ``top`` (only the top ``top_blocks`` blocks train; the paper's "topT" trains the last 2
stages of R3D-18 and the last 2 transformer layers of VideoMAE) and ``full``.

The title-text encoder (``TextEncoderConfig``, name ``minilm``) reads the ``[T]`` token ids that
ingestion wrote with the pretrained model's tokenizer, and is a BERT sentence encoder whose
defaults are sentence-transformers/all-MiniLM-L6-v2 (weights from an installed package,
``mvrec_dist.data.pretrained_text``); its ``top_blocks`` counts transformer layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mvrec_dist.config.fields import Problems, setting
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.config.model import ContentEncoderConfig, ContentKind
from mvrec_dist.data.pretrained_text import PRETRAINED_TEXT

__all__ = ["VideoEncoderConfig", "VideoResNetConfig", "R3D18Config", "R2Plus1D18Config", "FrameCNNConfig",
           "VideoMAEConfig", "TextEncoderConfig"]


@dataclass(frozen=True, kw_only=True)
class VideoEncoderConfig(ContentEncoderConfig):
    """Settings every video encoder shares (a base: pick a variant with ``name``)."""

    finetune: Literal["frozen", "top", "full"] = setting(
        "top", doc="Which encoder blocks train: none ('frozen'), the top top_blocks ('top'), or all ('full').")
    top_blocks: int = setting(2, doc="Trainable top blocks in 'top' mode (paper topT: 2).")
    checkpoint: str | None = setting(
        None, doc="Local file with public pretrained weights in the variant's layout; none = random init.")
    cached_trunk: bool = setting(
        False, doc="Train the top on stored trunk features instead of running the frozen trunk (frozen/top only).")
    frames: int = setting(5, doc="Frames F per item the encoder takes (paper: 5).")
    size: int = setting(224, doc="Frame side S in pixels (paper: 224).")

    @property
    def num_blocks(self) -> int:
        """Blocks the fine-tuning modes count, bottom to top (each variant defines its own)."""
        raise NotImplementedError

    @property
    def content_kind(self) -> ContentKind:
        """Video encoders read decoded frames."""
        return "frames"

    @property
    def content_shape(self) -> tuple[int, ...]:
        """``[F, S, S, 3]``: the frames the dataset's content split must hold."""
        return (self.frames, self.size, self.size, 3)

    @property
    def cached_features(self) -> bool:
        """The frozen trunk's output comes from a feature store (``cached_trunk``)."""
        return self.cached_trunk

    def cache_problems(self) -> list[str]:
        """A trunk exists to cache unless every block trains."""
        if self.finetune == "full":
            return ["finetune: 'full' trains every block, so there is no frozen trunk to cache; use 'frozen' or 'top'"]
        return []

    def cache_identity(self) -> dict[str, Any]:
        """Frames and size fix the trunk's input (the keys feature stores have always recorded)."""
        return {"frames": self.frames, "size": self.size,
                "encoder": {k: v for k, v in config_to_dict(self).items() if k != "cached_trunk"}}

    def _common_checks(self, p: Problems) -> None:
        p.check(self.frames >= 1, "frames", f"must be >= 1, got {self.frames}")
        p.check(self.size >= 8, "size", f"must be >= 8, got {self.size}")
        p.check(self.checkpoint is None or bool(self.checkpoint.strip()), "checkpoint",
                "must be a file path or null, got an empty string")
        p.check(not self.cached_trunk or self.finetune != "full", "cached_trunk",
                "needs finetune 'frozen' or 'top': in 'full' mode every block trains, so there is no fixed trunk")

    def _block_checks(self, p: Problems) -> None:
        if self.finetune == "top":
            p.check(1 <= self.top_blocks <= self.num_blocks, "top_blocks",
                    f"must be in [1, {self.num_blocks}] (this encoder has {self.num_blocks} blocks), "
                    f"got {self.top_blocks}")


@dataclass(frozen=True, kw_only=True)
class VideoResNetConfig(VideoEncoderConfig):
    """Settings of the 18-layer video ResNets (torchvision ``VideoResNet`` layout)."""

    widths: tuple[int, ...] = setting((64, 128, 256, 512), doc="Channels of each residual stage (R3D-18: 64,128,256,512).")
    layers: tuple[int, ...] = setting((2, 2, 2, 2), doc="Basic blocks per stage (R3D-18: 2,2,2,2).")
    stem_width: int = setting(64, doc="Channels out of the stem (torchvision: 64).")

    @property
    def num_blocks(self) -> int:
        """The stem plus one block per residual stage."""
        return 1 + len(self.layers)

    def _resnet_checks(self, p: Problems) -> None:
        self._common_checks(p)
        p.check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), "widths",
                f"must be a non-empty list of positive ints, got {list(self.widths)}")
        p.check(len(self.layers) == len(self.widths) and all(n >= 1 for n in self.layers), "layers",
                f"must give a positive block count for each of the {len(self.widths)} widths, got {list(self.layers)}")
        p.check(self.stem_width >= 1, "stem_width", f"must be >= 1, got {self.stem_width}")
        self._block_checks(p)


@dataclass(frozen=True, kw_only=True)
class R3D18Config(VideoResNetConfig):
    """R3D-18 (Tran et al. 2018): 3x3x3 convolutions throughout; torchvision ``r3d_18`` checkpoints."""

    name: Literal["r3d18"] = setting("r3d18", doc="Selects R3D-18.")

    def __post_init__(self) -> None:
        p = Problems()
        self._resnet_checks(p)
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class R2Plus1D18Config(VideoResNetConfig):
    """R(2+1)D-18 (Tran et al. 2018): 3D convolutions factored into 2D spatial + 1D temporal."""

    name: Literal["r2plus1d18"] = setting("r2plus1d18", doc="Selects R(2+1)D-18.")
    stem_mid_width: int = setting(45, doc="Channels between the stem's spatial and temporal convolutions (torchvision: 45).")

    def __post_init__(self) -> None:
        p = Problems()
        self._resnet_checks(p)
        p.check(self.stem_mid_width >= 1, "stem_mid_width", f"must be >= 1, got {self.stem_mid_width}")
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class FrameCNNConfig(VideoEncoderConfig):
    """A 2D ResNet-18 applied to each frame, features averaged over frames (torchvision ``resnet18`` layout)."""

    name: Literal["frame_cnn"] = setting("frame_cnn", doc="Selects the per-frame 2D CNN with temporal pooling.")
    widths: tuple[int, ...] = setting((64, 128, 256, 512), doc="Channels of each residual stage (ResNet-18: 64,128,256,512).")
    layers: tuple[int, ...] = setting((2, 2, 2, 2), doc="Basic blocks per stage (ResNet-18: 2,2,2,2).")
    stem_width: int = setting(64, doc="Channels out of the 7x7 stem convolution (ResNet: 64).")
    frame_pool: Literal["mean", "none"] = setting(
        "mean", doc="'mean': one vector per item, averaged over frames (what item towers take); 'none': one "
                    "spatially pooled vector per frame, [F, C] per item, for per-frame feature stores "
                    "(MMRA's frame input; cached with finetune=frozen, never an item tower's input).")

    @property
    def num_blocks(self) -> int:
        """The stem plus one block per residual stage."""
        return 1 + len(self.layers)

    def cache_problems(self) -> list[str]:
        """Per-frame features are the whole encoder's output: only a frozen encoder has them as its trunk."""
        problems = super().cache_problems()
        if self.frame_pool == "none" and self.finetune != "frozen":
            problems.append(f"frame_pool: 'none' caches the whole encoder's per-frame output, which needs "
                            f"finetune='frozen' (got {self.finetune!r}: its cut is inside the CNN)")
        return problems

    def cache_identity(self) -> dict[str, Any]:
        """As every video encoder's; ``frame_pool`` only when it is not the default, so stores cached
        before the setting existed keep their identity."""
        ident = super().cache_identity()
        if self.frame_pool == "mean":
            ident["encoder"].pop("frame_pool", None)
        return ident

    def __post_init__(self) -> None:
        p = Problems()
        self._common_checks(p)
        p.check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), "widths",
                f"must be a non-empty list of positive ints, got {list(self.widths)}")
        p.check(len(self.layers) == len(self.widths) and all(n >= 1 for n in self.layers), "layers",
                f"must give a positive block count for each of the {len(self.widths)} widths, got {list(self.layers)}")
        p.check(self.stem_width >= 1, "stem_width", f"must be >= 1, got {self.stem_width}")
        self._block_checks(p)
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class VideoMAEConfig(VideoEncoderConfig):
    """VideoMAE ViT (Tong et al. 2022): tubelet patches, fixed sin-cos positions, pre-norm blocks, token mean."""

    name: Literal["videomae"] = setting("videomae", doc="Selects the VideoMAE video transformer.")
    embed_dim: int = setting(768, doc="Token width (ViT-B: 768).")
    depth: int = setting(12, doc="Transformer layers (ViT-B: 12).")
    num_heads: int = setting(12, doc="Attention heads (ViT-B: 12); must divide embed_dim.")
    mlp_dim: int = setting(3072, doc="Hidden width of each MLP (ViT-B: 3072).")
    patch: int = setting(16, doc="Spatial patch side in pixels (ViT-B/16: 16); must divide size.")
    tubelet: int = setting(2, doc="Frames per tubelet; trailing frames that fill no tubelet are not seen (as HF with 5 frames).")
    layer_norm_eps: float = setting(1e-12, doc="LayerNorm epsilon (HF VideoMAE: 1e-12; the MCG release: 1e-6).")
    checkpoint_layout: Literal["hf", "mcg"] = setting(
        "hf", doc="Key layout of checkpoint: HF transformers ('hf', the paper's) or the MCG-NJU/VideoMAE release ('mcg').")

    @property
    def num_blocks(self) -> int:
        """The patch embedding plus one block per transformer layer."""
        return 1 + self.depth

    def __post_init__(self) -> None:
        p = Problems()
        self._common_checks(p)
        p.check(self.embed_dim >= 1 and self.num_heads >= 1 and self.embed_dim % self.num_heads == 0, "num_heads",
                f"{self.num_heads} heads must divide embed_dim {self.embed_dim}")
        p.check(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        p.check(self.mlp_dim >= 1, "mlp_dim", f"must be >= 1, got {self.mlp_dim}")
        p.check(self.patch >= 1 and self.size % self.patch == 0, "patch",
                f"must divide size {self.size}, got {self.patch}")
        p.check(1 <= self.tubelet <= self.frames, "tubelet", f"must be in [1, frames={self.frames}], got {self.tubelet}")
        p.check(self.layer_norm_eps > 0, "layer_norm_eps", f"must be > 0, got {self.layer_norm_eps}")
        self._block_checks(p)
        p.raise_if_any()


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig(ContentEncoderConfig):
    """A BERT sentence encoder over title token ids (sentence-transformers/all-MiniLM-L6-v2 by default).

    The architecture fields default to all-MiniLM-L6-v2's ``config.json``; they exist so tests can
    build tiny random models (``pretrained: null``). With ``pretrained`` set, the builder refuses
    sizes that differ from the package's ``config.json``.
    """

    name: Literal["minilm"] = setting("minilm", doc="Selects the BERT (MiniLM) title-text encoder.")
    pretrained: str | None = setting(
        "all-minilm-l6-v2", doc="Pretrained text model (mvrec_dist.data.pretrained_text entry); null = random init (tiny CI models).")
    finetune: Literal["frozen", "top", "full"] = setting(
        "frozen", doc="Which BERT layers train: none ('frozen'), the top top_blocks ('top'), or all ('full').")
    top_blocks: int = setting(2, doc="Transformer layers that train in 'top' mode (the top ones); in [1, num_layers].")
    cached_trunk: bool = setting(
        False, doc="Train the head on stored outputs of the frozen part instead of running it (frozen/top only).")
    max_tokens: int = setting(48, doc="T, token ids per title including [CLS] and [SEP] (what ingestion wrote).")
    pooling: Literal["mean", "cls"] = setting(
        "mean", doc="Sentence vector: mean over non-padding tokens (sentence-transformers) or the [CLS] token (MicroLens run_text.py).")
    normalize: bool = setting(True, doc="L2-normalise the pooled vector (as the sentence-transformers model does).")
    adapter_hidden: int = setting(
        0, doc="Hidden width of a trainable residual MLP on the sentence vector (starts as identity); 0 = none.")
    dropout: float = setting(0.1, doc="Dropout of the BERT layers that train (hidden states and attention probabilities; BERT: 0.1).")
    vocab_size: int = setting(30522, doc="Token vocabulary (BERT uncased: 30522).")
    hidden_size: int = setting(384, doc="Hidden width H, also the encoder's output width (MiniLM-L6: 384).")
    num_layers: int = setting(6, doc="Transformer layers (MiniLM-L6: 6).")
    num_heads: int = setting(12, doc="Attention heads (MiniLM-L6: 12); must divide hidden_size.")
    intermediate_size: int = setting(1536, doc="Feed-forward width of each layer (MiniLM-L6: 1536).")
    max_positions: int = setting(512, doc="Learned absolute positions (BERT: 512); max_tokens may not exceed it.")
    type_vocab_size: int = setting(2, doc="Token-type (segment) vocabulary (BERT: 2; titles use type 0).")
    layer_norm_eps: float = setting(1e-12, doc="LayerNorm epsilon (BERT: 1e-12).")

    @property
    def content_kind(self) -> ContentKind:
        """The encoder reads token ids (the dataset's text content)."""
        return "tokens"

    @property
    def content_shape(self) -> tuple[int, ...]:
        """``[T]``: the token ids per title the dataset's text content must hold."""
        return (self.max_tokens,)

    @property
    def cached_features(self) -> bool:
        """The frozen part's output comes from a feature store (``cached_trunk``)."""
        return self.cached_trunk

    def source_problems(self, section: dict) -> list[str]:
        """Token ids index the tokenizer's vocabulary: a pretrained encoder reads only ids its own tokenizer wrote.

        Args:
            section: The dataset manifest's ``text`` section (its ``tokenizer``: name, package,
                version, ``tokenizer.json`` sha256, ``max_tokens``, ``pad_id``).

        Returns:
            Problems (empty when the ids fit). A random-init encoder (``pretrained: null``) takes
            any tokenizer's ids, but still needs padding id 0.
        """
        tok = section.get("tokenizer") or {}
        problems = []
        if tok.get("pad_id", 0) != 0:
            problems.append(f"the dataset's token ids pad with {tok.get('pad_id')!r}; the encoder masks id 0 as padding")
        if self.pretrained is None:
            return problems
        entry = PRETRAINED_TEXT[self.pretrained]
        if tok.get("name") != self.pretrained:
            problems.append(f"pretrained {self.pretrained!r} reads ids of its own tokenizer, but the dataset's text was "
                            f"tokenised with {tok.get('name')!r}; re-ingest with text.tokenizer={self.pretrained} or "
                            "pick that model")
        elif (tok.get("package"), tok.get("version")) != (entry.distribution, entry.version):
            problems.append(f"the dataset's text was tokenised with {tok.get('package')}=={tok.get('version')}, the "
                            f"encoder's weights are {entry.distribution}=={entry.version}; re-ingest the text")
        return problems

    def cache_problems(self) -> list[str]:
        """A frozen part exists to cache unless every layer trains."""
        if self.finetune == "full":
            return ["finetune: 'full' trains every layer, so there is no frozen part to cache; use 'frozen' or 'top'"]
        return []

    def cache_identity(self) -> dict[str, Any]:
        """T fixes the frozen part's input; the settings (without the caching switch) are for reference."""
        return {"max_tokens": self.max_tokens,
                "encoder": {k: v for k, v in config_to_dict(self).items() if k != "cached_trunk"}}

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.pretrained is None or self.pretrained in PRETRAINED_TEXT, "pretrained",
                f"unknown pretrained text model {self.pretrained!r} (known: {', '.join(PRETRAINED_TEXT)}; "
                "null = random init)")
        p.check(not self.cached_trunk or self.finetune != "full", "cached_trunk",
                "needs finetune 'frozen' or 'top': in 'full' mode every layer trains, so there is no fixed part")
        if self.finetune == "top":
            p.check(1 <= self.top_blocks <= self.num_layers, "top_blocks",
                    f"must be in [1, {self.num_layers}] (this encoder has {self.num_layers} layers), got {self.top_blocks}")
        p.check(2 <= self.max_tokens <= self.max_positions, "max_tokens",
                f"must be in [2, max_positions={self.max_positions}] ([CLS] and [SEP] take two), got {self.max_tokens}")
        p.check(self.adapter_hidden >= 0, "adapter_hidden", f"must be >= 0 (0 = no adapter), got {self.adapter_hidden}")
        p.check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        for key in ("vocab_size", "hidden_size", "num_layers", "intermediate_size", "max_positions",
                    "type_vocab_size"):
            p.check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        p.check(self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "num_heads",
                f"{self.num_heads} heads must divide hidden_size {self.hidden_size}")
        p.check(self.layer_norm_eps > 0, "layer_norm_eps", f"must be > 0, got {self.layer_norm_eps}")
        p.raise_if_any()
