"""VideoMAE video transformer encoder (ViT-B/16 with tubelet patches).

Reference: Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
Self-Supervised Video Pre-Training", NeurIPS 2022; the MCG-NJU/VideoMAE release
(``modeling_finetune.py``) and HF transformers' ``VideoMAEModel`` (``modeling_videomae.py``),
which the MicroLens paper uses: ``VideoMAEModel.from_pretrained(videomae_base,
config=VideoMAEConfig(num_frames=5))``, the mean of ``last_hidden_state`` over tokens, a linear
layer to the embedding size. Its topT (``video_freeze_paras_before = 152``) freezes the patch
embedding and layers 0-9, training the last 2 of 12 layers: ``top_blocks = 2`` here.

Structure: a Conv3d tubelet embedding (kernel = stride = ``tubelet x patch x patch``) plus fixed
sin-cos positions, pre-norm blocks (attention with a query and a value bias but no key bias, GELU
MLP), and the mean over tokens. With 5 frames and tubelets of 2 the fifth frame fills no tubelet
and is not seen, exactly as in the paper's HF model.

Deviations:

* No final norm: the paper's ``VideoMAEModel`` uses the config default ``use_mean_pooling=True``,
  which drops the final LayerNorm (a checkpoint's ``layernorm``/``norm``/``fc_norm`` is ignored
  and listed when loading); no classifier head, no dropout or stochastic depth.
* Query, key and value projections are one fused ``qkv`` matrix (the MCG layout); HF files'
  separate ``query``/``key``/``value`` weights are concatenated when loading.
* The ModuleList of layers is ``layers`` (``blocks`` is the interface method), so the MCG keys
  ``blocks.i.*`` load into ``layers.i.*``.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.config.content import VideoMAEConfig
from mvrec_dist.models.item_encoders.video.checkpoints import KeyMap, apply_key_map, read_state_dict
from mvrec_dist.models.item_encoders.video.encoder import IMAGENET_MEAN, IMAGENET_STD, VideoEncoder
from mvrec_dist.models.item_encoders.video.finetune import apply_finetune
from mvrec_dist.models.registry import CONTENT_ENCODERS

__all__ = ["VideoMAE", "videomae", "videomae_key_map", "sinusoid_table"]


def sinusoid_table(positions: int, dim: int) -> Tensor:
    """Fixed sin-cos position table of VideoMAE (and "Attention is all you need").

    Args:
        positions: N token positions.
        dim: D.

    Returns:
        ``float32 [N, D]``: ``sin(p / 10000^(2(j//2)/D))`` at even ``j``, ``cos`` at odd ``j``.
    """
    pos = torch.arange(positions, dtype=torch.float64).unsqueeze(1)  # N,1
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # N,D
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)


class _PatchEmbed(nn.Module):
    """``[U, F, 3, S, S] -> [U, N, D]`` tubelet tokens plus positions, N = (F // t) (S // p)^2."""

    def __init__(self, *, dim: int, patch: int, tubelet: int, frames: int, size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))
        self.input_shape = (frames, 3, size, size)
        n = (frames // tubelet) * (size // patch) ** 2
        self.register_buffer("pos_embed", sinusoid_table(n, dim), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"VideoMAE: expected frames [U, {', '.join(map(str, self.input_shape))}] "
                             f"(the configured frames and size), got {tuple(x.shape)}")
        tokens = self.proj(x.transpose(1, 2)).flatten(2).transpose(1, 2)  # U,N,D in (t, h, w) order
        return tokens + self.pos_embed.to(tokens.dtype)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        u, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])  # no key bias
        q, k, v = F.linear(x, self.qkv.weight, bias).view(u, n, 3, self.num_heads, d // self.num_heads).permute(
            2, 0, 3, 1, 4)  # each U,H,N,D/H
        a = F.scaled_dot_product_attention(q, k, v)  # U,H,N,D/H
        return self.proj(a.transpose(1, 2).reshape(u, n, d))  # U,N,D


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Layer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # U,N,D


class _TokenMean(nn.Module):
    """``[U, N, D] -> [U, D]``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


class VideoMAE(VideoEncoder):
    """VideoMAE-style ViT encoder: ``[U, F, 3, S, S] -> [U, embed_dim]`` (mean of the output tokens).

    Args:
        embed_dim: D.
        depth: Transformer layers.
        num_heads: Attention heads (divides D).
        mlp_dim: MLP hidden width.
        patch: Spatial patch side.
        tubelet: Frames per tubelet.
        frames: F the model takes.
        size: S the model takes.
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(self, *, embed_dim: int, depth: int, num_heads: int, mlp_dim: int, patch: int, tubelet: int,
                 frames: int, size: int, layer_norm_eps: float) -> None:
        super().__init__(out_dim=embed_dim, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.patch_embed = _PatchEmbed(dim=embed_dim, patch=patch, tubelet=tubelet, frames=frames, size=size)
        self.layers = nn.ModuleList(_Layer(embed_dim, num_heads, mlp_dim, layer_norm_eps) for _ in range(depth))
        self._pool = _TokenMean()
        for m in self.modules():  # the init of the MCG release (trunc-normal 0.02, zero biases)
            if isinstance(m, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def blocks(self) -> list[nn.Module]:
        """``[patch_embed, layers[0], ..., layers[depth - 1]]``."""
        return [self.patch_embed, *self.layers]

    def stages(self) -> list[nn.Module]:
        """The blocks, then the token mean."""
        return [*self.blocks(), self._pool]


_HF_LAYER = {  # ours (under layers.i.) -> HF (under encoder.layer.i.)
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.output.dense.weight", "attn.proj.bias": "attention.output.dense.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "intermediate.dense.weight", "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight", "mlp.fc2.bias": "output.dense.bias",
}


def videomae_key_map(model: VideoMAE, layout: str, public_keys: list[str]) -> KeyMap:
    """Key map of a public VideoMAE checkpoint.

    ``'hf'``: transformers ``VideoMAEModel`` files (keys ``embeddings.*``, ``encoder.layer.i.*``) or
    ``VideoMAEForPreTraining`` / ``VideoMAEForVideoClassification`` files (the same under
    ``videomae.``). The attention biases are ``q_bias``/``v_bias`` in the files on the HF hub
    (MCG-NJU/videomae-*) and ``query.bias``/``key.bias``/``value.bias`` in files saved by
    transformers 5; a key bias is dropped exactly (it adds ``q . b`` to all of a query's scores,
    which the softmax cancels). ``'mcg'``: the MCG-NJU release, fine-tuned (``patch_embed.*``,
    ``blocks.i.*``) or pre-trained (the same under ``encoder.``). Prefixes and bias names are read
    off the file's keys.

    Args:
        model: The ``VideoMAE`` to fill.
        layout: ``'hf'`` or ``'mcg'``.
        public_keys: The checkpoint's keys (to choose the prefix).

    Returns:
        The ``KeyMap``.
    """
    depth = len(model.layers)
    if layout == "hf":
        p = "videomae." if any(k.startswith("videomae.") for k in public_keys) else ""
        linear_biases = any(k.endswith("attention.attention.query.bias") for k in public_keys)
        q_bias, v_bias = ("query.bias", "value.bias") if linear_biases else ("q_bias", "v_bias")
        sources = {"patch_embed.proj.weight": (f"{p}embeddings.patch_embeddings.projection.weight",),
                   "patch_embed.proj.bias": (f"{p}embeddings.patch_embeddings.projection.bias",)}
        for i in range(depth):
            hf = f"{p}encoder.layer.{i}."
            sources[f"layers.{i}.attn.qkv.weight"] = tuple(f"{hf}attention.attention.{x}.weight"
                                                           for x in ("query", "key", "value"))
            sources.update({f"layers.{i}.{ours}": (hf + theirs,) for ours, theirs in _HF_LAYER.items()})
            sources[f"layers.{i}.attn.q_bias"] = (f"{hf}attention.attention.{q_bias}",)
            sources[f"layers.{i}.attn.v_bias"] = (f"{hf}attention.attention.{v_bias}",)
        ignored = {
            rf"{re.escape(p)}encoder\.layer\.\d+\.attention\.attention\.key\.bias":
                "key bias: it shifts all of a query's scores by q . b, which the softmax cancels",
            rf"{re.escape(p)}layernorm\.(weight|bias)": "final LayerNorm, unused with mean pooling (the paper's VideoMAEModel)",
            r"fc_norm\.(weight|bias)": "classification head norm",
            r"classifier\..*": "classification head",
            r"decoder\..*": "pre-training decoder",
            r"encoder_to_decoder\..*": "pre-training decoder input projection",
            r"mask_token": "pre-training mask token",
        }
        return KeyMap(layout="hf-videomae", sources=sources, ignored=ignored)
    if layout == "mcg":
        p = "encoder." if any(k.startswith("encoder.") for k in public_keys) else ""
        sources = {f"patch_embed.proj.{x}": (f"{p}patch_embed.proj.{x}",) for x in ("weight", "bias")}
        for k in model.state_dict():
            if k.startswith("layers."):
                sources[k] = (p + "blocks." + k[len("layers."):],)
        ignored = {
            rf"{re.escape(p)}norm\.(weight|bias)": "final LayerNorm, unused with mean pooling (the paper's VideoMAEModel)",
            r"fc_norm\.(weight|bias)": "classification head norm",
            rf"{re.escape(p)}head\..*": "classification head",
            r"decoder\..*": "pre-training decoder",
            r"encoder_to_decoder\..*": "pre-training decoder input projection",
            r"mask_token": "pre-training mask token",
        }
        return KeyMap(layout="mcg-videomae", sources=sources, ignored=ignored)
    raise ValueError(f"videomae_key_map: layout must be 'hf' or 'mcg', got {layout!r}")


@CONTENT_ENCODERS.register(VideoMAEConfig)
def videomae(cfg: VideoMAEConfig) -> VideoMAE:
    """Build the VideoMAE encoder from its config (weights from ``cfg.checkpoint`` if set, fine-tuning applied).

    Args:
        cfg: The ``videomae`` variant config.

    Returns:
        The encoder, ``out_dim = cfg.embed_dim``.
    """
    model = VideoMAE(embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                     patch=cfg.patch, tubelet=cfg.tubelet, frames=cfg.frames, size=cfg.size,
                     layer_norm_eps=cfg.layer_norm_eps)
    if cfg.checkpoint is not None:
        state = read_state_dict(cfg.checkpoint)
        apply_key_map(model, state, videomae_key_map(model, cfg.checkpoint_layout, list(state)), source=cfg.checkpoint)
    apply_finetune(model, cfg.finetune, cfg.top_blocks)
    return model
