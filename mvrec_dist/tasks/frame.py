"""FRAME (SIGIR'23) in the one trainer: clip-level interests from user x clip graphs, sharded pooled lookups.

Batch: ``FRAMEBatch`` (``tasks/frame_batch.py``: every play of a window but its first, clip labels, each
row's user's graph rows as weighted bags, in-batch BPR negatives). Table: ``frame_clip`` (``(N+1) 4`` rows,
a weighted pooled ``EmbeddingBagCollection`` table read by ``clip_pos`` and ``clip_neg``; sharded like any
table). Dense tower: ``FRAMETower`` around ``models.frame.FRAME``.

**The transposed aggregation** ``A^T U`` (users per clip, the users spread over ranks and nodes): ``refresh``
runs on every rank with the same step. Rank ``r`` reads its share of the train split's users (the
unshuffled ``eval_plan`` of the train split, ``FRAMEData.graph_chunks``: each user on exactly one rank),
looks up their ``A_pos E`` / ``A_neg E`` in chunks of ``task.refresh_chunk`` (collective: every rank runs as
many lookups as the rank with the most chunks), forms the interests and adds ``A[u, c] u`` into dense
``[(N+1) 4, D]`` sums; one all-reduce adds the ranks' sums, and every rank holds the same aggregates. Exact:
the result equals the single-process ``A^T U`` of the same parameters (tested, float32 sums in another
order). Cost per refresh: every train play's clip edges once and one all-reduce of ``2 (N+1) 4 D`` floats;
``refresh_every_steps`` trades staleness for that cost. The buffers are checkpointed; a resume at a step that
is a refresh step recomputes them from the same parameters.

**Evaluation** (``evaluate``): each user's interest from the graph rows of their evaluation history (train
plays; for test also the valid play), with its play times where the dataset has them; full ranking of
every video's score (``FRAME.score_all``), history excluded, HR/NDCG@K (``eval.metrics``); FRAME's metrics
over the target (label 1) and ``task.eval_negatives`` videos the user never played (label 0, keyed by
``(train.seed, split, user)``), ``eval.candidate_metrics`` (the global AUC over all ranks' candidates).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvrec_dist.data.clip_features import ClipFeatureRows, clip_feature_dim, clip_feature_problems
from mvrec_dist.data.clip_graphs import CLIPS, play_ratios
from mvrec_dist.data.exposures import UserRows
from mvrec_dist.data.loader import TrainData
from mvrec_dist.data.plan import eval_plan
from mvrec_dist.data.reader import ShardReader
from mvrec_dist.eval.candidate_metrics import CandidateScores, draw_candidates
from mvrec_dist.eval.metrics import metric_sums
from mvrec_dist.eval.progress import EvalProgress
from mvrec_dist.eval.scored_ranking import ranks_of_scores
from mvrec_dist.models.frame import CLIP_NEG_FEATURE, CLIP_POS_FEATURE, CLIP_TABLE, FRAME
from mvrec_dist.models.recommender import TaskOutput
from mvrec_dist.models.tables import Bags, TableSpec
from mvrec_dist.tasks.base import Task
from mvrec_dist.tasks.frame_batch import FRAMEBatch, FRAMECollate, user_graph_rows

__all__ = ["FRAMETower", "FRAMEData", "FRAMETask"]


def _bags(rows: tuple[np.ndarray, ...]) -> Bags:
    ids, lengths, weights = rows
    return Bags(ids=torch.from_numpy(ids), lengths=torch.from_numpy(lengths), weights=torch.from_numpy(weights))


class FRAMETower(nn.Module):
    """The dense tower of the FRAME task: ``FRAME`` and the step's loss.

    Args:
        frame: The model.
        bpr_weight: Weight of the BPR term.
    """

    def __init__(self, *, frame: FRAME, bpr_weight: float):
        super().__init__()
        self.frame = frame
        self.bpr_weight = bpr_weight

    def forward(self, embeddings: dict[str, Tensor], batch: FRAMEBatch) -> TaskOutput:
        """The step's loss: the clip BCE over labelled clips plus ``bpr_weight`` x the BPR of each play's video
        score against its negative's (``FRAMEBatch.negatives``) (``-log sigmoid(s(u, v) - s(u, v-))``), summed.

        Args:
            embeddings: ``clip_pos`` -> ``[B, D]`` ``(A_pos E)`` of the rows' users (``clip_neg`` is looked up
                with it: one weighted module; FRAME's score reads the positive interest only).
            batch: The step's examples.

        Returns:
            ``TaskOutput``: the targets are the labelled clips.
        """
        f = self.frame
        users = f.interest(embeddings[CLIP_POS_FEATURE])[batch.example_rows]  # E,D
        logits = f.clip_logits(batch.items, users)  # E,C
        loss = f.loss_sum(logits, batch.labels, batch.positive_weights)
        paired = batch.negatives > 0
        if self.bpr_weight:
            margin = logits.sum(-1)[paired] - f.video_scores(batch.negatives[paired], users[paired])
            loss = loss + self.bpr_weight * F.softplus(-margin).sum()
        targets = (batch.labels >= 0).sum()
        return TaskOutput(loss, targets, (batch.users > 0).sum().detach())


class FRAMEData:
    """One rank's FRAME data: the window stream with FRAME's collate, the rank's graph rows for ``refresh``,
    and the evaluation users (see the module docstring).

    Args:
        cfg: The job config (``task`` is a ``FRAMETaskConfig``).
        manifest: The dataset manifest.
        rank: This rank.
        world_size: Ranks.
        pin_memory: Pin batches (CUDA).
        content_store: Unused (FRAME's clips are the table's rows); None.
        gather: The all-gather the stream's ``state_dict`` needs on several ranks.
    """

    def __init__(self, cfg: Any, manifest: Any, *, rank: int, world_size: int, pin_memory: bool = False,
                 content_store: Any = None, gather: Callable[[Tensor], Tensor] | None = None):
        t = cfg.task
        self.plays = manifest.plays is not None
        self.collate = FRAMECollate(num_items=manifest.num_items, plays=self.plays, rule=t.graph_rule,
                                    seed=cfg.train.seed, bpr_negatives=t.bpr_negatives)
        self.stream = TrainData(cfg, manifest, rank=rank, world_size=world_size, pin_memory=pin_memory,
                                content_store=None, gather=gather, collate=self.collate)
        self.rank, self.world_size, self.num_items = rank, world_size, manifest.num_items
        self.manifest, self.seed, self.task = manifest, cfg.train.seed, t
        self.content_store = None
        self._graph_chunks: list[tuple[Bags, Bags]] | None = None
        self._eval_graphs: dict[str, list[tuple[Bags, Bags]]] = {}

    # The stream (TaskData).
    def train_batches(self, epoch: int):
        """This rank's ``FRAMEBatch``es of (the rest of) ``epoch``."""
        return self.stream.train_batches(epoch)

    def record(self, batch: FRAMEBatch | None) -> None:
        """``batch`` was trained on."""
        self.stream.record(batch)

    def end_epoch(self) -> None:
        """The epoch is done."""
        self.stream.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        """The stream's position (collective mid-epoch)."""
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` output (any world size)."""
        self.stream.load_state_dict(state)

    def describe_state(self) -> str:
        """The loaded position, for the resume message."""
        return self.stream.describe_state()

    def dummy_batch(self) -> FRAMEBatch:
        """One row without examples."""
        return self.collate.dummy()

    def estimated_steps_per_epoch(self) -> int:
        """Steps of one epoch."""
        return self.stream.estimated_steps_per_epoch()

    # The refresh pass.
    def graph_chunks(self) -> list[tuple[Bags, Bags]]:
        """This rank's share of every user's ``A_pos`` / ``A_neg`` rows, ``task.refresh_chunk`` users per chunk
        (read once: the graphs do not change)."""
        if self._graph_chunks is None:
            members = {"items.npy", "json"} | ({"play.npy", "duration.npy"} if self.plays else set())
            reader = ShardReader(self.manifest.root, "train", members=members)
            chunks = eval_plan(reader.shard_counts, num_consumers=self.world_size)[self.rank]
            sequences, ratios = [], []
            for _, sample in reader.iter_chunks(chunks):
                m = sample.members
                sequences.append(m["items.npy"])
                ratios.append(play_ratios(m["play.npy"], m["duration.npy"]) if self.plays
                              else np.ones(len(m["items.npy"])))
            size = self.task.refresh_chunk
            self._graph_chunks = []
            for lo in range(0, len(sequences), size):
                pos, neg = user_graph_rows(sequences[lo:lo + size], ratios[lo:lo + size], num_items=self.num_items,
                                           rule=self.task.graph_rule)
                self._graph_chunks.append((_bags(pos), _bags(neg)))
        return self._graph_chunks

    # Evaluation.
    def eval_batches(self, split: str) -> list:
        """This rank's slice of ``split``'s users (``EvalBatch``es, cached)."""
        return self.stream.eval_batches(split)

    def eval_graph_chunks(self, split: str) -> list[tuple[Bags, Bags]]:
        """Per ``eval_batches(split)`` batch, its users' graph rows from their evaluation histories (with the
        stored play times, if any); built once per split (the histories do not change between evaluations)."""
        if split not in self._eval_graphs:
            rows = None
            if self.plays:
                chunks = eval_plan([s.samples for s in self.manifest.shards(split)],
                                   num_consumers=self.world_size)[self.rank]
                rows = UserRows(self.manifest, split, chunks, jagged_members=("play.npy", "duration.npy"))
            self._eval_graphs[split] = [self._graph_rows(split, b, rows) for b in self.eval_batches(split)]
        return self._eval_graphs[split]

    def _graph_rows(self, split: str, batch: Any, rows: UserRows | None) -> tuple[Bags, Bags]:
        offsets = batch.history_offsets.numpy()
        values = batch.history_values.numpy()
        sequences = [values[offsets[b]:offsets[b + 1]] for b in range(len(batch.users))]
        if rows is not None:
            users = batch.users.numpy()
            play, at = rows.gather(users, "play.npy")
            duration, _ = rows.gather(users, "duration.npy")
            if not np.array_equal(at, offsets):
                raise ValueError(f"{split}: the stored play times do not line up with the histories")
            ratios = [play_ratios(play[at[b]:at[b + 1]], duration[at[b]:at[b + 1]]) for b in range(len(users))]
        else:
            ratios = [np.ones(len(s)) for s in sequences]
        pos, neg = user_graph_rows(sequences, ratios, num_items=self.num_items, rule=self.task.graph_rule)
        return _bags(pos), _bags(neg)

    def eval_candidates(self, split: str, batch: Any) -> Tensor:
        """``[B, 1 + eval_negatives]``: each user's target, then videos the user never played (keyed draws)."""
        return draw_candidates(seed=self.seed, split=split, users=batch.users.numpy(), targets=batch.targets.numpy(),
                               history_values=batch.history_values.numpy(),
                               history_offsets=batch.history_offsets.numpy(), negatives=self.task.eval_negatives,
                               num_items=self.num_items)


def _empty_bags(device: torch.device) -> Bags:
    return Bags(ids=torch.zeros(0, dtype=torch.long, device=device), lengths=torch.zeros(1, dtype=torch.long,
                                                                                         device=device),
                weights=torch.zeros(0, device=device))


class FRAMETask(Task):
    """``task.name=frame``: see the module docstring."""

    examples_key = "users"

    def _clip_features(self) -> str | None:
        return self.cfg.data.content_features if self.cfg.task.clip_init == "features" else None

    def table_specs(self, manifest: Any) -> tuple:
        """The clip table only (FRAME has no item ID embeddings): ``model.embedding_dim`` wide and seeded, or the
        clips' visual features (``task.clip_init=features``, ``data/clip_features.py``)."""
        m, features = self.cfg.model, self._clip_features()
        dim, rows = m.embedding_dim, None
        if features is not None:
            dim, rows = clip_feature_dim(features), ClipFeatureRows(features, CLIPS)
        return (TableSpec(name=CLIP_TABLE, num_embeddings=(manifest.num_items + 1) * CLIPS,
                          embedding_dim=dim, features=(CLIP_POS_FEATURE, CLIP_NEG_FEATURE), pooled=True,
                          weighted=True, keyed_by="clip", init_std=m.init_std, seed=self.cfg.train.seed + 2,
                          init_rows=rows),)

    def dataset_problems(self, manifest: Any) -> list[str]:
        """With ``task.clip_init=features``: the dataset's clips and their feature store (``clip_feature_problems``)."""
        features = self._clip_features()
        return [] if features is None else clip_feature_problems(features, manifest, CLIPS)

    def sparse_features(self, batch: FRAMEBatch) -> dict[str, Bags]:
        """The rows' ``A_pos`` and ``A_neg`` bags."""
        return {CLIP_POS_FEATURE: Bags(batch.pos_ids, batch.pos_lengths, batch.pos_weights),
                CLIP_NEG_FEATURE: Bags(batch.neg_ids, batch.neg_lengths, batch.neg_weights)}

    def build_model(self, manifest: Any, *, device: str | torch.device) -> nn.Module:
        """The clip table (on ``device``, normally meta) and a ``FRAMETower`` (drawn from the seeded global RNG)."""
        from mvrec_dist.models.recommender import SequentialRecommender
        from mvrec_dist.models.tables import EmbeddingTables

        m, t = self.cfg.model, self.cfg.task
        specs = self.table_specs(manifest)
        frame = FRAME(num_clips=(manifest.num_items + 1) * CLIPS, dim=m.embedding_dim, hidden=t.hidden,
                      clip_dim=specs[0].embedding_dim)
        return SequentialRecommender(tables=EmbeddingTables(specs, device=device),
                                     dense=FRAMETower(frame=frame, bpr_weight=t.bpr_weight),
                                     features=self.sparse_features)

    def build_data(self, manifest: Any, *, rank: int, world_size: int, pin_memory: bool, content_store: Any,
                   gather: Callable[[Tensor], Tensor] | None) -> FRAMEData:
        """The rank's ``FRAMEData``."""
        return FRAMEData(self.cfg, manifest, rank=rank, world_size=world_size, pin_memory=pin_memory,
                         content_store=content_store, gather=gather)

    def count(self, batch: FRAMEBatch) -> tuple[int, int]:
        """Targets: the labelled clips; examples: the plays."""
        return batch.num_targets, batch.num_examples

    def _lookup_chunks(self, model: Any, chunks: list[tuple[Bags, Bags]]):
        """``(u_pos, u_neg, pos bags, neg bags)`` of each chunk; as many collective lookups on every rank."""
        device = model.ctx.device
        steps = int(model.gather_rows(torch.tensor([[len(chunks)]])).max())
        for i in range(steps):
            pos, neg = chunks[i] if i < len(chunks) else (_empty_bags(device), _empty_bags(device))
            pos, neg = (Bags(b.ids.to(device), b.lengths.to(device), b.weights.to(device)) for b in (pos, neg))
            emb = model.lookup_bags({CLIP_POS_FEATURE: pos, CLIP_NEG_FEATURE: neg})
            frame = model.dense.frame
            yield frame.interest(emb[CLIP_POS_FEATURE]), frame.interest(emb[CLIP_NEG_FEATURE]), pos, neg

    def refresh(self, model: Any, data: FRAMEData, step: int) -> None:
        """Recompute the clip aggregates ``A^T U`` every ``task.refresh_every_steps`` steps (module docstring)."""
        if step % self.cfg.task.refresh_every_steps:
            return
        frame = model.dense.frame
        sums = [torch.zeros_like(frame.pos_aggregate, dtype=torch.float32) for _ in range(2)]
        with model.evaluating():
            for u_pos, u_neg, pos, neg in self._lookup_chunks(model, data.graph_chunks()):
                for total, u, bags in ((sums[0], u_pos, pos), (sums[1], u_neg, neg)):
                    owner = torch.repeat_interleave(torch.arange(len(bags.lengths), device=u.device), bags.lengths)
                    total.index_add_(0, bags.ids, bags.weights[:, None] * u[owner].float())
            both = model.sum_over_ranks(torch.stack(sums))
            frame.pos_aggregate.copy_(both[0].to(frame.pos_aggregate.dtype))
            frame.neg_aggregate.copy_(both[1].to(frame.neg_aggregate.dtype))

    def evaluate(self, model: Any, data: FRAMEData, split: str, log: Any | None = None) -> dict[str, Any]:
        """HR/NDCG@``eval.ks`` of full ranking and FRAME's candidate metrics of ``split`` (collective)."""
        start = time.perf_counter()
        t, ks = self.cfg.task, self.cfg.eval.ks
        batches = data.eval_batches(split)
        total = sum(int(b.targets.numel()) for b in batches)
        progress = EvalProgress(log, split, data.world_size, "users") if log is not None else None
        rank_names = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg")]
        sums = torch.zeros(len(rank_names) + 1, dtype=torch.float64)
        candidates_scored = CandidateScores(t.ks)
        with model.evaluating():
            chunks = data.eval_graph_chunks(split)
            frame = model.dense.frame
            for i, (u_pos, _, _, _) in enumerate(self._lookup_chunks(model, chunks)):
                if i >= len(batches):
                    continue
                batch = batches[i]
                for lo in range(0, len(batch.users), t.user_chunk):
                    hi = min(lo + t.user_chunk, len(batch.users))
                    scores = frame.score_all(u_pos[lo:hi], data.num_items, item_chunk=t.item_chunk)  # b,N+1
                    values, offsets = batch.history_values, batch.history_offsets
                    v, o = values[int(offsets[lo]):int(offsets[hi])], offsets[lo:hi + 1] - offsets[lo]
                    ranks = ranks_of_scores(scores, batch.targets[lo:hi], v, o).cpu()
                    part = metric_sums(ranks, ks)
                    sums[:-1] += torch.tensor([part[n] for n in rank_names], dtype=torch.float64)
                candidates = data.eval_candidates(split, batch).to(u_pos.device)  # B,1+K
                logits = frame.video_scores(candidates.reshape(-1), u_pos.repeat_interleave(candidates.shape[1], 0))
                candidates_scored.add(batch.users, logits.reshape(candidates.shape))
                sums[-1] += len(batch.users)
                if progress is not None:
                    progress(int(sums[-1]), total)
        totals = model.sum_over_ranks(sums).cpu()
        users = int(totals[-1])
        result: dict[str, Any] = {n: float(totals[i]) / max(users, 1) for i, n in enumerate(rank_names)}
        result.update(candidates_scored.results(model.sum_over_ranks, model.gather_rows))
        result.update(users=users, seconds=time.perf_counter() - start, plays=data.plays)
        return result
