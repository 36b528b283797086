"""The content-encoder protocol: what the item tower, the feature cache and training call on any encoder.

A content encoder turns one kind of item content (``ContentKind``: video frames, token ids,
precomputed features) into ``[U, out_dim]`` item features. It subclasses ``ContentEncoder`` and
provides:

* ``out_dim: int``, the width of its output;
* ``prepare(content) -> input``: the content as the store serves it (``ContentStore.gather``, moved to
  the device) turned into ``forward``'s input, inside the model, so the data path moves the
  compact stored form (video: uint8 frames normalised to float; default: unchanged);
* ``forward(input) -> [U, out_dim]``;
* for "frozen encoder -> cached features" (the config's ``cached_features``): ``cache_split()``,
  a ``(frozen, head)`` pair of modules sharing the encoder's parameters with
  ``head(frozen(x)) == forward(x)``, where ``frozen`` never trains, and ``cache_identity()``,
  what determines ``frozen``'s output (weights digest, cut). ``cached_features`` below runs
  ``frozen`` once per item (``mvrec_dist.features.trunk_cache``); the item tower then runs only
  ``head`` on the stored output. The defaults say the encoder has no such part.

The config side of the protocol is ``mvrec_dist.config.model.ContentEncoderConfig``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ContentEncoder", "cached_features", "cached_feature_shape"]


class ContentEncoder(nn.Module):
    """Base of the item-content encoders (see the module docstring for the protocol).

    Args:
        out_dim: Width of the item feature the encoder returns.
    """

    def __init__(self, *, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def prepare(self, content: Tensor) -> Tensor:
        """``forward``'s input from content as stored: ``[U, *item shape]`` of the store's dtype."""
        return content

    def cache_split(self) -> tuple[nn.Module, nn.Module]:
        """``(frozen, head)`` with ``head(frozen(x)) == forward(x)``; only ``head`` trains.

        Raises:
            ValueError: when the encoder has no frozen part (the default).
        """
        raise ValueError(f"{type(self).__name__} has no frozen part whose output could be cached")

    def cache_identity(self) -> dict[str, Any]:
        """JSON-able values that determine the frozen part's output (recorded in a feature store).

        Raises:
            ValueError: when the encoder has no frozen part (the default).
        """
        raise ValueError(f"{type(self).__name__} has no frozen part whose output could be cached")


def _placement(encoder: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The encoder's compute dtype and device (those of its parameters)."""
    param = next(encoder.parameters(), None)
    return (torch.float32, torch.device("cpu")) if param is None else (param.dtype, param.device)


@torch.no_grad()
def cached_features(encoder: ContentEncoder, content: Tensor) -> Tensor:
    """The frozen part's output for stored content (eval mode: frozen BatchNorm uses running statistics).

    Args:
        encoder: A content encoder with a frozen part (video: after ``apply_finetune``).
        content: ``[U, *item shape]`` as the content store serves it, on the encoder's device.

    Returns:
        ``float32 [U, ...]``: what a feature store holds, and what the item tower in cached mode takes.
    """
    frozen, _ = encoder.cache_split()
    was_training = encoder.training
    encoder.eval()
    try:
        x = encoder.prepare(content)
        if x.is_floating_point():
            x = x.to(_placement(encoder)[0])
        return frozen(x).float()
    finally:
        encoder.train(was_training)


def cached_feature_shape(encoder: ContentEncoder, item_shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, ...]:
    """Shape of one item's cached features (without the item dimension).

    Args:
        encoder: As ``cached_features``.
        item_shape: One item's stored content shape (video: ``(F, S, S, 3)``).
        dtype: The stored content's dtype (video: ``torch.uint8``).

    Returns:
        E.g. ``(128, 3, 28, 28)`` for R3D-18 top-2 at 5x224 (layer2's output).
    """
    device = _placement(encoder)[1]
    return tuple(cached_features(encoder, torch.zeros((1, *item_shape), dtype=dtype, device=device)).shape[1:])
