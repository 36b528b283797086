"""Frame-level 2D CNN with temporal pooling: a ResNet-18 on each frame, features averaged over frames.

Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, as released in
torchvision (``torchvision/models/resnet.py``, ``resnet18``, ImageNet weights). The video
baseline is the MicroLens paper's image-encoder family applied per frame with mean pooling over
the F frames (the "frame-level features + temporal pooling" baseline of video recommendation).

Deviations:

* The stem (``conv1``, ``bn1``, ReLU, max-pool) is one module ``stem`` so it is one fine-tuning
  block; its keys are ``stem.conv1.*`` / ``stem.bn1.*`` here and ``conv1.*`` / ``bn1.*`` in
  torchvision files (``torchvision_resnet_key_map`` renames them).
* No classification layer: the encoder returns the frame-averaged ``[U, widths[-1]]`` feature
  (or, with ``frame_pool='none'``, the per-frame ``[U, F, widths[-1]]`` features MMRA reads), and
  the checkpoint's ``fc`` is ignored (listed when loading).
* Widths, stage depths and the stem width are configurable for tiny test models.
* Frozen blocks keep BatchNorm in eval mode (``encoder.py``).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from mvrec_dist.config.content import FrameCNNConfig
from mvrec_dist.models.item_encoders.video.checkpoints import KeyMap, load_public_checkpoint
from mvrec_dist.models.item_encoders.video.encoder import IMAGENET_MEAN, IMAGENET_STD, VideoEncoder
from mvrec_dist.models.item_encoders.video.finetune import apply_finetune
from mvrec_dist.models.registry import CONTENT_ENCODERS

__all__ = ["FrameCNN", "frame_cnn", "torchvision_resnet_key_map"]


class _BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: two 3x3 convolutions with a residual."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + residual)  # N,C,H,W


class _Stem(nn.Module):
    """7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max-pool."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class _PerFrame(nn.Module):
    """Apply a 2D ``block`` to every frame: ``[U, F, C, H, W] -> [U, F, C', H', W']``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        u, f = x.shape[:2]
        y = self.block(x.flatten(0, 1))  # U*F,C',H',W'
        return y.unflatten(0, (u, f))


class _FramePool(nn.Module):
    """``[U, F, C, H, W] -> [U, C]``: spatial mean per frame, then mean over frames (``temporal``), or
    ``-> [U, F, C]``: the spatial mean only (per-frame features)."""

    def __init__(self, temporal: bool = True) -> None:
        super().__init__()
        self.temporal = temporal

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean(dim=(3, 4))
        return x.mean(dim=1) if self.temporal else x


class FrameCNN(VideoEncoder):
    """ResNet-18-style 2D CNN per frame, temporal mean pooling.

    Args:
        widths: Channels of each residual stage.
        layers: Basic blocks per stage.
        stem_width: Channels out of the stem convolution.
        frame_pool: ``'mean'`` (``[U, C]`` out) or ``'none'`` (``[U, F, C]``: per-frame feature stores).
    """

    def __init__(self, *, widths: Sequence[int], layers: Sequence[int], stem_width: int,
                 frame_pool: str = "mean") -> None:
        super().__init__(out_dim=widths[-1], mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.stem = _Stem(stem_width)
        self.num_stages = len(widths)
        inplanes = stem_width
        for i, (planes, n) in enumerate(zip(widths, layers)):
            stage = [_BasicBlock(inplanes, planes, 1 if i == 0 else 2)]
            stage += [_BasicBlock(planes, planes, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self._pool = _FramePool(temporal=frame_pool == "mean")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def blocks(self) -> list[nn.Module]:
        """``[stem, layer1, ..., layerN]``."""
        return [self.stem] + [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def stages(self) -> list[nn.Module]:
        """Each block applied per frame (wrapped, ``.block`` is the block), then frame pooling."""
        return [_PerFrame(b) for b in self.blocks()] + [self._pool]


def torchvision_resnet_key_map(model: FrameCNN) -> KeyMap:
    """Key map of torchvision ``resnet18``-style ImageNet checkpoints.

    Args:
        model: The ``FrameCNN`` to fill.

    Returns:
        ``stem.conv1.*`` / ``stem.bn1.*`` from ``conv1.*`` / ``bn1.*``, every other key from the same
        key; ``fc.*`` ignored; ``num_batches_tracked`` optional (absent from the original
        ``resnet18-5c106cde.pth``).
    """
    keys = list(model.state_dict())
    sources = {k: (k[len("stem."):] if k.startswith("stem.") else k,) for k in keys}
    return KeyMap(layout="torchvision-resnet", sources=sources,
                  ignored={r"fc\.(weight|bias)": "ImageNet classification layer; the item tower projects the pooled feature"},
                  optional=frozenset(k for k in keys if k.endswith("num_batches_tracked")))


@CONTENT_ENCODERS.register(FrameCNNConfig)
def frame_cnn(cfg: FrameCNNConfig) -> FrameCNN:
    """Build the per-frame CNN from its config (weights from ``cfg.checkpoint`` if set, fine-tuning applied).

    Args:
        cfg: The ``frame_cnn`` variant config.

    Returns:
        The encoder, ``out_dim = cfg.widths[-1]``.
    """
    model = FrameCNN(widths=cfg.widths, layers=cfg.layers, stem_width=cfg.stem_width, frame_pool=cfg.frame_pool)
    if cfg.checkpoint is not None:
        load_public_checkpoint(model, cfg.checkpoint, torchvision_resnet_key_map(model))
    apply_finetune(model, cfg.finetune, cfg.top_blocks)
    return model
