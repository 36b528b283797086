"""A BERT encoder in plain torch, laid out so that BERT safetensors files load through an explicit key map.

Reference: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", NAACL 2019, as HF transformers' ``BertModel`` computes it (``modeling_bert.py``):
learned absolute positions, word + position + token-type embeddings followed by LayerNorm, then
post-LayerNorm layers (``x = LN(x + attn(x))``, ``x = LN(x + W2 gelu(W1 x))``, exact erf GELU), with
padding keys masked out of attention. sentence-transformers/all-MiniLM-L6-v2 is such a model
(6 layers, 384 wide, 12 heads); the encoder in ``encoder.py`` pools its last hidden states.

Deviations:

* Titles are single sentences, so every token has type 0: the token-type table is kept (it is
  loaded, and row 0 is added), but no type ids are taken.
* No pooler: ``BertModel``'s ``pooler`` (tanh of a linear map of [CLS], trained for next-sentence
  prediction) is not used by sentence-transformers models; a file's ``pooler.*`` is ignored and
  listed as such when loading.
* Padding keys get the dtype's most negative value added to their attention scores (as HF does),
  not ``-inf``, so an item made only of padding (the zeros ``cached_feature_shape`` runs) gives
  finite values instead of NaN.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.models.item_encoders.video.checkpoints import KeyMap

__all__ = ["BertEmbeddings", "BertLayer", "Bert", "run_layers", "bert_key_map", "attention_bias", "init_bert_"]


def attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias from a key-padding mask.

    Args:
        mask: ``bool [U, T]``, True at real tokens.
        dtype: The compute dtype of the attention scores.

    Returns:
        ``[U, 1, 1, T]``: 0 at real tokens, the dtype's most negative finite value at padding
        (broadcast over heads and queries).
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask, torch.finfo(dtype).min)[:, None, None, :]  # U,1,1,T


class BertEmbeddings(nn.Module):
    """``ids [U, T] -> [U, T, H]``: word + position + token-type-0 embeddings, LayerNorm, dropout.

    Args:
        vocab_size: Token vocabulary.
        hidden_size: H.
        max_positions: Learned positions (T may not exceed it).
        type_vocab_size: Token-type vocabulary (row 0 is used).
        eps: LayerNorm epsilon.
        dropout: Dropout probability on the output.
    """

    def __init__(self, *, vocab_size: int, hidden_size: int, max_positions: int, type_vocab_size: int,
                 eps: float, dropout: float) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_positions, hidden_size)
        self.token_type = nn.Embedding(type_vocab_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        if t > self.position.num_embeddings:
            raise ValueError(f"Bert: {t} tokens per item exceed the {self.position.num_embeddings} learned positions")
        x = self.word(ids) + self.position.weight[:t] + self.token_type.weight[0]  # U,T,H
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """One post-LayerNorm BERT layer: ``x = LN(x + attention(x))``, then ``x = LN(x + ffn(x))``.

    Args:
        hidden_size: H.
        num_heads: Attention heads (divide H).
        intermediate_size: Feed-forward width.
        eps: LayerNorm epsilon.
        dropout: Dropout on attention probabilities and on both residual branches (BERT uses one value).
    """

    def __init__(self, *, hidden_size: int, num_heads: int, intermediate_size: int, eps: float,
                 dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"BertLayer: {num_heads} heads do not divide hidden_size {hidden_size}")
        self.num_heads = num_heads
        self.attention_dropout = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn_in = nn.Linear(hidden_size, intermediate_size)
        self.ffn_out = nn.Linear(intermediate_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        u, t, h = x.shape
        return x.view(u, t, self.num_heads, h // self.num_heads).transpose(1, 2)  # U,heads,T,H/heads

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """``[U, T, H] -> [U, T, H]``; ``bias`` is ``attention_bias`` of the key-padding mask."""
        u, t, h = x.shape
        a = F.scaled_dot_product_attention(
            self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x)), attn_mask=bias,
            dropout_p=self.attention_dropout if self.training else 0.0)  # U,heads,T,H/heads
        x = self.attn_norm(x + self.dropout(self.attn_out(a.transpose(1, 2).reshape(u, t, h))))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))  # U,T,H


class Bert(nn.Module):
    """BERT without a pooler: ``embeddings`` then ``layers`` (``run_layers``), giving the last hidden states.

    Args:
        vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions,
        type_vocab_size, layer_norm_eps: The architecture (BERT ``config.json`` sizes).
        dropout: Hidden and attention dropout.
    """

    def __init__(self, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                 max_positions: int, type_vocab_size: int, layer_norm_eps: float, dropout: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.embeddings = BertEmbeddings(vocab_size=vocab_size, hidden_size=hidden_size, max_positions=max_positions,
                                         type_vocab_size=type_vocab_size, eps=layer_norm_eps, dropout=dropout)
        self.layers = nn.ModuleList(
            BertLayer(hidden_size=hidden_size, num_heads=num_heads, intermediate_size=intermediate_size,
                      eps=layer_norm_eps, dropout=dropout) for _ in range(num_layers))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Last hidden states ``[U, T, H]`` of token ids ``[U, T]`` (``mask``: True at real tokens)."""
        return run_layers(self.layers, self.embeddings(ids), mask)


