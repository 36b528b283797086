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

Train steps (``train_steps``, ``parallel.pipeline``): both run the one step of ``step.py`` over
``StepModule`` (sharded table + engine). ``simple`` runs ``train_step`` one batch at a time;
``sparse_dist`` runs the same step through TorchRec's ``TrainPipelineSparseDist`` (``pipeline.py``),
with later batches' input dists in flight.

Model construction leaves the process's random state alone: the dense tower was initialised by
``build_recommender`` (seeded by its caller), the table from ``train.seed`` alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.config.parallel import ParallelConfig
from mvrec_dist.parallel.checkpoint import persistent_buffers
from mvrec_dist.parallel.pipeline import pipelined_steps
from mvrec_dist.parallel.process_groups import DistContext, all_gather_variable, all_reduce_sum
from mvrec_dist.models.recommender import ITEM_FEATURE
from mvrec_dist.models.tables import Bags, table_inputs
from mvrec_dist.parallel.sharding import ShardedEmbeddings, shard_tables, sparse_gradient_scale
from mvrec_dist.parallel.step import ScaledDense, StepInput, StepModule, StepObserver, SyncedStep, run_train_step
from mvrec_dist.parallel.zero import build_engine

__all__ = ["ParallelModel", "StepStats", "train_pipeline"]


