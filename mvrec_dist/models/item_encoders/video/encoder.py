"""The interface every video encoder implements, and what it gives for free.

A video encoder is a ``ContentEncoder`` (``mvrec_dist.models.item_encoders.base``) of kind
``'frames'``: ``prepare`` normalises stored uint8 frames, and ``cache_split`` is the fine-tuning
cut (the frozen trunk, and the top that trains).

A video encoder is a pipeline of *stages* (``stages()``): parameter-free adapters (layout
changes, pooling) and *blocks* (``blocks()``, the units the fine-tuning modes freeze, bottom to
top). ``forward`` runs the stages in order; ``split(K)`` cuts the same stage list before the K-th
block from the top, so ``top(trunk(x))`` runs exactly the operations of ``forward(x)``. That cut
is the basis of cached trunk features: the trunk's output is computed once and stored, and
training runs only the top.

Frozen blocks (``freeze_bottom``) stay in eval mode even when the encoder is put in training
mode: their BatchNorm layers use the pretrained running statistics instead of the batch's, and
never update them. That is what a frozen trunk means, and it is what makes a stored trunk
feature equal to the live one. (The MicroLens code only sets ``requires_grad=False``, so its
frozen BatchNorm statistics keep drifting with the training batches.)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mvrec_dist.models.item_encoders.base import ContentEncoder
from mvrec_dist.models.item_encoders.video.trunk import trunk_and_top, trunk_digest

__all__ = ["VideoEncoder", "IMAGENET_MEAN", "IMAGENET_STD", "KINETICS_MEAN", "KINETICS_STD"]

# Normalisation of the public checkpoints: torchvision's ImageNet classifiers and the VideoMAE
# releases (HF ``IMAGENET_DEFAULT_MEAN/STD``) use the ImageNet statistics; torchvision's Kinetics-400
# video models (``r3d_18``, ``r2plus1d_18``) use their own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class VideoEncoder(ContentEncoder):
    """Base of the video encoders: ``forward(frames[U, F, 3, S, S]) -> [U, out_dim]``.

    Subclasses build their modules, then implement ``stages()`` and ``blocks()``.

    Args:
        out_dim: Width of the item feature the encoder returns.
        mean: Per-channel RGB mean (in [0, 1]) of the public checkpoint's input normalisation.
        std: Per-channel RGB std of that normalisation.
    """

    def __init__(self, *, out_dim: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(out_dim=out_dim)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1),
                             persistent=False)
        self._frozen_blocks = 0

    # ---------------------------------------------------------------- to implement
    def stages(self) -> list[nn.Module]:
        """The forward pipeline, in order; each block appears once (or wrapped, with ``.block``)."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The fine-tuning units, bottom to top; together they own every parameter."""
        raise NotImplementedError

    # ---------------------------------------------------------------- interface
    def forward(self, frames: Tensor) -> Tensor:
        """Encode U items.

        Args:
            frames: ``float [U, F, 3, S, S]`` normalised frames (``prepare``).

        Returns:
            ``[U, out_dim]`` item features.
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"{type(self).__name__}: expected frames [U, F, 3, S, S], got {tuple(frames.shape)}")
        x = frames
        for stage in self.stages():
            x = stage(x)
        return x  # U,out_dim

    def prepare(self, frames: Tensor) -> Tensor:
        """Turn shipped uint8 frames into the normalised float input of ``forward``.

        ``x = (frames / 255 - mean) / std`` with the public checkpoint's mean and std, so the data
        path stores and moves uint8 (4x smaller) and normalises on the worker's device.

        Args:
            frames: ``uint8 [U, F, S, S, 3]`` RGB frames as stored in the content shards.

        Returns:
            ``float32 [U, F, 3, S, S]`` on the same device.
        """
        if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"{type(self).__name__}.prepare: expected uint8 [U, F, S, S, 3], got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        x = frames.permute(0, 1, 4, 2, 3).to(torch.float32).div_(255.0)  # U,F,3,S,S
        mean = self.pixel_mean.to(x.device)
        std = self.pixel_std.to(x.device)
        return (x - mean) / std  # U,F,3,S,S

    def split(self, top_blocks: int) -> tuple[nn.Module, nn.Module]:
        """Cut the encoder into a trunk and a top with ``top(trunk(x)) == forward(x)``.

        The modules are shared with the encoder (no copies). With ``top_blocks == 0`` the trunk is
        the whole encoder, pooling included, and the top is the identity.

        Args:
            top_blocks: K, the number of top blocks (``0 <= K <= len(blocks())``).

        Returns:
            ``(trunk, top)``: the trunk maps ``[U, F, 3, S, S]`` to a ``[U, ...]`` feature, the top
            maps that feature to ``[U, out_dim]``.
        """
        blocks = self.blocks()
        if not 0 <= top_blocks <= len(blocks):
            raise ValueError(f"{type(self).__name__}.split: top_blocks must be in [0, {len(blocks)}], got {top_blocks}")
        stages = self.stages()
        if top_blocks == 0:
            return nn.Sequential(*stages), nn.Sequential()
        first = blocks[len(blocks) - top_blocks]
        cut = next(i for i, s in enumerate(stages) if s is first or getattr(s, "block", None) is first)
        return nn.Sequential(*stages[:cut]), nn.Sequential(*stages[cut:])

    def cache_split(self) -> tuple[nn.Module, nn.Module]:
        """The trunk (frozen blocks) and the top (trainable blocks), cut where fine-tuning froze."""
        trunk, top, _ = trunk_and_top(self)
        return trunk, top

    def cache_identity(self) -> dict:
        """``trunk_digest`` and the cut (``top_blocks``): what the trunk's output depends on besides its input."""
        return {"trunk_digest": trunk_digest(self), "top_blocks": trunk_and_top(self)[2]}

    # ---------------------------------------------------------------- freezing
    @property
    def frozen_blocks(self) -> int:
        """How many bottom blocks are frozen."""
        return self._frozen_blocks

    def freeze_bottom(self, n: int) -> None:
        """Freeze blocks ``[0, n)`` (no gradients, eval mode) and unfreeze the rest.

        Args:
            n: Number of bottom blocks to freeze, ``0 <= n <= len(blocks())``.
        """
        blocks = self.blocks()
        if not 0 <= n <= len(blocks):
            raise ValueError(f"{type(self).__name__}.freeze_bottom: n must be in [0, {len(blocks)}], got {n}")
        for i, block in enumerate(blocks):
            for p in block.parameters():
                p.requires_grad_(i >= n)
        self._frozen_blocks = n
        self.train(self.training)

    def train(self, mode: bool = True) -> "VideoEncoder":
        """Set training mode; frozen blocks always stay in eval mode (see the module docstring)."""
        super().train(mode)
        for block in self.blocks()[:self._frozen_blocks]:
            block.eval()
        return self
