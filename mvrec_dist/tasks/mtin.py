"""MTIN (Jiang et al., MM'20) in the one trainer: click prediction with a sharded per-user memory.

Batch: ``MTINBatch`` (``tasks/mtin_batch.py``: one example per training window, H_pos, H_neg, the
positive and the label-0 candidates, sampled or from the user's exposures (``task.negatives``), and
the histories' timestamps under ``mtin.time_distance='timestamp'``). Sparse features: the batch's
unique items in ``item`` and its users' rows in ``mtin_memory``
(``models.user_encoders.mtin.memory_table_spec``: ``2 s`` rows of width d per user, a state table in
the item table's ``EmbeddingCollection``, row-wise shardable). Model: ``MTINTower`` (the ID item
tower, ``MTIN``, Eq. 12). Evaluation: MicroLens protocol and MTIN's metrics over the full-ranking list.

**The memory** (``TableSpec.state``). Each step looks up the rows of the batch's users with the item
rows (one input all-to-all), MTIN reads them as M_u and returns the updated memory; the tower's
``TaskOutput.write_back = -<rows, delta.detach()>`` with ``delta = new - old`` (0 for dummy rows) has
value 0 and gradient ``-delta`` on each row. ``parallel/`` gives the table fused SGD at learning rate
1 without decay and undoes the ranks' gradient average on it, so the backward's own all-to-all
carries the write to each row's owner, which applies ``row <- row + sum of its deltas``: no extra
collective, no second update path. Semantics of a step, on any world size and in any order: every
occurrence of a user (two windows in one batch, or on two ranks) reads the memory as it was at the
step's start, and the row becomes ``old + sum of the occurrences' deltas`` (float sums in another
order differ by rounding only). The rows are part of the tables' DCP checkpoint; SGD has no state,
so a resume restores the memory exactly. Evaluation only reads it.

**L2 (lambda of Eq. 12)** is the explicit term ``lambda * ||Theta||^2`` added to the loss *sum* once
per counted target (``n * lambda ||Theta||^2``): after the normalisation by the global target count
and DeepSpeed's rank average its gradient is exactly ``2 lambda Theta`` once per step, on any world
size, and the logged loss is the mean log loss plus ``lambda ||Theta||^2`` (Eq. 12 per target). It
reads whole parameters in the forward, so ZeRO stages 0-2 only (``TrainJobConfig`` refuses 3 with
``lambda > 0``; MTIN's dense tower is small).

**Full ranking** (``evaluate``): the item half of the scorer's first layer once per evaluation for
every item (``MTINScorer.item_part``), the user half once per user (memory looked up, never written),
then ``score_all`` in ``task.user_chunk x task.item_chunk`` blocks; ranks, HR/NDCG and AUC/P/R/F1 by
``eval.metrics`` and ``eval.scored_ranking``. Evaluation users' H_neg (``mtin_batch.eval_inputs``):
``L_neg`` items outside their history and target, keyed by ``(train.seed, split, user)``, or with
exposures their last ``L_neg`` exposures before the target's time; with timestamps, the stored times
of history and exposures (valid/test shards hold them).

**Data checks** (``MTINData``): ``negatives: exposures`` needs a labelled dataset, ``time_distance:
timestamp`` one with timestamps in every split; otherwise the rank stops before training with a
``ManifestError`` naming the dataset. Results carry ``negatives`` and, with exposures, the counts of
``mtin_batch.DRAW_COUNTS`` (over the run, resumes included) and ``exposure_empty_users``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from mvrec_dist.data.exposures import UserRows
from mvrec_dist.data.loader import TrainData
from mvrec_dist.data.manifest import ManifestError
from mvrec_dist.data.plan import eval_plan
from mvrec_dist.eval.metrics import metric_sums
from mvrec_dist.eval.progress import EvalProgress
from mvrec_dist.eval.scored_ranking import click_metric_sums, negatives_per_user, ranks_of_scores
from mvrec_dist.models.recommender import ITEM_FEATURE, TaskOutput
from mvrec_dist.models.user_encoders.mtin import (MTIN, USER_FEATURE, History, click_loss_sum, memory_row_ids,
                                                  memory_table_spec)
from mvrec_dist.tasks.base import Task
from mvrec_dist.tasks.mtin_batch import DRAW_COUNTS, MTINBatch, MTINCollate, eval_inputs

__all__ = ["MTINTower", "MTINData", "MTINTask"]


class MTINTower(nn.Module):
    """The dense tower of the MTIN task: ID item tower, ``MTIN``, the loss and the memory's write-back.

    Args:
        item_tower: ``ItemTower`` in ``id`` mode (``[U, D]`` representations).
        mtin: The unsharded model.
        l2: lambda of Eq. 12.
    """

    def __init__(self, *, item_tower: nn.Module, mtin: MTIN, l2: float):
        super().__init__()
        self.item_tower = item_tower
        self.mtin = mtin
        self.l2 = l2

    @property
    def dtype(self) -> torch.dtype:
        """The tower's parameter dtype (fp32, or bf16 under DeepSpeed bf16)."""
        return self.mtin.scorer.combine.weight.dtype

    def item_representations(self, id_emb: Tensor | None, content: Tensor | None,
                             content_mask: Tensor | None = None, item_ids: Tensor | None = None) -> Tensor:
        """``[U, D]`` item representations (``DenseTower.item_representations``), in the tower's dtype."""
        if id_emb is not None and id_emb.is_floating_point():
            id_emb = id_emb.to(self.dtype)
        return self.item_tower(id_emb, content, content_mask, item_ids)

    def forward(self, embeddings: dict[str, Tensor], batch: MTINBatch) -> TaskOutput:
        """One step's loss (Eq. 12 summed over the batch's real candidates) and the memory's write-back.

        Args:
            embeddings: ``item_id`` -> ``[U, D]`` rows of ``batch.unique_items``; ``user_id`` -> ``[B 2 s, D]``
                memory rows of ``batch.users`` (``memory_row_ids``).
            batch: The step's examples.

        Returns:
            ``TaskOutput``: targets are the real (row, candidate) pairs; ``write_back`` as the module
            docstring says.
        """
        items = self.item_representations(embeddings[ITEM_FEATURE], batch.content, batch.content_mask,
                                          batch.unique_items)  # U,D
        rows = embeddings[USER_FEATURE].reshape(len(batch.users), -1)  # B,2sD (2s rows of D per user)
        positive = History(items[batch.positive_slots], batch.positive > 0, batch.positive_times)
        negative = History(items[batch.negative_slots], batch.negative > 0, batch.negative_times)
        out = self.mtin(positive, negative, rows, items[batch.candidate_slots])  # logits B,C
        real = batch.real_rows  # B
        valid = (batch.candidates > 0) & real[:, None]  # B,C
        labels = torch.zeros_like(out.logits, dtype=torch.float32)
        labels[:, 0] = 1.0  # column 0 is the window's last item
        n = valid.sum()
        loss_sum = click_loss_sum(out.logits, labels, valid) + self.l2 * self.mtin.l2_penalty() * n
        delta = (out.memory.reshape(rows.shape).float() - rows.detach().float()) * real[:, None]  # B,2sD
        # Value 0, gradient -delta on every looked-up row: the table's SGD at lr 1 adds delta.
        write_back = -((rows.float() - rows.detach().float()) * delta).sum()
        return TaskOutput(loss_sum, n, real.sum().detach(), write_back)