@dataclass(frozen=True)
class StepStats:
    """What one training step reports (global figures, identical on every rank)."""

    loss: float
    """Global mean loss over the step's targets (before the update)."""
    num_targets: int
    """Targets in the step over all ranks."""
    sequences: int
    """Real (non-dummy) sequences in the step over all ranks."""


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
    """A model spread over ranks: sharded embedding tables + dense tower in a ZeRO engine.

    Args:
        model: The unsharded model: ``tables`` (``EmbeddingTables``, may be on ``meta``; None for a
            content-only tower), ``dense`` (on cpu) and ``sparse_inputs`` (its batches' sparse features).
        cfg: The job config (parallel, train, model sections).
        ctx: Process group and device.
        total_steps: Planned optimiser steps (learning-rate schedule).
    """

    def __init__(self, model: nn.Module, cfg: TrainJobConfig, ctx: DistContext, *, total_steps: int):
        self.ctx = ctx
        self.cfg = cfg
        self.pipeline = train_pipeline(cfg.parallel, is_cuda=ctx.is_cuda, has_id_table=model.tables is not None)
        self.sparse: ShardedEmbeddings | None = None
        # Whatever TorchRec and DeepSpeed draw while they set up (shard init, engine) stays out of the
        # caller's random streams: the rank setup seeds those (train.worker.build_rank).
        with torch.random.fork_rng(devices=[ctx.device] if ctx.is_cuda else []):
            if model.tables is not None:
                self.sparse = shard_tables(model.tables, cfg.parallel, ctx, batch_size=cfg.batch_size_per_worker)
            grad_scale = sparse_gradient_scale(ctx.world_size) if self.sparse is not None else 1.0
            state = tuple(f for s in (model.tables.specs if model.tables is not None else ()) if s.state
                          for f in s.features)
            self.engine = build_engine(ScaledDense(model.dense, grad_scale, state_features=state,
                                                   world_size=ctx.world_size), cfg.parallel, cfg.train, ctx,
                                       micro_batch=cfg.batch_size_per_worker, total_steps=total_steps)
        self.dense = self.engine.module.dense
        self.specs = model.tables.specs if model.tables is not None else ()
        self._step = StepModule(self.sparse.module if self.sparse is not None else None, self.engine, self.specs,
                                model.sparse_features)
        self._content_fn: Callable | None = None
        self._content_chunk = 0
        # BatchNorm running statistics of trainable video blocks move with each rank's own batch;
        # averaged every step, every rank holds the same model (evaluation, checkpoints).
        # Buffers a module declares equal on every rank by construction (``identical_on_ranks``: FRAME's clip
        # aggregates, all-reduced when refreshed) are left out: averaging them would cost an all-reduce a step.
        same = {f"{prefix}.{name}" if prefix else name for prefix, m in self.engine.module.named_modules()
                for name in getattr(m, "identical_on_ranks", ())}
        self._buffers = [b for n, b in persistent_buffers(self.engine.module).items()
                         if b.is_floating_point() and n not in same]

    # ------------------------------------------------------------------ training
    def lookup(self, ids: torch.Tensor, feature: str = ITEM_FEATURE) -> torch.Tensor:
        """Rows of ``ids`` [U] of one sequence feature through the sharded tables: Tensor[U, D] (collective).

        Args:
            ids: Row ids (may be empty; every rank must call it).
            feature: The feature (default: the item IDs; a task's user-keyed state, e.g. MTIN's ``user_id``).

        Returns:
            ``[U, D]`` the rows, in ``ids`` order (read only: nothing is written back).
        """
        return self._step.embed(table_inputs(self.specs, {feature: ids}, partial=True))[feature]

    def lookup_bags(self, features: dict[str, Bags]) -> dict[str, torch.Tensor]:
        """Pooled lookups of some pooled features (a bag each) through the sharded tables (collective).

        Args:
            features: Feature name -> ``Bags`` (every feature of a pooled kind that is looked up at all; every
                rank must call it, also with empty bags).

        Returns:
            Feature name -> ``[bags, D]`` sums (read only).
        """
        return {f: v for f, v in self._step.embed(table_inputs(self.specs, features, partial=True)).items()
                if f in features}

    def sync_step(self, has_batch: bool, num_targets: int, sequences: int) -> tuple[bool, int, int]:
        """One all-reduce per step: does any rank have data, and the global target/sequence counts."""
        flags = torch.tensor([int(has_batch), num_targets, sequences], dtype=torch.long, device=self.ctx.device)
        total = all_reduce_sum(flags, self.ctx).tolist()
        return total[0] > 0, int(total[1]), int(total[2])

    def train_step(self, batch: Any, *, global_targets: int, global_sequences: int,
                   observer: StepObserver | None = None) -> StepStats:
        """Forward, backward and update on this rank's ``batch`` (every rank calls it every step).

        Args:
            batch: A ``SequenceBatch`` (a dummy batch with no targets on ranks out of data).
            global_targets: Targets of the step over all ranks (from ``sync_step``).
            global_sequences: Sequences of the step over all ranks (for reporting).
            observer: Told when each stage of the step ends (phase timing).

        Returns:
            ``StepStats`` with the global mean loss.
        """
        self._step.train()
        synced = SyncedStep(batch, batch, global_targets, global_sequences)
        step = StepInput.of(synced, self._step, world_size=self.ctx.world_size).to(self.ctx.device, non_blocking=True)
        [out] = run_train_step(self._step, [step], observer)
        return self._finish_step(out, global_targets, global_sequences)

    def train_steps(self, batches: Iterator[Any], dummy_batch: Callable[[], Any],
                    count: Callable[[Any], tuple[int, int]]) -> Iterator[tuple[Any | None, StepStats]]:
        """Train on every batch of ``batches`` with the configured train step (every rank calls it).

        Steps go on while any rank has a batch; a rank whose batches ran out trains on
        ``dummy_batch()`` meanwhile, so collectives stay matched. With ``'sparse_dist'`` up to two
        later batches are already fetched (and their counts all-reduced) when a step is yielded.

        Args:
            batches: This rank's ``SequenceBatch`` iterator (on CPU).
            dummy_batch: Makes a batch without targets.
            count: The task's ``(targets, examples)`` of a batch (``Task.count``).

        Returns:
            An iterator of ``(batch, StepStats)`` per step, each yielded after its update: ``batch``
            is the loader's batch of the step (its cursor may be recorded), or None when this rank
            trained on a dummy batch.
        """
        steps = self._synced_steps(batches, dummy_batch, count)
        if self.pipeline == "sparse_dist":
            inputs = (StepInput.of(s, self._step, world_size=self.ctx.world_size) for s in steps)
            # Closed with this generator (the loop stops early): the pipeline restores the table's forward.
            with contextlib.closing(pipelined_steps(self._step, self.ctx.device, inputs)) as done:
                for out, step in done:
                    yield step.source, self._finish_step(out, step.global_targets, step.global_sequences)
        else:
            for step in steps:
                yield step.source, self.train_step(step.batch, global_targets=step.global_targets,
                                                   global_sequences=step.global_sequences)

    def _synced_steps(self, batches: Iterator[Any], dummy_batch: Callable[[], Any],
                      count: Callable[[Any], tuple[int, int]]) -> Iterator[SyncedStep]:
        """``batches`` with each step's counts all-reduced; ends on every rank when no rank has data."""
        exhausted = False
        while True:
            batch = None if exhausted else next(batches, None)
            exhausted = batch is None
            local_targets, local_sequences = count(batch) if batch is not None else (0, 0)
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
                parts.append(self.dense.item_representations(id_emb, content, mask, ids).float())
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
