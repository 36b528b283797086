"""R3D-18 and R(2+1)D-18 video ResNets.

Reference: Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition",
CVPR 2018, as released in torchvision (``torchvision/models/video/resnet.py``: ``r3d_18``,
``r2plus1d_18``, Kinetics-400 weights). Module names and the R(2+1)D mid-plane formula follow that
file, so its checkpoints load through an identity key map (``torchvision_key_map``). The
MicroLens paper's "r3d18" video encoder is torchvision's ``r3d_18`` with ``fc`` replaced by a
linear layer to the embedding size; its topT setting (``video_freeze_paras_before = 30``) freezes
the stem, layer1 and layer2 and trains layer3 and layer4, i.e. ``top_blocks = 2`` here.

Deviations:

* No classification layer: the encoder returns the pooled ``[U, widths[-1]]`` feature; the item
  tower's projection plays the role of MicroLens' replaced ``fc`` (so the checkpoint's ``fc`` is
  ignored, and listed as such when loading).
* Widths, stage depths and the stem width are configurable so tests can build tiny models;
  the defaults are the 18-layer models.
* Frozen blocks keep BatchNorm in eval mode (``encoder.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from mvrec_dist.config.content import R2Plus1D18Config, R3D18Config, VideoResNetConfig
from mvrec_dist.models.item_encoders.video.checkpoints import KeyMap, load_public_checkpoint
from mvrec_dist.models.item_encoders.video.encoder import KINETICS_MEAN, KINETICS_STD, VideoEncoder
from mvrec_dist.models.item_encoders.video.finetune import apply_finetune
from mvrec_dist.models.registry import CONTENT_ENCODERS

__all__ = ["VideoResNet", "r3d18", "r2plus1d18", "torchvision_key_map"]

ConvBuilder = Callable[[int, int, int, int], nn.Module]


def _conv3d(inplanes: int, planes: int, midplanes: int, stride: int) -> nn.Module:
    del midplanes  # only the factored convolution has a middle width
    return nn.Conv3d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv2plus1d(inplanes: int, planes: int, midplanes: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(inplanes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(midplanes),
        nn.ReLU(inplace=True),
        nn.Conv3d(midplanes, planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


class _BasicBlock(nn.Module):
    """Two 3x3x3 (or (2+1)D) convolutions with a residual; torchvision ``BasicBlock`` names."""

    def __init__(self, inplanes: int, planes: int, conv: ConvBuilder, stride: int) -> None:
        super().__init__()
        # torchvision sizes both (2+1)D convolutions of a block from the block's in/out widths, so
        # that the factored block has about as many parameters as a full 3D one.
        midplanes = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(conv(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv(planes, planes, midplanes, 1), nn.BatchNorm3d(planes))
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv3d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)  # U,C,T,H,W


class _ToClip(nn.Module):
    """``[U, F, 3, S, S]`` -> ``[U, 3, F, S, S]``, the Conv3d layout."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


class _GlobalPool(nn.Module):
    """``[U, C, T, H, W]`` -> ``[U, C]`` mean over time and space (torchvision ``avgpool``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3, 4))


class VideoResNet(VideoEncoder):
    """An 18-layer-style video ResNet: stem, residual stages ``layer1..layerN``, global mean.

    Args:
        conv: ``'3d'`` (R3D: 3x3x3 convolutions) or ``'2plus1d'`` (R(2+1)D: 1x3x3 then 3x1x1).
        widths: Channels of each stage.
        layers: Basic blocks per stage.
        stem_width: Channels out of the stem.
        stem_mid_width: Channels between the (2+1)D stem's two convolutions (``'2plus1d'`` only).
    """

    def __init__(self, *, conv: str, widths: Sequence[int], layers: Sequence[int], stem_width: int,
                 stem_mid_width: int = 45) -> None:
        super().__init__(out_dim=widths[-1], mean=KINETICS_MEAN, std=KINETICS_STD)
        if conv == "3d":
            builder: ConvBuilder = _conv3d
            self.stem = nn.Sequential(
                nn.Conv3d(3, stem_width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                nn.BatchNorm3d(stem_width), nn.ReLU(inplace=True))
        elif conv == "2plus1d":
            builder = _conv2plus1d
            self.stem = nn.Sequential(
                nn.Conv3d(3, stem_mid_width, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
                nn.BatchNorm3d(stem_mid_width), nn.ReLU(inplace=True),
                nn.Conv3d(stem_mid_width, stem_width, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False),
                nn.BatchNorm3d(stem_width), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"VideoResNet: conv must be '3d' or '2plus1d', got {conv!r}")
        self.num_stages = len(widths)
        inplanes = stem_width
        for i, (planes, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            stage = [_BasicBlock(inplanes, planes, builder, stride)]
            stage += [_BasicBlock(planes, planes, builder, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self._to_clip = _ToClip()
        self._pool = _GlobalPool()
        _init_like_torchvision(self)

    def blocks(self) -> list[nn.Module]:
        """``[stem, layer1, ..., layerN]``."""
        return [self.stem] + [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def stages(self) -> list[nn.Module]:
        """Layout change, the blocks, global mean: ``[U, F, 3, S, S] -> [U, widths[-1]]``."""
        return [self._to_clip, *self.blocks(), self._pool]


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def torchvision_key_map(model: nn.Module) -> KeyMap:
    """Key map of torchvision ``resnet``-family checkpoints: identical names, the classifier ignored.

    Args:
        model: A ``VideoResNet`` (whose names mirror torchvision's).

    Returns:
        The ``KeyMap``: every state-dict key from the same key; ``fc.*`` ignored;
        BatchNorm ``num_batches_tracked`` optional (absent from old torchvision files).
    """
    keys = list(model.state_dict())
    return KeyMap(layout="torchvision",
                  sources={k: (k,) for k in keys},
                  ignored={r"fc\.(weight|bias)": "classification layer; the item tower projects the pooled feature"},
                  optional=frozenset(k for k in keys if k.endswith("num_batches_tracked")))


def _build(cfg: VideoResNetConfig, conv: str, **extra: int) -> VideoResNet:
    model = VideoResNet(conv=conv, widths=cfg.widths, layers=cfg.layers, stem_width=cfg.stem_width, **extra)
    if cfg.checkpoint is not None:
        load_public_checkpoint(model, cfg.checkpoint, torchvision_key_map(model))
    apply_finetune(model, cfg.finetune, cfg.top_blocks)
    return model


@CONTENT_ENCODERS.register(R3D18Config)
def r3d18(cfg: R3D18Config) -> VideoResNet:
    """Build R3D-18 from its config (weights from ``cfg.checkpoint`` if set, fine-tuning mode applied).

    Args:
        cfg: The ``r3d18`` variant config.

    Returns:
        The encoder, ``out_dim = cfg.widths[-1]``.
    """
    return _build(cfg, "3d")


@CONTENT_ENCODERS.register(R2Plus1D18Config)
def r2plus1d18(cfg: R2Plus1D18Config) -> VideoResNet:
    """Build R(2+1)D-18 from its config (weights from ``cfg.checkpoint`` if set, fine-tuning mode applied).

    Args:
        cfg: The ``r2plus1d18`` variant config.

    Returns:
        The encoder, ``out_dim = cfg.widths[-1]``.
    """
    return _build(cfg, "2plus1d", stem_mid_width=cfg.stem_mid_width)
