"""The title-text content encoder: token ids -> BERT -> sentence vector (sentence-transformers style).

``TextEncoder`` is a ``ContentEncoder`` (``mvrec_dist.models.item_encoders.base``) of kind
``'tokens'``: ``prepare`` widens the stored int32 ids ``[U, T]`` to int64, and ``forward`` runs
BERT (``bert.py``), pools the last hidden states over the real tokens (``'mean'``, as
sentence-transformers/all-MiniLM-L6-v2) or takes [CLS] (``'cls'``, as MicroLens' ``run_text.py``),
L2-normalises (as the sentence-transformers model's ``Normalize`` module) and applies an optional
trainable residual adapter. Padding is id 0; the attention mask is ``ids != 0`` ([CLS] = 101, so
every stored title has at least two real tokens).

Fine-tuning units (*blocks*) are the embeddings and each transformer layer, bottom to top:
'frozen' trains no BERT parameter, 'top' trains the top ``top_blocks`` layers, 'full' all. The
adapter always trains. Frozen blocks stay in eval mode when the encoder is put in training mode,
so their dropout is off: a frozen block is then a fixed function, which is what makes its stored
output equal to the live one (as frozen BatchNorm in the video encoders).

``cache_split`` cuts at the fine-tuning boundary. 'frozen': the frozen part is BERT, pooling and
normalisation (``float [U, H]``) and the head is the adapter (or the identity). 'top': the frozen
part is the embeddings and the bottom layers, whose output ``[U, T, H + 1]`` is the hidden states
with the attention mask appended as the last channel (the head needs it to mask attention and
pooling, and it only sees the stored features); the head is the top layers, pooling,
normalisation and adapter.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.models.item_encoders.base import ContentEncoder
from mvrec_dist.models.item_encoders.text.bert import Bert, init_bert_, run_layers
from mvrec_dist.models.item_encoders.video.finetune import FinetuneSummary

__all__ = ["TextEncoder", "Adapter", "Pooling", "PAD_ID"]

PAD_ID = 0
"""Token id of padding in stored titles (BERT uncased ``[PAD]``; ``pretrained_text.load_tokenizer`` pads with it)."""

FinetuneMode = Literal["frozen", "top", "full"]


class Pooling(nn.Module):
    """``(hidden [U, T, H], mask [U, T]) -> [U, H]``: mean over real tokens or [CLS], optionally L2-normalised.

    Args:
        mode: ``'mean'`` (sentence-transformers ``Pooling(mean)``: sum of masked states over the
            count, the count clamped at 1e-9) or ``'cls'`` (the first token).
        normalize: L2-normalise (``F.normalize``, as sentence-transformers ``Normalize``).
    """

    def __init__(self, mode: str, normalize: bool) -> None:
        super().__init__()
        if mode not in ("mean", "cls"):
            raise ValueError(f"Pooling: mode must be 'mean' or 'cls', got {mode!r}")
        self.mode = mode
        self.normalize = normalize

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.mode == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)  # U,T,1
            v = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # U,H
        else:
            v = hidden[:, 0]  # U,H
        return F.normalize(v, p=2.0, dim=1) if self.normalize else v

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, normalize={self.normalize}"


class Adapter(nn.Module):
    """Residual MLP on the sentence vector: ``x + W2 gelu(W1 LayerNorm(x))``, ``W2`` zero so it starts as identity.

    Args:
        dim: H.
        hidden: Hidden width of the MLP.
        eps: LayerNorm epsilon.
        std: Std of ``W1``'s normal init.
    """

    def __init__(self, dim: int, hidden: int, eps: float, std: float = 0.02) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.normal_(self.fc1.weight, std=std)
        nn.init.zeros_(self.fc1.bias)
        # Zero output layer: the adapter adds nothing until trained, so a frozen pretrained encoder
        # with an adapter starts from exactly the pretrained sentence vectors.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))  # U,H


class _Sentence(nn.Module):
    """Frozen part in 'frozen' mode: ``ids [U, T] -> [U, H]`` (BERT, pooling, normalisation)."""

    def __init__(self, bert: Bert, pooling: Pooling) -> None:
        super().__init__()
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(bert.layers)
        self.pooling = pooling

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != PAD_ID
        return self.pooling(run_layers(self.layers, self.embeddings(ids), mask), mask)  # U,H


class _Bottom(nn.Module):
    """Frozen part in 'top' mode: ``ids [U, T] -> [U, T, H + 1]`` (bottom layers' states, then the mask)."""

    def __init__(self, bert: Bert, layers: int) -> None:
        super().__init__()
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(bert.layers[:layers])

    def forward(self, ids: Tensor) -> Tensor:
        mask = ids != PAD_ID
        h = run_layers(self.layers, self.embeddings(ids), mask)  # U,T,H
        return torch.cat([h, mask.unsqueeze(-1).to(h.dtype)], dim=-1)  # U,T,H+1


class _Top(nn.Module):
    """Head in 'top' mode: ``[U, T, H + 1] -> [U, H]`` (top layers, pooling, normalisation, adapter)."""

    def __init__(self, bert: Bert, layers: int, pooling: Pooling, adapter: Adapter | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(bert.layers[len(bert.layers) - layers:])
        self.pooling = pooling
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        # The mask channel is exactly 0 or 1 in any float dtype; > 0.5 reads it back as bool.
        h, mask = x[..., :-1].contiguous(), x[..., -1] > 0.5  # U,T,H and U,T
        v = self.pooling(run_layers(self.layers, h, mask), mask)  # U,H
        return v if self.adapter is None else self.adapter(v)


class TextEncoder(ContentEncoder):
    """BERT sentence encoder over title token ids: ``forward(ids[U, T]) -> [U, hidden_size]``.

    Args:
        vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions,
        type_vocab_size, layer_norm_eps: The BERT architecture (``bert.Bert``).
        dropout: Hidden and attention dropout of the layers that train.
        pooling: ``'mean'`` or ``'cls'`` (``Pooling``).
        normalize: L2-normalise the pooled vector.
        adapter_hidden: Hidden width of the residual ``Adapter``; 0 = none.
        init_std: Std of the random init (BERT: 0.02); pretrained weights replace it.
    """

    def __init__(self, *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                 intermediate_size: int, max_positions: int, type_vocab_size: int, layer_norm_eps: float,
                 dropout: float, pooling: str = "mean", normalize: bool = True, adapter_hidden: int = 0,
                 init_std: float = 0.02) -> None:
        super().__init__(out_dim=hidden_size)
        self.bert = Bert(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         intermediate_size=intermediate_size, max_positions=max_positions,
                         type_vocab_size=type_vocab_size, layer_norm_eps=layer_norm_eps, dropout=dropout)
        init_bert_(self.bert, std=init_std)
        self.pooling = Pooling(pooling, normalize)
        self.adapter = Adapter(hidden_size, adapter_hidden, layer_norm_eps, std=init_std) if adapter_hidden else None
        self._frozen_blocks = 0
        self.finetune: FinetuneMode = "full"

    # ---------------------------------------------------------------- interface
    def prepare(self, content: Tensor) -> Tensor:
        """Token ids as stored (``int [U, T]``, int32) -> ``int64 [U, T]`` for the embedding lookups."""
        if content.dim() != 2 or content.is_floating_point() or content.dtype == torch.bool:
            raise ValueError(f"TextEncoder.prepare: expected int token ids [U, T], got {content.dtype} "
                             f"{tuple(content.shape)}")
        return content.long()

    def forward(self, ids: Tensor) -> Tensor:
        """Encode U titles.

        Args:
            ids: ``int64 [U, T]`` token ids (``prepare``), padding 0.

        Returns:
            ``[U, hidden_size]`` sentence vectors.
        """
        if ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(f"TextEncoder: expected int token ids [U, T], got {ids.dtype} {tuple(ids.shape)}")
        mask = ids != PAD_ID  # U,T
        v = self.pooling(run_layers(self.bert.layers, self.bert.embeddings(ids), mask), mask)  # U,H
        return v if self.adapter is None else self.adapter(v)

    def cache_split(self) -> tuple[nn.Module, nn.Module]:
        """``(frozen, head)`` at the fine-tuning cut (see the module docstring); ``head(frozen(x)) == forward(x)``.

        Raises:
            ValueError: in 'full' mode (no frozen part).
        """
        if self._frozen_blocks == 0:
            raise ValueError("TextEncoder in finetune 'full' trains every layer: it has no frozen part whose "
                             "output could be cached")
        k = self.trainable_layers
        if k == 0:
            return _Sentence(self.bert, self.pooling), (self.adapter if self.adapter is not None else nn.Sequential())
        return _Bottom(self.bert, len(self.bert.layers) - k), _Top(self.bert, k, self.pooling, self.adapter)

    def cache_identity(self) -> dict[str, Any]:
        """``trunk_digest`` (``frozen_digest``) and the cut (``top_blocks``: layers that train), as video encoders record."""
        if self._frozen_blocks == 0:
            self.cache_split()  # raises, naming the reason
        return {"trunk_digest": self.frozen_digest(), "top_blocks": self.trainable_layers}

    # ---------------------------------------------------------------- freezing
    def blocks(self) -> list[nn.Module]:
        """The fine-tuning units, bottom to top: ``[embeddings, layers[0], ..., layers[L - 1]]``."""
        return [self.bert.embeddings, *self.bert.layers]

    @property
    def frozen_blocks(self) -> int:
        """How many bottom blocks are frozen (0: 'full'; L + 1: 'frozen')."""
        return self._frozen_blocks

    @property
    def trainable_layers(self) -> int:
        """K, the transformer layers that train (the embeddings train only in 'full' mode)."""
        return min(len(self.bert.layers), len(self.blocks()) - self._frozen_blocks)

    def apply_finetune(self, mode: FinetuneMode, top_blocks: int) -> FinetuneSummary:
        """Freeze what ``mode`` leaves untrained (no gradients, eval mode) and unfreeze the rest.

        Args:
            mode: ``'frozen'`` (no BERT parameter trains), ``'top'`` (the top ``top_blocks``
                layers train) or ``'full'``. The adapter, if any, trains in every mode.
            top_blocks: K for ``'top'``, ``1 <= K <= num_layers`` (ignored otherwise).

        Returns:
            A ``FinetuneSummary`` (blocks: the embeddings and each layer).
        """
        blocks = self.blocks()
        layers = len(self.bert.layers)
        if mode == "frozen":
            n = len(blocks)
        elif mode == "full":
            n = 0
        elif mode == "top":
            if not 1 <= top_blocks <= layers:
                raise ValueError(f"top_blocks must be in [1, {layers}] for finetune 'top', got {top_blocks}")
            n = len(blocks) - top_blocks
        else:
            raise ValueError(f"finetune mode must be 'frozen', 'top' or 'full', got {mode!r}")
        for i, block in enumerate(blocks):
            block.requires_grad_(i >= n)
        if self.adapter is not None:
            self.adapter.requires_grad_(True)
        self._frozen_blocks = n
        self.finetune = mode
        self.train(self.training)
        frozen = sum(p.numel() for b in blocks[:n] for p in b.parameters())
        return FinetuneSummary(mode=mode, frozen_blocks=n, trainable_blocks=len(blocks) - n, frozen_params=frozen,
                               trainable_params=sum(p.numel() for p in self.parameters()) - frozen)

    def train(self, mode: bool = True) -> "TextEncoder":
        """Set training mode; frozen blocks always stay in eval mode (no dropout: they are fixed functions)."""
        super().train(mode)
        for block in self.blocks()[:self._frozen_blocks]:
            block.eval()
        return self

    def frozen_digest(self) -> str:
        """sha256 of what determines the frozen part's output: class, cut, frozen weights and buffers, pooling.

        Tensors are hashed as float32 on CPU (a bf16 copy of the same weights hashes differently,
        on purpose), as ``video.trunk_digest``. Pooling and normalisation are part of the frozen
        function only in 'frozen' mode, and hashed only then.
        """
        h = hashlib.sha256()
        blocks = self.blocks()
        h.update(f"{type(self).__name__}|{self._frozen_blocks}/{len(blocks)}".encode())
        if self._frozen_blocks == len(blocks):
            h.update(f"|pooling={self.pooling.mode}|normalize={self.pooling.normalize}".encode())
        for i, block in enumerate(blocks[:self._frozen_blocks]):
            for name, t in sorted(block.state_dict().items()):
                t = t.detach().cpu().contiguous()
                t = t.float() if t.is_floating_point() else t
                h.update(f"{i}.{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()
