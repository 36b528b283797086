"""The frozen trunk of a video encoder as a function: its output, its output shape, its identity.

With ``finetune`` 'frozen' or 'top' the bottom ``frozen_blocks`` blocks never change, so their
output for an item is a constant that can be computed once and stored (``mvrec_dist.features``);
training then runs only the top (``ItemTower(cached_features=True)``). ``trunk_digest`` names the
exact function the stored features came from (weights, buffers, input normalisation, cut point),
so a training run can refuse features that a different trunk computed. ``trunk_features`` and
``trunk_output_shape`` are the video names of the generic ``cached_features`` /
``cached_feature_shape`` (``VideoEncoder.cache_split`` is ``trunk_and_top``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mvrec_dist.models.item_encoders.base import cached_feature_shape, cached_features

if TYPE_CHECKING:  # encoder.py imports this module (its cache_split is the cut defined here)
    from mvrec_dist.models.item_encoders.video.encoder import VideoEncoder

__all__ = ["trunk_and_top", "trunk_digest", "trunk_output_shape", "trunk_features"]


def trunk_and_top(encoder: VideoEncoder) -> tuple[nn.Module, nn.Module, int]:
    """Split at the fine-tuning cut: ``(trunk, top, K)`` with K the trainable top blocks.

    Args:
        encoder: A video encoder after ``apply_finetune``.

    Returns:
        The trunk (frozen blocks and the stages before them), the top, and K.
    """
    k = len(encoder.blocks()) - encoder.frozen_blocks
    trunk, top = encoder.split(k)
    return trunk, top, k


def trunk_digest(encoder: VideoEncoder) -> str:
    """sha256 of what determines the trunk's output: class, cut, frozen weights and buffers, normalisation.

    Args:
        encoder: A video encoder after ``apply_finetune`` (any device or dtype: tensors are hashed
            as float32 on CPU, so a bf16 copy of the same weights hashes differently, on purpose).

    Returns:
        Hex digest.
    """
    h = hashlib.sha256()
    blocks = encoder.blocks()
    h.update(f"{type(encoder).__name__}|{encoder.frozen_blocks}/{len(blocks)}".encode())
    named = [("pixel_mean", encoder.pixel_mean), ("pixel_std", encoder.pixel_std)]
    for i, block in enumerate(blocks[:encoder.frozen_blocks]):
        named += [(f"{i}.{k}", v) for k, v in sorted(block.state_dict().items())]
    for name, t in named:
        t = t.detach().cpu().contiguous()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def trunk_features(encoder: VideoEncoder, frames: Tensor) -> Tensor:
    """The trunk's output for uint8 frames (``cached_features`` of a video encoder).

    Args:
        encoder: A video encoder after ``apply_finetune``.
        frames: ``uint8 [U, F, S, S, 3]`` on the encoder's device.

    Returns:
        ``[U, ...]`` float32 trunk features (what ``ItemTower`` in cached mode takes).
    """
    return cached_features(encoder, frames)


def trunk_output_shape(encoder: VideoEncoder, frames: int, size: int) -> tuple[int, ...]:
    """Shape of one item's trunk output (without the item dimension).

    Args:
        encoder: A video encoder after ``apply_finetune``.
        frames: F.
        size: S.

    Returns:
        E.g. ``(128, 3, 28, 28)`` for R3D-18 top-2 at 5x224 (layer2's output).
    """
    return cached_feature_shape(encoder, (frames, size, size, 3), torch.uint8)
