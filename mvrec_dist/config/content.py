"""Item-content encoder variants (video encoders, title text).

Each variant subclasses ``ContentEncoderConfig`` with a ``name`` tag; the builder registered for
it in ``mvrec_dist.models.registry`` turns it into a module. The video encoders share
``VideoEncoderConfig`` (fine-tuning mode, checkpoint, input frames); their defaults are the
public models' real sizes, and the width/depth fields exist so tests can build tiny versions.

Fine-tuning modes follow the MicroLens paper's Table 6: ``frozen`` (no encoder parameter
trains), ``top`` (only the top ``top_blocks`` blocks train; the paper's "topT" trains the last 2
stages of R3D-18 and the last 2 transformer layers of VideoMAE) and ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mvrec_dist.config.fields import Problems, setting
from mvrec_dist.config.load import config_to_dict
from mvrec_dist.config.model import ContentEncoderConfig, ContentKind

__all__ = ["VideoEncoderConfig", "VideoResNetConfig", "R3D18Config", "R2Plus1D18Config", "FrameCNNConfig",
           "VideoMAEConfig"]


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

    @property
    def num_blocks(self) -> int:
        """The stem plus one block per residual stage."""
        return 1 + len(self.layers)

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