def run_layers(layers: Sequence[nn.Module], x: Tensor, mask: Tensor) -> Tensor:
    """Run BERT ``layers`` in order on hidden states ``x [U, T, H]`` with key-padding ``mask [U, T]``.

    The encoder cuts the layer stack for fine-tuning and cached features; every piece runs its
    layers through this one function, so the pieces compute exactly what the whole does.
    """
    bias = attention_bias(mask, x.dtype)
    for layer in layers:
        x = layer(x, bias)
    return x  # U,T,H


def init_bert_(model: nn.Module, std: float = 0.02) -> None:
    """BERT's random init: normal(0, std) weights of linear and embedding layers, zero biases, LayerNorm 1/0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_HF_EMBEDDINGS = {  # ours (under embeddings.) -> HF BertModel (under embeddings.)
    "word.weight": "word_embeddings.weight",
    "position.weight": "position_embeddings.weight",
    "token_type.weight": "token_type_embeddings.weight",
    "norm.weight": "LayerNorm.weight", "norm.bias": "LayerNorm.bias",
}
_HF_LAYER = {  # ours (under layers.i.) -> HF BertModel (under encoder.layer.i.)
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm",
}


def bert_key_map(model: Bert) -> KeyMap:
    """Key map of HF ``BertModel`` files (sentence-transformers' ``model.safetensors``).

    Every tensor of ``model`` comes from exactly one public key; ``embeddings.position_ids`` (a
    buffer of ``arange(max_positions)``: positions here are always ``0..T-1``) and ``pooler.*``
    (unused by sentence-transformers) are ignored and listed; any other key, a missing key or a
    shape mismatch fails the load (``apply_key_map``).

    Args:
        model: The ``Bert`` to fill.

    Returns:
        The ``KeyMap``.
    """
    sources = {f"embeddings.{ours}": (f"embeddings.{theirs}",) for ours, theirs in _HF_EMBEDDINGS.items()}
    for i in range(len(model.layers)):
        for ours, theirs in _HF_LAYER.items():
            for x in ("weight", "bias"):
                sources[f"layers.{i}.{ours}.{x}"] = (f"encoder.layer.{i}.{theirs}.{x}",)
    ignored = {
        r"embeddings\.position_ids": "buffer of arange(max_positions); positions are always 0..T-1 here",
        r"pooler\.dense\.(weight|bias)": "BERT's next-sentence pooler, unused by sentence-transformers (mean/cls pooling)",
    }
    return KeyMap(layout="hf-bert", sources=sources, ignored=ignored)
