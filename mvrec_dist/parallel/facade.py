"""``ParallelModel``: the one object ``train/`` talks to; it hides TorchRec, DeepSpeed and collectives.

Gradient normalisation (why the numbers of 1 rank and W ranks agree exactly):
each rank computes a loss *sum* ``S_r`` over its ``n_r`` targets. The global objective is
``sum_r S_r / N`` with ``N = sum_r n_r`` (one all-reduce per step, fused with the "does any rank
still have data" flag). DeepSpeed *averages* dense gradients over ranks, and TorchRec's all-to-all
backward divides the embedding gradients by the world size too (its default ``gradient_division``;
measured: two ranks pushing gradients 1 and 2 into one row move it by 1.5 under SGD). So every rank
back-propagates ``S_r * W / N``, which makes both averages equal the gradient of the global mean.
Should TorchRec's division be switched off, the embedding outputs pass through a ``1 / W`` gradient
scale instead (``sparse_gradient_scale``).

Train steps (``train_steps``, ``parallel.pipeline``): ``simple`` runs ``train_step`` one batch at a
time; ``sparse_dist`` runs the same operations through TorchRec's ``TrainPipelineSparseDist``
(``pipeline.py``), with later batches' input dists in flight.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import nn

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.models.recommender import ITEM_FEATURE
from mvrec_dist.parallel.checkpoint import persistent_buffers
from mvrec_dist.parallel.process_groups import DistContext, all_gather_variable, all_reduce_sum
from mvrec_dist.parallel.sharding import (ShardedEmbeddings, lookup_features, shard_item_embeddings,
                                          sparse_gradient_scale)
from mvrec_dist.parallel.zero import build_engine

__all__ = ["ParallelModel", "StepStats", "SyncedStep", "GradScale", "loss_scale", "train_pipeline"]


class GradScale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


class _EngineModule(nn.Module):
    """What DeepSpeed wraps: the dense tower, with the sparse-gradient scale and the loss scale applied."""

    def __init__(self, dense: nn.Module, sparse_grad_scale: float):
        super().__init__()
        self.dense = dense
        self.sparse_grad_scale = sparse_grad_scale

    def forward(self, id_emb: torch.Tensor | None, batch: Any, loss_scale: torch.Tensor):
        if id_emb is not None and id_emb.requires_grad and self.sparse_grad_scale != 1.0:
            id_emb = GradScale.apply(id_emb, self.sparse_grad_scale)
        out = self.dense(id_emb, batch)
        return out.loss_sum * loss_scale, out


@dataclass(frozen=True)
class StepStats:
    """What one training step reports (global figures, identical on every rank)."""

    loss: float
    """Global mean loss over the step's targets (before the update)."""
    num_targets: int
    """Targets in the step over all ranks."""
    sequences: int
    """Real (non-dummy) sequences in the step over all ranks."""


class SyncedStep(NamedTuple):
    """One rank's batch for one step, after the step's counts were all-reduced."""

    source: Any
    """The loader's batch, or None on a rank whose data ran out."""
    batch: Any
    """What this rank trains on: ``source``, or a dummy batch without targets."""
    global_targets: int
    """Targets of the step over all ranks."""
    global_sequences: int
    """Real sequences of the step over all ranks."""


def loss_scale(global_targets: int, world_size: int) -> float:
    """Factor of each rank's loss sum: ``W / N`` (see the module docstring), N clamped to >= 1."""
    return world_size / max(global_targets, 1)


def train_pipeline(cfg: ParallelConfig, *, is_cuda: bool, has_id_table: bool) -> str:
    """The train step ``cfg.pipeline`` resolves to: ``'simple'`` or ``'sparse_dist'``.

    Args:
        cfg: The ``parallel`` section.
        is_cuda: Whether the ranks compute on GPUs.
        has_id_table: Whether the model has a sharded ID table (the input dist to pipeline).

    Returns:
        ``'auto'`` gives ``'sparse_dist'`` on CUDA with an ID table (it hides the input all-to-all
        and the copy to the GPU), ``'simple'`` otherwise (on CPU there is no copy or stream to overlap).
    """
    if cfg.pipeline == "sparse_dist" and not has_id_table:
        raise ValueError("parallel.pipeline: 'sparse_dist' pipelines the ID table's input dist, and this model "
                         "has no ID table (content-only item tower); use 'simple' or 'auto'")
    if cfg.pipeline == "auto":
        return "sparse_dist" if is_cuda and has_id_table else "simple"
    return cfg.pipeline


