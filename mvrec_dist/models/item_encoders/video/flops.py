"""FLOPs per item of the video encoders, counted by ``torch.utils.flop_counter.FlopCounterMode``.

The counter sees the matmuls, convolutions and attention of one real forward (and backward) run
on one item, so the figures follow the module actually built, tiny or full size. Element-wise work
(BatchNorm, GELU, pooling) is not counted, as is usual for FLOP figures. The benchmark divides
items/s by these to report achieved FLOP/s.

torch's counter has formulas for the CUDA attention kernels but not for the CPU flash kernel that
``scaled_dot_product_attention`` runs on CPU (it would count attention as 0); the same formulas
are mapped onto the CPU kernels here, so counts agree across devices.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from mvrec_dist.models.item_encoders.video.encoder import VideoEncoder

__all__ = ["EncoderFlops", "encoder_flops", "train_step_flops"]


@dataclass(frozen=True)
class EncoderFlops:
    """Forward FLOPs of one item, split as ``encoder.split(top_blocks)``.

    Attributes:
        trunk: FLOPs of the trunk (what a cached trunk saves per item and step).
        top: FLOPs of the top.
    """

    trunk: int
    top: int

    @property
    def total(self) -> int:
        """FLOPs of the whole forward pass."""
        return self.trunk + self.top


def _example(encoder: VideoEncoder, frames: int, size: int) -> torch.Tensor:
    device = encoder.pixel_mean.device
    return torch.zeros(1, frames, 3, size, size, device=device)  # U=1,F,3,S,S


def _cpu_sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)


@contextlib.contextmanager
def _eval_mode(encoder: VideoEncoder) -> Iterator[None]:
    # Counting runs must not move BatchNorm running statistics; FLOPs do not depend on the mode.
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def encoder_flops(encoder: VideoEncoder, *, frames: int, size: int, top_blocks: int = 0) -> EncoderFlops:
    """Forward FLOPs per item, split at ``top_blocks``.

    Args:
        encoder: The encoder (any mode; it is run once under ``no_grad``).
        frames: F per item.
        size: S.
        top_blocks: K of the split (0: everything counts as trunk).

    Returns:
        ``EncoderFlops`` for one item.
    """
    trunk, top = encoder.split(top_blocks)
    with _eval_mode(encoder), torch.no_grad():
        with _counter() as counter:
            feature = trunk(_example(encoder, frames, size))
        trunk_flops = counter.get_total_flops()
        with _counter() as counter:
            top(feature)
        top_flops = counter.get_total_flops()
    return EncoderFlops(trunk=int(trunk_flops), top=int(top_flops))


def train_step_flops(encoder: VideoEncoder, *, frames: int, size: int, cached_trunk: bool = False) -> int:
    """FLOPs per item of one training step of the encoder in its current fine-tuning state.

    Counts the forward pass (without the frozen trunk when ``cached_trunk``) and the backward
    pass autograd actually runs, i.e. only through the blocks that train. Gradients are computed
    on a scratch input and discarded (parameter ``.grad`` is restored).

    Args:
        encoder: The encoder after ``apply_finetune``.
        frames: F per item.
        size: S.
        cached_trunk: Whether the frozen trunk's output comes from a cache.

    Returns:
        FLOPs for one item.
    """
    trunk, top = encoder.split(len(encoder.blocks()) - encoder.frozen_blocks)
    x = _example(encoder, frames, size)
    saved = {p: p.grad for p in encoder.parameters()}
    with _eval_mode(encoder):
        if cached_trunk:
            with torch.no_grad():
                x = trunk(x)  # the stored feature, not counted
        try:
            with _counter() as counter:
                out = top(x) if cached_trunk else top(trunk(x))
                if out.requires_grad:
                    out.sum().backward()
        finally:
            for p, g in saved.items():
                p.grad = g
    return int(counter.get_total_flops())
