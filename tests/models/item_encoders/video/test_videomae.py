"""VideoMAE: HF and MCG checkpoint layouts (round trip, and the HF forward re-done from the HF tensors)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mvrec_dist.models.item_encoders  # noqa: F401  (registers the builders)
from mvrec_dist.config.content import VideoMAEConfig
from mvrec_dist.models.item_encoders.video import CheckpointError, VideoMAE, sinusoid_table
from mvrec_dist.models.registry import CONTENT_ENCODERS

from .conftest import FRAMES, SIZE, TINY

CFG = TINY["videomae"]
D, M, P, T = CFG.embed_dim, CFG.mlp_dim, CFG.patch, CFG.tubelet


def hf_state(depth: int, *, prefix: str, pretraining_extras: bool, linear_biases: bool = False,
             seed: int = 7) -> dict[str, torch.Tensor]:
    """A random state dict with the keys of HF ``VideoMAEModel`` (``modeling_videomae.py``), under ``prefix``.

    ``linear_biases``: the attention biases as transformers 5 saves them (``query.bias``, a key bias,
    ``value.bias``) instead of the hub files' ``q_bias`` / ``v_bias``.
    """
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {f"{prefix}embeddings.patch_embeddings.projection.weight": r(D, 3, T, P, P),
          f"{prefix}embeddings.patch_embeddings.projection.bias": r(D)}
    for i in range(depth):
        b = f"{prefix}encoder.layer.{i}."
        sd.update({
            b + "attention.attention.query.weight": r(D, D), b + "attention.attention.key.weight": r(D, D),
            b + "attention.attention.value.weight": r(D, D),
            b + "attention.output.dense.weight": r(D, D), b + "attention.output.dense.bias": r(D),
            b + "intermediate.dense.weight": r(M, D), b + "intermediate.dense.bias": r(M),
            b + "output.dense.weight": r(D, M), b + "output.dense.bias": r(D),
            b + "layernorm_before.weight": 1 + r(D), b + "layernorm_before.bias": r(D),
            b + "layernorm_after.weight": 1 + r(D), b + "layernorm_after.bias": r(D),
        })
        if linear_biases:
            sd.update({b + "attention.attention.query.bias": r(D), b + "attention.attention.key.bias": r(D),
                       b + "attention.attention.value.bias": r(D)})
        else:
            sd.update({b + "attention.attention.q_bias": r(D), b + "attention.attention.v_bias": r(D)})
    if pretraining_extras:  # VideoMAEForPreTraining of MCG-NJU/videomae-base (use_mean_pooling=False)
        sd.update({f"{prefix}layernorm.weight": r(D), f"{prefix}layernorm.bias": r(D),
                   "encoder_to_decoder.weight": r(8, D), "mask_token": r(1, 1, 8),
                   "decoder.decoder_layers.0.attention.attention.query.weight": r(8, 8),
                   "decoder.norm.weight": r(8), "decoder.head.weight": r(3 * T * P * P, 8)})
    return sd


def hf_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int, prefix: str = "") -> torch.Tensor:
    """HF ``VideoMAEModel`` forward (use_mean_pooling=True) written from its source, then the token mean."""
    w = lambda k: sd[prefix + k]  # noqa: E731
    tokens = F.conv3d(x.permute(0, 2, 1, 3, 4), w("embeddings.patch_embeddings.projection.weight"),
                      w("embeddings.patch_embeddings.projection.bias"), stride=(T, P, P)).flatten(2).transpose(1, 2)
    h = tokens + torch.from_numpy(_numpy_sinusoid(tokens.shape[1], D)).float()
    for i in range(depth):
        a = lambda k: w(f"encoder.layer.{i}.{k}")  # noqa: E731
        n = F.layer_norm(h, (D,), a("layernorm_before.weight"), a("layernorm_before.bias"), eps=1e-12)
        bias = lambda *names: next((w(f"encoder.layer.{i}.attention.attention.{x}") for x in names  # noqa: E731
                                    if prefix + f"encoder.layer.{i}.attention.attention.{x}" in sd), None)
        q = F.linear(n, a("attention.attention.query.weight"), bias("q_bias", "query.bias"))
        k = F.linear(n, a("attention.attention.key.weight"), bias("key.bias"))  # hub files: no key bias
        v = F.linear(n, a("attention.attention.value.weight"), bias("v_bias", "value.bias"))
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, D // heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) * (D // heads) ** -0.5, dim=-1) @ split(v)
        h = h + F.linear(att.transpose(1, 2).reshape(h.shape), a("attention.output.dense.weight"),
                         a("attention.output.dense.bias"))
        n = F.layer_norm(h, (D,), a("layernorm_after.weight"), a("layernorm_after.bias"), eps=1e-12)
        h = h + F.linear(F.gelu(F.linear(n, a("intermediate.dense.weight"), a("intermediate.dense.bias"))),
                         a("output.dense.weight"), a("output.dense.bias"))
    return h.mean(dim=1)


def _numpy_sinusoid(n: int, d: int) -> np.ndarray:
    # get_sinusoid_encoding_table of modeling_videomae.py, verbatim in numpy
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


def test_sinusoid_matches_the_reference_formula():
    np.testing.assert_allclose(sinusoid_table(50, 16).numpy(), _numpy_sinusoid(50, 16), rtol=0, atol=1e-6)


def test_full_size_is_vit_b():
    # ViT-B/16 with tubelets: patch embedding 768*3*2*16*16 + 768 = 1,180,416; per layer
    # qkv 3*768^2 + q/v biases 2*768 + proj 768^2+768 + 2 LayerNorms 4*768
    # + MLP 2*768*3072 + 3072 + 768 = 7,087,104; 12 layers.
    with torch.device("meta"):
        cfg = VideoMAEConfig()
        enc = VideoMAE(embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                       patch=cfg.patch, tubelet=cfg.tubelet, frames=cfg.frames, size=cfg.size,
                       layer_norm_eps=cfg.layer_norm_eps)
    assert sum(p.numel() for p in enc.parameters()) == 1_180_416 + 12 * 7_087_104
    assert enc.patch_embed.pos_embed.shape == (2 * 14 * 14, 768)  # 5 frames: 2 tubelets of 2, as HF's 392 tokens


@pytest.mark.parametrize("prefix,extras,linear_biases", [("", False, False), ("videomae.", True, False),
                                                         ("", False, True)])
def test_hf_checkpoint_round_trip_and_forward(tmp_path, prefix, extras, linear_biases):
    sd = hf_state(CFG.depth, prefix=prefix, pretraining_extras=extras, linear_biases=linear_biases)
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    torch.manual_seed(1)
    enc = CONTENT_ENCODERS.build(dataclasses.replace(CFG, checkpoint=str(path), finetune="full")).eval()
    state = enc.state_dict()
    for i in range(CFG.depth):
        b = f"{prefix}encoder.layer.{i}.attention.attention."
        qkv = torch.cat([sd[b + "query.weight"], sd[b + "key.weight"], sd[b + "value.weight"]])
        assert torch.equal(state[f"layers.{i}.attn.qkv.weight"], qkv)
    encoder_keys = [k for k in sd if k.startswith((prefix + "embeddings.", prefix + "encoder.layer."))]
    key_biases = [k for k in encoder_keys if k.endswith("key.bias")]  # dropped: softmax cancels them
    # every other module tensor came from the file, once: the element counts agree, a sample checked below
    assert sum(v.numel() for v in state.values()) == sum(sd[k].numel() for k in encoder_keys if k not in key_biases)
    assert len(key_biases) == (CFG.depth if linear_biases else 0)
    for i in range(CFG.depth):
        b = f"{prefix}encoder.layer.{i}."
        assert torch.equal(state[f"layers.{i}.mlp.fc1.weight"], sd[b + "intermediate.dense.weight"])
        q_bias = b + ("attention.attention.query.bias" if linear_biases else "attention.attention.q_bias")
        assert torch.equal(state[f"layers.{i}.attn.q_bias"], sd[q_bias])
    x = torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(enc(x), hf_forward(sd, x, CFG.depth, CFG.num_heads, prefix), rtol=1e-4, atol=1e-5)


def mcg_state(hf: dict[str, torch.Tensor], *, prefix: str) -> dict[str, torch.Tensor]:
    """The same weights with the keys of the MCG-NJU release (``modeling_finetune.py`` / ``modeling_pretrain.py``)."""
    out = {f"{prefix}patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
           f"{prefix}patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"]}
    for i in range(CFG.depth):
        h, b = f"encoder.layer.{i}.", f"{prefix}blocks.{i}."
        out[b + "attn.qkv.weight"] = torch.cat([hf[h + f"attention.attention.{x}.weight"]
                                                for x in ("query", "key", "value")])
        for ours, theirs in [("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                             ("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                             ("mlp.fc2", "output.dense")]:
            out[b + ours + ".weight"], out[b + ours + ".bias"] = hf[h + theirs + ".weight"], hf[h + theirs + ".bias"]
        out[b + "attn.q_bias"] = hf[h + "attention.attention.q_bias"]
        out[b + "attn.v_bias"] = hf[h + "attention.attention.v_bias"]
    return out


@pytest.mark.parametrize("prefix,wrapper", [("", "module"), ("encoder.", "model")])
def test_mcg_checkpoint_round_trip(tmp_path, prefix, wrapper):
    hf = hf_state(CFG.depth, prefix="", pretraining_extras=False)
    sd = mcg_state(hf, prefix=prefix)
    if prefix:  # pre-training file: encoder norm, decoder
        sd.update({"encoder.norm.weight": torch.ones(D), "encoder.norm.bias": torch.zeros(D),
                   "decoder.blocks.0.attn.qkv.weight": torch.zeros(24, 8), "encoder_to_decoder.weight": torch.zeros(8, D),
                   "mask_token": torch.zeros(1, 1, 8)})
    else:  # fine-tuned file: fc_norm and the Kinetics head
        sd.update({"fc_norm.weight": torch.ones(D), "fc_norm.bias": torch.zeros(D),
                   "head.weight": torch.zeros(400, D), "head.bias": torch.zeros(400)})
    path = tmp_path / "checkpoint.pth"
    torch.save({wrapper: sd, "epoch": 799}, path)
    cfg = dataclasses.replace(CFG, checkpoint=str(path), checkpoint_layout="mcg", finetune="full")
    enc = CONTENT_ENCODERS.build(cfg).eval()
    x = torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(enc(x), hf_forward(hf, x, CFG.depth, CFG.num_heads), rtol=1e-4, atol=1e-5)


def test_layer_scale_checkpoints_are_rejected(tmp_path):
    # VideoMAE-L/H releases with init_values > 0 carry gamma_1 / gamma_2, which this encoder lacks.
    sd = mcg_state(hf_state(CFG.depth, prefix="", pretraining_extras=False), prefix="")
    sd["blocks.0.gamma_1"] = torch.ones(D)
    torch.save(sd, tmp_path / "ls.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key 'blocks\.0\.gamma_1'"):
        CONTENT_ENCODERS.build(dataclasses.replace(CFG, checkpoint=str(tmp_path / "ls.pth"), checkpoint_layout="mcg"))
