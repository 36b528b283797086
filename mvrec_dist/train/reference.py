"""A plain single-process PyTorch training step of the same model: no Ray, TorchRec or DeepSpeed.

It is the numerical reference of the distributed step (tests compare losses and parameters after a
few steps) and the baseline of the throughput benchmark. The ID table is a plain ``nn.Embedding``
initialised exactly like the sharded table; the embedding optimizer mirrors fbgemm's fused
optimizers (row-wise Adagrad, Adagrad, SGD) and the dense optimizer is AdamW with the same
clipping and schedule as the DeepSpeed engine.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.models.embedding_init import init_table_block
from mvrec_dist.parallel.zero import lr_lambda

__all__ = ["RowWiseAdagrad", "PlainTrainer"]


class RowWiseAdagrad(torch.optim.Optimizer):
    """fbgemm's EXACT_ROWWISE_ADAGRAD on a dense table: one accumulator per row (mean of squared grads).

    ``state[row] += mean(g[row]^2)``; ``w[row] -= lr * g[row] / (sqrt(state[row]) + eps)``. Rows with a
    zero gradient are untouched, as in the fused kernel that only visits looked-up rows.
    """

    def __init__(self, params, lr: float, eps: float):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "momentum" not in st:
                    st["momentum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                g = p.grad
                st["momentum"] += g.pow(2).mean(dim=1)
                p -= group["lr"] * g / (st["momentum"].sqrt() + group["eps"]).unsqueeze(1)
        return None


class PlainTrainer:
    """One process, global batches, the same model and update rule as ``ParallelModel``.

    Args:
        model: A ``SequentialRecommender`` (its ``dense`` tower is used; ``item_ids`` is replaced
            by an ``nn.Embedding`` holding the same initial values as the sharded table).
        cfg: The job config (optimizers, learning rates, clipping, schedule, seed).
        num_items: N.
        total_steps: Planned steps (schedule).
    """

    def __init__(self, model: nn.Module, cfg: TrainJobConfig, *, num_items: int, total_steps: int,
                 device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dense = model.dense.to(self.device)
        self.embedding: nn.Embedding | None = None
        p, t = cfg.parallel, cfg.train
        if model.item_ids is not None:
            d = cfg.model.embedding_dim
            self.embedding = nn.Embedding(num_items + 1, d)
            with torch.no_grad():
                self.embedding.weight.copy_(init_table_block(row_start=0, row_end=num_items + 1, col_start=0,
                                                             col_end=d, dim=d, std=cfg.model.init_std,
                                                             seed=t.seed))
            self.embedding.to(self.device)
            table = [self.embedding.weight]
            if p.embedding_optimizer == "rowwise_adagrad":
                self.sparse_opt = RowWiseAdagrad(table, lr=p.embedding_lr, eps=p.embedding_eps)
            elif p.embedding_optimizer == "adagrad":
                self.sparse_opt = torch.optim.Adagrad(table, lr=p.embedding_lr, eps=p.embedding_eps)
            elif p.embedding_optimizer == "sgd":
                self.sparse_opt = torch.optim.SGD(table, lr=p.embedding_lr)
            else:
                self.sparse_opt = torch.optim.Adam(table, lr=p.embedding_lr, eps=p.embedding_eps)
        params = [q for q in self.dense.parameters() if q.requires_grad]
        self.dense_opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.dense_opt, lr_lambda(t, total_steps))
        self._dense_params = params

    def train_step(self, batch) -> float:
        """One step on a global batch; returns the mean loss over its targets.

        ``batch`` may also be a list of batches, the parts W ranks would see: their loss sums add up
        (each part's in-batch candidates or negatives stay its own, as on the ranks).
        """
        self.dense.train()
        parts = batch if isinstance(batch, (list, tuple)) else [batch]
        loss_sum, targets = 0.0, 0
        for part in parts:
            part = part.to(self.device, non_blocking=True)
            id_emb = self.embedding(part.unique_items) if self.embedding is not None else None
            out = self.dense(id_emb, part)
            loss_sum = loss_sum + out.loss_sum
            targets += int(out.num_targets)
        loss = loss_sum / max(targets, 1)
        self.dense_opt.zero_grad(set_to_none=True)
        if self.embedding is not None:
            self.sparse_opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._dense_params, self.cfg.train.grad_clip)
        self.dense_opt.step()
        self.schedule.step()
        if self.embedding is not None:
            self.sparse_opt.step()
        return float(loss.detach())

    # ------------------------------------------------------------ evaluation (the RankingModel protocol)
    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode and no autograd for the duration."""
        self.dense.eval()
        with torch.no_grad():
            yield
        self.dense.train()

    @torch.no_grad()
    def item_representations(self, num_items: int) -> torch.Tensor:
        """Representations of every item 0..N: Tensor[N+1, D]."""
        self.dense.eval()
        ids = torch.arange(num_items + 1, device=self.device)
        id_emb = self.embedding(ids) if self.embedding is not None else None
        return self.dense.item_representations(id_emb, None).float()

    def user_states(self, history: torch.Tensor, lengths: torch.Tensor, item_repr: torch.Tensor) -> torch.Tensor:
        """User states [B, D] from right-padded histories [B, L]."""
        seq = item_repr[history.to(item_repr.device)]  # [B, L, D]
        return self.dense.user_states(seq, lengths.to(item_repr.device)).float()

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """One process: the values themselves."""
        return values
