"""Training losses: full softmax, MicroLens in-batch softmax, sampled softmax.

Every loss has the same interface, called by ``DenseTower`` once per step::

    loss(states[T, D], item_repr[U, D], labels[T], rows[T], batch) -> LossOutput(loss_sum, num_targets)

* ``states``: the user state at each target's preceding position (T targets of the batch: position
  ``j`` of ``batch.items[:, 1:]`` is a target when ``j + 1 < lengths[b]``).
* ``item_repr``: representations of ``batch.unique_items``, in that order; ``unique_items[0]`` is
  the padding id 0 (``mvrec_dist.data.batch`` guarantees it), so the candidates are rows 1..U-1.
* ``labels``: slot of each target's item in ``unique_items`` (always >= 1).
* ``rows``: the batch row each target belongs to (for masking the row's own items).

Losses return a **sum** over targets and the target count, never a mean: the parallel layer divides
by the global count across ranks, so 1 rank and W ranks give identical gradients. Logits and the loss
are computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.config.model import FullSoftmaxConfig, InBatchSoftmaxConfig, SampledSoftmaxConfig
from mvrec_dist.data.batch import SequenceBatch
from mvrec_dist.models.registry import LOSSES

__all__ = ["LossOutput", "FullSoftmaxLoss", "InBatchSoftmaxLoss", "SampledSoftmaxLoss",
           "full_softmax", "inbatch_softmax", "sampled_softmax"]


class LossOutput(NamedTuple):
    """A loss summed over targets, and how many targets it covers."""

    loss_sum: Tensor
    """``[]`` fp32 sum of the per-target losses."""
    num_targets: Tensor
    """``[]`` int64 number of targets summed."""


def _check_counts(item_train_counts: np.ndarray | Tensor, num_items: int) -> Tensor:
    counts = torch.as_tensor(np.asarray(item_train_counts), dtype=torch.long)
    if counts.shape != (num_items + 1,):
        raise ValueError(f"item_train_counts must have shape [N+1] = [{num_items + 1}], got {tuple(counts.shape)}")
    if (counts < 0).any():
        raise ValueError("item_train_counts has negative entries")
    return counts


def _own_items(batch: SequenceBatch, rows: Tensor, num_slots: int) -> Tensor:
    """``[T, U]`` bool: slot u occurs in the window of target t's row (padding slot 0 included)."""
    own = torch.zeros(batch.inverse.shape[0], num_slots, dtype=torch.bool, device=batch.inverse.device)
    own.scatter_(1, batch.inverse, True)  # B,U
    return own[rows]  # T,U