class MTINData:
    """One rank's MTIN data: the next-item window stream (cursors, plans, exact resume on any world size)
    with MTIN's collate, and the evaluation users of the MicroLens splits.

    Args:
        cfg: The job config (``task`` is an ``MTINTaskConfig``).
        manifest: The dataset manifest.
        rank: This rank.
        world_size: Ranks.
        pin_memory: Pin batches (CUDA).
        content_store: Item content (unused by MTIN in this version; None).
        gather: The all-gather the stream's ``state_dict`` needs on several ranks.

    Raises:
        ManifestError: when the dataset lacks what ``task.negatives`` or ``mtin.time_distance`` reads
            (``dataset_problems``).
    """

    def __init__(self, cfg: Any, manifest: Any, *, rank: int, world_size: int, pin_memory: bool = False,
                 content_store: Any = None, gather: Callable[[Tensor], Tensor] | None = None):
        t = cfg.task
        problems = dataset_problems(t, manifest)
        if problems:
            raise ManifestError("; ".join(problems))
        self.negatives, self.times = t.negatives, t.mtin.time_distance == "timestamp"
        self.negative_length = t.negative_length or cfg.data.max_seq_len
        self.collate = MTINCollate(num_items=manifest.num_items, max_seq_len=cfg.data.max_seq_len,
                                   negative_length=self.negative_length, num_negatives=t.num_negatives,
                                   seed=cfg.train.seed, negatives=t.negatives, times=self.times)
        self.stream = TrainData(cfg, manifest, rank=rank, world_size=world_size, pin_memory=pin_memory,
                                content_store=content_store, gather=gather, collate=self.collate)
        self.rank, self.world_size, self.num_items = rank, world_size, manifest.num_items
        self.manifest, self.gather = manifest, gather
        self.content_store = content_store
        self.seed = cfg.train.seed
        self.draws = np.zeros(len(DRAW_COUNTS), dtype=np.int64)  # this rank's, plus the loaded totals on rank 0
        self._eval_rows: dict[str, tuple[UserRows | None, UserRows | None]] = {}
        self._empty_users: dict[str, int] = {}

    def train_batches(self, epoch: int):
        """This rank's ``MTINBatch``es of (the rest of) ``epoch`` (``TrainData.train_batches``)."""
        return self.stream.train_batches(epoch)

    def record(self, batch: MTINBatch | None) -> None:
        """``batch`` was trained on (its cursor is the stream's position; its exposure counts are added)."""
        self.stream.record(batch)
        if batch is not None and batch.draws is not None:
            self.draws += batch.draws

    def end_epoch(self) -> None:
        """The epoch is done."""
        self.stream.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        """The stream's position (collective mid-epoch; ``TrainData.state_dict``) and, with exposures, the
        run's exposure counts summed over ranks (collective)."""
        state = self.stream.state_dict()
        if self.negatives == "exposures":
            rows = torch.from_numpy(self.draws).reshape(1, -1)
            if self.world_size > 1:
                rows = self.gather(rows).cpu()
            state["exposure_draws"] = dict(zip(DRAW_COUNTS, rows.sum(0).tolist()))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` output (any world size; rank 0 carries the loaded counts on)."""
        self.stream.load_state_dict(state)
        saved = (state or {}).get("exposure_draws") or {}
        self.draws = np.array([saved.get(k, 0) if self.rank == 0 else 0 for k in DRAW_COUNTS], dtype=np.int64)

    def describe_state(self) -> str:
        """The loaded position, for the resume message."""
        return self.stream.describe_state()

    def dummy_batch(self) -> MTINBatch:
        """One padding row: no targets, no memory write."""
        return self.collate.dummy()

    def estimated_steps_per_epoch(self) -> int:
        """Steps of one epoch (one example per window)."""
        return self.stream.estimated_steps_per_epoch()

    def eval_batches(self, split: str) -> list:
        """This rank's slice of ``split``'s users (``EvalBatch``es, cached)."""
        return self.stream.eval_batches(split)

    def eval_inputs(self, split: str, batch: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """H_neg of an evaluation batch and the histories' times (``mtin_batch.eval_inputs``; CPU).

        The split's timestamps and the users' exposures are read once per split, for this rank's users.
        """
        if split not in self._eval_rows:
            chunks = eval_plan([s.samples for s in self.manifest.shards(split)],
                               num_consumers=self.world_size)[self.rank]
            exposures = self.negatives == "exposures"
            split_rows = (UserRows(self.manifest, split, chunks, jagged_members=("ts.npy",),
                                   row_members=("targets_ts.npy",)) if self.times or exposures else None)
            exposure_rows = (UserRows(self.manifest, "exposures", chunks, jagged_members=("items.npy", "ts.npy"))
                             if exposures else None)
            self._eval_rows[split] = (split_rows, exposure_rows)
        split_rows, exposure_rows = self._eval_rows[split]
        negative, positive_times, negative_times, empty = eval_inputs(
            batch=batch, split=split, seed=self.seed, length=self.negative_length, num_items=self.num_items,
            negatives=self.negatives, times=self.times, split_rows=split_rows, exposure_rows=exposure_rows)
        self._empty_users[split] = self._empty_users.get(split, 0) + empty
        return negative, positive_times, negative_times

    def negatives_report(self, split: str, sum_over_ranks: Callable[[Tensor], Tensor]) -> dict[str, Any]:
        """How H_neg and the label-0 candidates were formed, for the result (collective with exposures).

        Returns:
            ``negatives`` (``task.negatives``) and, with exposures, ``DRAW_COUNTS`` of the training so
            far and ``exposure_empty_users``: evaluation users of ``split`` without an exposure before
            their target (counted by the last ``eval_inputs`` pass over the split).
        """
        out: dict[str, Any] = {"negatives": self.negatives}
        if self.negatives == "exposures":
            local = np.append(self.draws, self._empty_users.pop(split, 0))
            totals = sum_over_ranks(torch.from_numpy(local.astype(np.float64))).cpu().tolist()
            out.update({k: int(v) for k, v in zip(DRAW_COUNTS + ("exposure_empty_users",), totals)})
        return out


def dataset_problems(task: Any, manifest: Any) -> list[str]:
    """Why the dataset cannot feed ``task`` (an ``MTINTaskConfig``): exposures or timestamps it lacks.

    Args:
        task: The task config.
        manifest: The dataset's manifest.

    Returns:
        One message per problem, naming the dataset and the setting; empty when it can.
    """
    problems, fmt = [], manifest.input_format or "unknown format"
    if task.negatives == "exposures" and manifest.labels is None:
        problems.append(f"{manifest.root}: task.negatives=exposures needs shown-but-not-clicked rows, and this "
                        f"dataset has none (its {fmt} input had no label column; MicroLens records comments "
                        "only); ingest csv input with a label column (user,item,timestamp,label) or set "
                        "task.negatives=sampled")
    missing = sorted({"train", "valid", "test"} - manifest.timestamp_splits)
    if task.mtin.time_distance == "timestamp" and missing:
        why = (f"its {fmt} input has no timestamps" if fmt != "pairs_csv" else
               "it was ingested before valid/test timestamps were stored; re-ingest it with ingest.overwrite=true")
        problems.append(f"{manifest.root}: task.mtin.time_distance=timestamp needs timestamps in train, valid and "
                        f"test, and {', '.join(missing)} hold none ({why}); set task.mtin.time_distance=position")
    return problems


def _jagged_slice(values: Tensor, offsets: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """Rows ``lo:hi`` of a jagged tensor: ``(values, offsets)`` rebased to start at 0."""
    return values[int(offsets[lo]):int(offsets[hi])], offsets[lo:hi + 1] - offsets[lo]


class MTINTask(Task):
    """``task.name=mtin``: see the module docstring."""

    examples_key = "users"

    def dataset_problems(self, manifest: Any) -> list[str]:
        """The exposures or timestamps ``task.negatives`` / ``mtin.time_distance`` read and the dataset lacks."""
        return dataset_problems(self.cfg.task, manifest)

    def table_specs(self, manifest: Any) -> tuple:
        """The item table and the memory table ``mtin_memory`` (keyed by user, a state table)."""
        m = self.cfg.model
        return super().table_specs(manifest) + (
            memory_table_spec(self.cfg.task.mtin, num_users=manifest.num_users, embedding_dim=m.embedding_dim,
                              init_std=m.init_std, seed=self.cfg.train.seed + 1),)

    def sparse_features(self, batch: MTINBatch) -> dict[str, Tensor]:
        """The batch's unique items (``item_id``) and its users' ``2 s`` memory rows each (``user_id``)."""
        return {ITEM_FEATURE: batch.unique_items, USER_FEATURE: memory_row_ids(batch.users, self.cfg.task.mtin)}

    def build_model(self, manifest: Any, *, device: str | torch.device) -> nn.Module:
        """The two tables (on ``device``, normally meta) and an ``MTINTower`` (drawn from the seeded global RNG)."""
        from mvrec_dist.models.item_tower import ItemTower
        from mvrec_dist.models.recommender import SequentialRecommender
        from mvrec_dist.models.tables import EmbeddingTables
        from mvrec_dist.models.user_encoders.mtin import mtin

        m, t = self.cfg.model, self.cfg.task
        dense = MTINTower(item_tower=ItemTower(mode="id", embedding_dim=m.embedding_dim),
                          mtin=mtin(t.mtin, embedding_dim=m.embedding_dim, init_std=m.init_std), l2=t.mtin.l2)
        return SequentialRecommender(tables=EmbeddingTables(self.table_specs(manifest), device=device), dense=dense,
                                     features=self.sparse_features)

    def build_data(self, manifest: Any, *, rank: int, world_size: int, pin_memory: bool, content_store: Any,
                   gather: Callable[[Tensor], Tensor] | None) -> MTINData:
        """The rank's ``MTINData``."""
        return MTINData(self.cfg, manifest, rank=rank, world_size=world_size, pin_memory=pin_memory,
                        content_store=content_store, gather=gather)

    def count(self, batch: MTINBatch) -> tuple[int, int]:
        """Targets: the real (row, candidate) pairs; examples: the real rows."""
        real = batch.real_rows
        return int(((batch.candidates > 0) & real[:, None]).sum()), int(real.sum())

    def evaluate(self, model: Any, data: MTINData, split: str, log: Any | None = None) -> dict[str, Any]:
        """HR/NDCG@``eval.ks`` and AUC, Precision/Recall/F1@``eval.click_cutoff`` (default 50) of ``split`` (collective).

        Returns:
            The metrics averaged over the split's users, ``users``, ``seconds``, ``negatives`` (how
            H_neg and the label-0 candidates were formed) and, with exposures, their counts
            (``MTINData.negatives_report``).
        """
        start = time.perf_counter()
        t, ks = self.cfg.task, self.cfg.eval.ks
        batches = data.eval_batches(split)
        total = sum(int(b.targets.numel()) for b in batches)
        progress = EvalProgress(log, split, data.world_size, "users") if log is not None else None
        names, cutoff = [m.name for m in self.cfg.metrics], self.cfg.click_cutoff
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        with model.evaluating():
            mtin = model.dense.mtin
            item_repr = model.item_representations(data.num_items).to(model.dense.dtype)  # N+1,D (collective)
            device = item_repr.device
            item_part = mtin.scorer.item_part(item_repr)  # N+1,2,H: once per evaluation
            # Memory lookups are collective: every rank runs as many as the rank with the most batches.
            steps = int(model.gather_rows(torch.tensor([[len(batches)]])).max())
            done = 0
            for i in range(steps):
                batch = batches[i] if i < len(batches) else None
                users = batch.users if batch is not None else torch.zeros(0, dtype=torch.long)
                memory = model.lookup(memory_row_ids(users.to(device), t.mtin), USER_FEATURE)  # B*2s,D
                memory = memory.reshape(len(users), -1)  # B,2sD
                if batch is None:
                    continue
                negative, positive_times, negative_times = (
                    None if x is None else x.to(device) for x in data.eval_inputs(split, batch))
                history = batch.history.to(device)
                state = mtin.user_state(History(item_repr[history], history > 0, positive_times),
                                        History(item_repr[negative], negative > 0, negative_times),
                                        memory.to(item_repr.dtype))
                user_part = mtin.scorer.user_part(state.q)  # B,2,H
                for lo in range(0, len(batch.users), t.user_chunk):
                    hi = min(lo + t.user_chunk, len(batch.users))
                    values, offsets = _jagged_slice(batch.history_values, batch.history_offsets, lo, hi)
                    scores = mtin.scorer.score_all(user_part[lo:hi], item_part, item_chunk=t.item_chunk)  # b,N+1
                    ranks = ranks_of_scores(scores, batch.targets[lo:hi], values, offsets).cpu()
                    part = {**metric_sums(ranks, ks), **click_metric_sums(
                        ranks, negatives_per_user(batch.targets[lo:hi], values, offsets, data.num_items), cutoff)}
                    sums[:-1] += torch.tensor([part[n] for n in names], dtype=torch.float64)
                sums[-1] += len(batch.users)
                done += len(batch.users)
                if progress is not None:
                    progress(done, total)
        totals = model.sum_over_ranks(sums).cpu()
        users = int(totals[-1])
        result: dict[str, Any] = {n: float(totals[i]) / max(users, 1) for i, n in enumerate(names)}
        result.update(users=users, seconds=time.perf_counter() - start,
                      **data.negatives_report(split, model.sum_over_ranks))
        return result