class ParallelModel:
    """A ``SequentialRecommender`` spread over ranks: sharded ID table + dense tower in a ZeRO engine.

    Args:
        model: The unsharded recommender (``item_ids`` may be on ``meta``; ``dense`` on cpu).
        cfg: The job config (parallel, train, model sections).
        ctx: Process group and device.
        total_steps: Planned optimiser steps (learning-rate schedule).
    """

    def __init__(self, model: nn.Module, cfg: TrainJobConfig, ctx: DistContext, *, total_steps: int):
        self.ctx = ctx
        self.cfg = cfg
        self.pipeline = train_pipeline(cfg.parallel, is_cuda=ctx.is_cuda, has_id_table=model.item_ids is not None)
        self.sparse: ShardedEmbeddings | None = None
        if model.item_ids is not None:
            self.sparse = shard_item_embeddings(
                model.item_ids, cfg.parallel, ctx, init_std=cfg.model.init_std, seed=cfg.train.seed,
                batch_size=cfg.batch_size_per_worker)
        torch.manual_seed(cfg.train.seed)
        # Content-only towers have no table, so nothing of TorchRec is needed (nor importable on every GPU box).
        grad_scale = sparse_gradient_scale(ctx.world_size) if self.sparse is not None else 1.0
        wrapped = _EngineModule(model.dense, grad_scale)
        self.engine = build_engine(wrapped, cfg.parallel, cfg.train, ctx, micro_batch=cfg.batch_size_per_worker,
                                   total_steps=total_steps)
        self.dense = self.engine.module.dense
        self._content_fn: Callable | None = None
        self._content_chunk = 0
        # BatchNorm running statistics of trainable video blocks move with each rank's own batch;
        # averaged every step, every rank holds the same model (evaluation, checkpoints).
        self._buffers = [b for b in persistent_buffers(self.engine.module).values() if b.is_floating_point()]

    # ------------------------------------------------------------------ training
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ID embeddings of ``ids`` [U] through the sharded table: Tensor[U, D] (collective)."""
        return self.sparse.module(lookup_features(ids))[ITEM_FEATURE].values()

    def sync_step(self, has_batch: bool, num_targets: int, sequences: int) -> tuple[bool, int, int]:
        """One all-reduce per step: does any rank have data, and the global target/sequence counts."""
        flags = torch.tensor([int(has_batch), num_targets, sequences], dtype=torch.long, device=self.ctx.device)
        total = all_reduce_sum(flags, self.ctx).tolist()
        return total[0] > 0, int(total[1]), int(total[2])

    def train_step(self, batch: Any, *, global_targets: int, global_sequences: int) -> StepStats:
        """Forward, backward and update on this rank's ``batch`` (every rank calls it every step).

        Args:
            batch: A ``SequenceBatch`` (a dummy batch with no targets on ranks out of data).
            global_targets: Targets of the step over all ranks (from ``sync_step``).
            global_sequences: Sequences of the step over all ranks (for reporting).

        Returns:
            ``StepStats`` with the global mean loss.
        """
        self.engine.train()
        batch = batch.to(self.ctx.device, non_blocking=True)
        id_emb = self.lookup(batch.unique_items) if self.sparse is not None else None
        scale = torch.tensor(loss_scale(global_targets, self.ctx.world_size), device=self.ctx.device)
        loss, out = self.engine(id_emb, batch, scale)
        self.engine.backward(loss)
        self.engine.step()
        return self._finish_step(out, global_targets, global_sequences)

    def train_steps(self, batches: Iterator[Any], dummy_batch: Callable[[], Any]
                    ) -> Iterator[tuple[Any | None, StepStats]]:
        """Train on every batch of ``batches`` with the configured train step (every rank calls it).

        Steps go on while any rank has a batch; a rank whose batches ran out trains on
        ``dummy_batch()`` meanwhile, so collectives stay matched. With ``'sparse_dist'`` up to two
        later batches are already fetched (and their counts all-reduced) when a step is yielded.

        Args:
            batches: This rank's ``SequenceBatch`` iterator (on CPU).
            dummy_batch: Makes a batch without targets.

        Returns:
            An iterator of ``(batch, StepStats)`` per step, each yielded after its update: ``batch``
            is the loader's batch of the step (its cursor may be recorded), or None when this rank
            trained on a dummy batch.
        """
        steps = self._synced_steps(batches, dummy_batch)
        if self.pipeline == "sparse_dist":
            from mvrec_dist.parallel.pipeline import StepInput, StepModule, pipelined_steps

            inputs = (StepInput.of(s, world_size=self.ctx.world_size) for s in steps)
            module = StepModule(self.sparse.module, self.engine)
            # Closed with this generator (the loop stops early): the pipeline restores the table's forward.
            with contextlib.closing(pipelined_steps(module, self.ctx.device, inputs)) as done:
                for out, step in done:
                    yield step.source, self._finish_step(out, step.global_targets, step.global_sequences)
        else:
            for step in steps:
                yield step.source, self.train_step(step.batch, global_targets=step.global_targets,
                                                   global_sequences=step.global_sequences)

    def _synced_steps(self, batches: Iterator[Any], dummy_batch: Callable[[], Any]) -> Iterator[SyncedStep]:
        """``batches`` with each step's counts all-reduced; ends on every rank when no rank has data."""
        exhausted = False
        while True:
            batch = None if exhausted else next(batches, None)
            exhausted = batch is None
            local_targets = int((batch.lengths - 1).clamp(min=0).sum()) if batch is not None else 0
            local_sequences = int((batch.lengths > 0).sum()) if batch is not None else 0
            has, targets, sequences = self.sync_step(batch is not None, local_targets, local_sequences)
            if not has:
                return
            yield SyncedStep(batch, batch if batch is not None else dummy_batch(), targets, sequences)

    def _finish_step(self, out: Any, global_targets: int, global_sequences: int) -> StepStats:
        """After a step's update: BatchNorm buffers averaged, the loss all-reduced."""
        self._average_buffers()
        loss_sum = all_reduce_sum(out.loss_sum.detach().float().reshape(1), self.ctx)
        return StepStats(loss=float(loss_sum) / max(global_targets, 1), num_targets=global_targets,
                         sequences=global_sequences)

    def _average_buffers(self) -> None:
        if not self._buffers or self.ctx.world_size == 1:
            return
        flat = torch.cat([b.detach().reshape(-1).float() for b in self._buffers])
        flat = all_reduce_sum(flat, self.ctx) / self.ctx.world_size
        offset = 0
        with torch.no_grad():
            for b in self._buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode, no autograd, and ZeRO-3 parameters gathered for the duration."""
        self.engine.eval()
        gather: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.cfg.parallel.zero_stage == 3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(self.dense.parameters()), modifier_rank=None)
        with torch.no_grad(), gather:
            yield
        self.engine.train()

    def set_content_source(self, content_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                           chunk_size: int) -> None:
        """Where evaluation reads item content (content towers); ``item_representations`` uses it.

        Args:
            content_fn: ``ids LongTensor[K] (cpu) -> (content [K_c, ...], bool mask [K])``: the content
                of the ids that have it, in order, and which do (the loader's ``attach_content`` rule).
            chunk_size: Items encoded per chunk on a rank (frames are large: a few hundred).
        """
        self._content_fn, self._content_chunk = content_fn, chunk_size

    def item_representations(self, num_items: int, *, chunk_size: int = 65_536,
                             content_fn=None) -> torch.Tensor:
        """Representations of every item id 0..N, computed once, split over ranks and all-gathered.

        Call inside ``evaluating()``. Each rank encodes a contiguous slice of ids in chunks (every
        item's content is loaded and encoded exactly once per call, on one rank); all ranks run the
        same number of chunks because ID lookups are collective.

        Args:
            num_items: N.
            chunk_size: Items encoded per chunk on a rank (the content source's own chunk size
                applies when one is set).
            content_fn: As ``set_content_source``; defaults to the source set there (None for the ID tower).

        Returns:
            Tensor[N+1, D] on this rank's device (row 0 = padding).
        """
        if content_fn is None and self._content_fn is not None:
            content_fn, chunk_size = self._content_fn, self._content_chunk
        total = num_items + 1
        w, r = self.ctx.world_size, self.ctx.rank
        lo, hi = total * r // w, total * (r + 1) // w
        most = max(total * (k + 1) // w - total * k // w for k in range(w))
        chunks = max(1, -(-most // chunk_size))
        parts = []
        for c in range(chunks):
            a, b = min(hi, lo + c * chunk_size), min(hi, lo + (c + 1) * chunk_size)
            ids = torch.arange(a, b, dtype=torch.long, device=self.ctx.device)
            id_emb = self.lookup(ids) if self.sparse is not None else None
            if b > a:
                content = mask = None
                if content_fn is not None:
                    content, mask = content_fn(ids.cpu())
                    content, mask = content.to(self.ctx.device), mask.to(self.ctx.device)
                parts.append(self.dense.item_representations(id_emb, content, mask).float())
        local = torch.cat(parts) if parts else torch.zeros(0, self.cfg.model.embedding_dim, device=self.ctx.device)
        return all_gather_variable(local, self.ctx)

    def user_states(self, history: torch.Tensor, lengths: torch.Tensor, item_repr: torch.Tensor) -> torch.Tensor:
        """User states [B, D] from right-padded histories [B, L] and all item representations [N+1, D]."""
        seq = item_repr[history.to(item_repr.device)]  # [B, L, D]
        dtype = next(self.dense.parameters()).dtype
        return self.dense.user_states(seq.to(dtype), lengths.to(item_repr.device)).float()

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``rows`` [R_r, C] in rank order (R_r may differ)."""
        return all_gather_variable(rows.to(self.ctx.device), self.ctx).cpu()

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over ranks."""
        return all_reduce_sum(values.to(self.ctx.device), self.ctx)
