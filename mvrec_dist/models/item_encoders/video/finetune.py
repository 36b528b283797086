"""Fine-tuning modes of the video encoders (MicroLens paper, Table 6): frozen, top-K blocks, full.

The MicroLens code freezes by parameter index (``video_freeze_paras_before``: the first N tensors
of ``named_parameters()``); here the unit is a block of ``encoder.blocks()``, which names the same
settings without counting tensors: its topT for R3D-18 (N = 30: stem, layer1, layer2 frozen) and
for VideoMAE-B (N = 152: patch embedding and layers 0-9 frozen) are both ``top_blocks = 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mvrec_dist.models.item_encoders.video.encoder import VideoEncoder

__all__ = ["FinetuneSummary", "apply_finetune", "frozen_block_count"]

FinetuneMode = Literal["frozen", "top", "full"]


@dataclass(frozen=True)
class FinetuneSummary:
    """What ``apply_finetune`` froze.

    Attributes:
        mode: The fine-tuning mode.
        frozen_blocks: Bottom blocks frozen.
        trainable_blocks: Top blocks that train.
        frozen_params: Parameter elements frozen.
        trainable_params: Parameter elements that train.
    """

    mode: str
    frozen_blocks: int
    trainable_blocks: int
    frozen_params: int
    trainable_params: int


def frozen_block_count(mode: FinetuneMode, top_blocks: int, num_blocks: int) -> int:
    """How many bottom blocks a mode freezes.

    Args:
        mode: ``'frozen'``, ``'top'`` or ``'full'``.
        top_blocks: K, trainable top blocks in ``'top'`` mode (``1 <= K <= num_blocks``).
        num_blocks: Blocks of the encoder.

    Returns:
        ``num_blocks`` (frozen), ``num_blocks - K`` (top) or 0 (full).
    """
    if mode == "frozen":
        return num_blocks
    if mode == "full":
        return 0
    if mode == "top":
        if not 1 <= top_blocks <= num_blocks:
            raise ValueError(f"top_blocks must be in [1, {num_blocks}] for finetune 'top', got {top_blocks}")
        return num_blocks - top_blocks
    raise ValueError(f"finetune mode must be 'frozen', 'top' or 'full', got {mode!r}")


def apply_finetune(encoder: VideoEncoder, mode: FinetuneMode, top_blocks: int) -> FinetuneSummary:
    """Freeze the blocks ``mode`` leaves untrained (no gradients, eval mode), unfreeze the rest.

    Args:
        encoder: A video encoder.
        mode: ``'frozen'``, ``'top'`` or ``'full'``.
        top_blocks: K, trainable top blocks in ``'top'`` mode (ignored otherwise).

    Returns:
        A ``FinetuneSummary`` with block and parameter counts.
    """
    blocks = encoder.blocks()
    n = frozen_block_count(mode, top_blocks, len(blocks))
    encoder.freeze_bottom(n)
    frozen = sum(p.numel() for b in blocks[:n] for p in b.parameters())
    trainable = sum(p.numel() for b in blocks[n:] for p in b.parameters())
    return FinetuneSummary(mode=mode, frozen_blocks=n, trainable_blocks=len(blocks) - n,
                           frozen_params=frozen, trainable_params=trainable)