class _FusedSoftmaxCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``states @ candidates.T`` with one ``[T, C]`` buffer.

    ``F.cross_entropy(states @ candidates.T, labels, reduction='sum', label_smoothing=eps)`` keeps
    the logits, their log-softmax, a zero-filled gradient and the logits' gradient, four ``[T, C]``
    tensors; with C = N items that is most of a full-softmax step. Here the logits buffer becomes
    the softmax in place and then the gradient. Tested against the unfused expression.
    """

    @staticmethod
    def forward(ctx, states: Tensor, candidates: Tensor, labels: Tensor, eps: float) -> Tensor:
        probs = states @ candidates.T  # T,C
        lse = torch.logsumexp(probs, dim=1)  # T
        loss = (lse - probs.gather(1, labels[:, None]).squeeze(1)).sum()
        if eps:
            loss = (1 - eps) * loss + eps * (lse - probs.mean(dim=1)).sum()
        probs.sub_(lse[:, None]).exp_()  # T,C softmax, in the logits' buffer
        ctx.save_for_backward(states, candidates, labels, probs)
        ctx.eps = eps
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.used:
            raise RuntimeError("full softmax: backward through the fused loss twice (retain_graph) is unsupported")
        ctx.used = True
        states, candidates, labels, grad = ctx.saved_tensors
        if ctx.eps:
            grad.sub_(ctx.eps / grad.shape[1])
        grad[torch.arange(grad.shape[0], device=grad.device), labels] -= 1 - ctx.eps  # T,C d loss / d logits
        return (grad @ candidates) * grad_out, (grad.T @ states) * grad_out, None, None


class FullSoftmaxLoss(nn.Module):
    """Cross-entropy over every item 1..N (ID item tower; needs ``unique_items == arange(N + 1)``).

    Args:
        num_items: N.
        label_smoothing: Label smoothing of the cross-entropy, spread over the N real items.
    """

    def __init__(self, *, num_items: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_items = num_items
        self.label_smoothing = label_smoothing

    def forward(self, states: Tensor, item_repr: Tensor, labels: Tensor, rows: Tensor,
                batch: SequenceBatch) -> LossOutput:
        """See the module docstring; ``item_repr`` must hold all N+1 items."""
        if item_repr.shape[0] != self.num_items + 1:
            raise ValueError(f"full softmax needs the representations of all {self.num_items + 1} ids 0..N, got "
                             f"{item_repr.shape[0]}: collate batches with all_items=True")
        loss = _FusedSoftmaxCrossEntropy.apply(states.float(), item_repr[1:].float(), labels - 1,
                                               self.label_smoothing)
        return LossOutput(loss, torch.tensor(labels.shape[0], device=labels.device))


class InBatchSoftmaxLoss(nn.Module):
    """MicroLens VideoRec loss: softmax over the batch's unique items.

    Follows westlake-repl/MicroLens ``Code/VideoRec/SASRec/model/model.py`` (``Model.forward``):
    logits are dot products of the user state with every candidate, minus ``log p(item)`` where
    ``p`` is the item's share of train interactions (popularity / logQ correction, Yi et al. 2019),
    and candidates occurring anywhere in the row's own window are masked except the label.

    Deviation: MicroLens uses every position of the batch as a candidate, so an item appearing
    several times is a candidate several times; here each unique item is one candidate (the batch
    is deduplicated so each item is encoded once). ``temperature`` divides the dot product before
    the correction (MicroLens: 1). Items without train interactions (which a training batch cannot
    contain when the counts match its data) get the smallest non-zero probability, so the
    correction stays finite.

    Args:
        num_items: N.
        item_train_counts: ``[N+1]`` interactions per item in the train split.
        logq_correction: Subtract ``log p(item)`` from each candidate's logit.
        mask_own_items: Mask candidates in the row's own window, except the label.
        temperature: Divides the dot products.
    """

    def __init__(self, *, num_items: int, item_train_counts: np.ndarray | Tensor, logq_correction: bool = True,
                 mask_own_items: bool = True, temperature: float = 1.0) -> None:
        super().__init__()
        counts = _check_counts(item_train_counts, num_items)
        positive = counts[1:][counts[1:] > 0]
        if logq_correction and positive.numel() == 0:
            raise ValueError("in-batch softmax logQ correction: every item has a train count of 0")
        floor = int(positive.min()) if positive.numel() else 1
        # Integer buffer: a bf16 cast of the module (DeepSpeed) must not round the probabilities.
        self.register_buffer("counts", counts.clamp(min=floor), persistent=False)
        self.total = float(counts[1:].sum())
        self.logq_correction = logq_correction
        self.mask_own_items = mask_own_items
        self.temperature = temperature

    def forward(self, states: Tensor, item_repr: Tensor, labels: Tensor, rows: Tensor,
                batch: SequenceBatch) -> LossOutput:
        """See the module docstring."""
        logits = (states.float() / self.temperature) @ item_repr[1:].float().T  # T,U-1
        if self.logq_correction:
            logits = logits - torch.log(self.counts[batch.unique_items[1:]].double() / self.total).float()
        if self.mask_own_items:
            mask = _own_items(batch, rows, item_repr.shape[0])[:, 1:]  # T,U-1
            mask[torch.arange(labels.shape[0], device=labels.device), labels - 1] = False
            logits = logits.masked_fill(mask, float("-inf"))
        loss = F.cross_entropy(logits, labels - 1, reduction="sum")
        return LossOutput(loss, torch.tensor(labels.shape[0], device=labels.device))


class SampledSoftmaxLoss(nn.Module):
    """Softmax over each target's label plus K negatives shared by the batch (``batch.negatives``).

    Negatives are drawn with replacement from ``negative_sampling_probs(sampler, counts)`` (the same
    distribution collation samples from). With ``logq_correction`` each negative's logit is lowered
    by ``log(K q(item))``, the log of its expected count among the K draws (Jean et al. 2015;
    Bengio & Senecal 2008), so that ``sum_k exp(s_k) / (K q_k)`` estimates the sum over all items.
    Negatives equal to the label (accidental hits) are always masked; with ``mask_own_items``
    negatives occurring in the row's own window are masked too.

    Args:
        num_items: N.
        item_train_counts: ``[N+1]`` interactions per item in the train split.
        sampler: ``'uniform'`` or ``'popularity'``.
        logq_correction: Lower each negative's logit by ``log(K q)``.
        mask_own_items: Mask negatives occurring in the row's own window.
        temperature: Divides the dot products.
    """

    def __init__(self, *, num_items: int, item_train_counts: np.ndarray | Tensor, sampler: str = "uniform",
                 logq_correction: bool = True, mask_own_items: bool = True, temperature: float = 1.0) -> None:
        super().__init__()
        counts = _check_counts(item_train_counts, num_items)
        if sampler == "uniform":
            counts = torch.ones_like(counts)
        elif sampler != "popularity":
            raise ValueError(f"sampler must be 'uniform' or 'popularity', got {sampler!r}")
        counts[0] = 0
        if counts.sum() == 0:
            raise ValueError("popularity sampler: every item has a train count of 0")
        # Integer buffer: a bf16 cast of the module (DeepSpeed) must not round the probabilities.
        self.register_buffer("weights", counts, persistent=False)
        self.total = float(counts.sum())
        self.logq_correction = logq_correction
        self.mask_own_items = mask_own_items
        self.temperature = temperature

    def forward(self, states: Tensor, item_repr: Tensor, labels: Tensor, rows: Tensor,
                batch: SequenceBatch) -> LossOutput:
        """See the module docstring."""
        negatives = batch.negatives  # K
        states = states.float() / self.temperature
        pos = (states * item_repr[labels].float()).sum(-1, keepdim=True)  # T,1
        neg = states @ item_repr[negatives].float().T  # T,K
        if self.logq_correction:
            q = self.weights[batch.unique_items[negatives]].double() / self.total  # K
            neg = neg - torch.log(q * negatives.shape[0]).float()
        mask = negatives[None, :] == labels[:, None]  # T,K
        if self.mask_own_items:
            mask |= _own_items(batch, rows, item_repr.shape[0])[:, negatives]
        logits = torch.cat([pos, neg.masked_fill(mask, float("-inf"))], dim=1)  # T,1+K
        loss = F.cross_entropy(logits, torch.zeros_like(labels), reduction="sum")
        return LossOutput(loss, torch.tensor(labels.shape[0], device=labels.device))


@LOSSES.register(FullSoftmaxConfig)
def full_softmax(cfg: FullSoftmaxConfig, *, num_items: int, item_train_counts: np.ndarray | Tensor) -> FullSoftmaxLoss:
    """Build the full softmax (``item_train_counts`` unused)."""
    return FullSoftmaxLoss(num_items=num_items, label_smoothing=cfg.label_smoothing)


@LOSSES.register(InBatchSoftmaxConfig)
def inbatch_softmax(cfg: InBatchSoftmaxConfig, *, num_items: int,
                    item_train_counts: np.ndarray | Tensor) -> InBatchSoftmaxLoss:
    """Build the MicroLens in-batch softmax."""
    return InBatchSoftmaxLoss(num_items=num_items, item_train_counts=item_train_counts,
                              logq_correction=cfg.logq_correction, mask_own_items=cfg.mask_own_items,
                              temperature=cfg.temperature)


@LOSSES.register(SampledSoftmaxConfig)
def sampled_softmax(cfg: SampledSoftmaxConfig, *, num_items: int,
                    item_train_counts: np.ndarray | Tensor) -> SampledSoftmaxLoss:
    """Build the sampled softmax."""
    return SampledSoftmaxLoss(num_items=num_items, item_train_counts=item_train_counts, sampler=cfg.sampler,
                              logq_correction=cfg.logq_correction, mask_own_items=cfg.mask_own_items,
                              temperature=cfg.temperature)
