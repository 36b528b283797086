"""FLOPs per item of the title-text encoder, from its sizes (for projections of fine-tuning cost).

Counted as ``torch.utils.flop_counter`` counts the video encoders (``video/flops.py``): the
matmuls of the linear layers and of attention (a multiply-add is 2 FLOPs); element-wise work
(embeddings, LayerNorm, GELU, softmax, pooling) is not counted. Every one of the T positions is
computed, padding included (the model runs ``[U, T]``), so the figures depend on T, not on title
lengths. Per layer and item::

    8 T H^2   query, key, value and attention output projections
    4 T H I   feed-forward (H -> I -> H)
    4 T^2 H   attention scores and the weighted sum of values

so all-MiniLM-L6-v2 at T = 48 takes 6 x (8*48*384^2 + 4*48*384*1536 + 4*48^2*384) = 1.04 GFLOP
per title. The test checks these formulas against ``FlopCounterMode`` on a real forward pass.
"""

from __future__ import annotations

from mvrec_dist.config.content import TextEncoderConfig
from mvrec_dist.models.item_encoders.video.flops import EncoderFlops

__all__ = ["layer_flops", "text_encoder_flops", "text_train_step_flops"]


def layer_flops(*, tokens: int, hidden: int, intermediate: int) -> int:
    """Forward FLOPs of one BERT layer on one item of T tokens."""
    t, h, i = tokens, hidden, intermediate
    return 8 * t * h * h + 4 * t * h * i + 4 * t * t * h


def _trainable_layers(cfg: TextEncoderConfig) -> int:
    return {"frozen": 0, "top": cfg.top_blocks, "full": cfg.num_layers}[cfg.finetune]


def text_encoder_flops(cfg: TextEncoderConfig, *, tokens: int | None = None,
                       top_layers: int | None = None) -> EncoderFlops:
    """Forward FLOPs per item, split where ``cache_split`` cuts.

    Args:
        cfg: The encoder config (sizes, adapter, fine-tuning mode).
        tokens: T (default ``cfg.max_tokens``).
        top_layers: K, the layers counted in the head (default: those that train in ``cfg.finetune``).

    Returns:
        ``EncoderFlops``: ``trunk`` = the bottom ``L - K`` layers (what a feature cache saves per
        item and step), ``top`` = the top K layers plus the adapter.
    """
    t = cfg.max_tokens if tokens is None else tokens
    k = _trainable_layers(cfg) if top_layers is None else top_layers
    if not 0 <= k <= cfg.num_layers:
        raise ValueError(f"top_layers must be in [0, {cfg.num_layers}], got {k}")
    per_layer = layer_flops(tokens=t, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size)
    adapter = 4 * cfg.hidden_size * cfg.adapter_hidden
    return EncoderFlops(trunk=(cfg.num_layers - k) * per_layer, top=k * per_layer + adapter)


def text_train_step_flops(cfg: TextEncoderConfig, *, tokens: int | None = None) -> int:
    """Estimated FLOPs per item of one training step of the encoder in ``cfg``'s fine-tuning mode.

    The forward pass (without the frozen part when ``cfg.cached_trunk``) plus a backward pass of
    twice the forward FLOPs of what trains (gradients of inputs and of weights), the usual 3x rule;
    it slightly overcounts the lowest trained layer, whose input needs no gradient.

    Args:
        cfg: The encoder config.
        tokens: T (default ``cfg.max_tokens``).

    Returns:
        FLOPs for one item.
    """
    f = text_encoder_flops(cfg, tokens=tokens)
    return (0 if cfg.cached_trunk else f.trunk) + 3 * f.top
