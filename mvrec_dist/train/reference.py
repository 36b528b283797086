"""A plain single-process PyTorch training step of the same model: no Ray, sharding or DeepSpeed.

It is the numerical reference of the distributed step (tests compare losses and parameters after a
few steps) and the baseline of the throughput benchmark. It runs the one train step
(``parallel.step.run_train_step``) over its own parts: the tables are the model's unsharded
``EmbeddingTables`` built from the same specs (so initialised exactly like the sharded tables),
each with the optimizer ``parallel`` gives it, mirroring fbgemm's fused optimizers (row-wise Adagrad, Adagrad, SGD) and the dense optimizer is AdamW with the same
clipping and schedule as the DeepSpeed engine.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.models.recommender import ITEM_FEATURE, TaskOutput, scaled_loss
from mvrec_dist.models.tables import EmbeddingTables, table_inputs
from mvrec_dist.parallel.planning import table_plans, table_weight_name
from mvrec_dist.parallel.step import StepInput, SyncedStep, run_train_step
from mvrec_dist.parallel.zero import lr_lambda
from mvrec_dist.tasks import build_task

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
        model: A ``SequentialRecommender`` (its ``dense`` tower is used; its tables are built anew,
            unsharded, from their specs: the same initial values as the sharded tables).
        cfg: The job config (optimizers, learning rates, clipping, schedule, seed).
        num_items: N.
        total_steps: Planned steps (schedule).
    """

    def __init__(self, model: nn.Module, cfg: TrainJobConfig, *, num_items: int, total_steps: int,
                 device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dense = model.dense.to(self.device)
        self.sparse_features = model.sparse_features
        self.tables: EmbeddingTables | None = None
        self.sparse_opts: list[torch.optim.Optimizer] = []
        t = cfg.train
        if model.tables is not None:
            # The same specs materialised here: each table starts from its own sharding-invariant init.
            self.tables = EmbeddingTables(model.tables.specs, device=self.device)
            weights = dict(self.tables.named_parameters())
            for plan in table_plans(self.tables.specs, cfg.parallel):
                table = [weights[table_weight_name(plan.spec)]]
                if plan.optimizer == "rowwise_adagrad":
                    opt = RowWiseAdagrad(table, lr=plan.lr, eps=plan.eps)
                elif plan.optimizer == "adagrad":
                    opt = torch.optim.Adagrad(table, lr=plan.lr, eps=plan.eps)
                elif plan.optimizer == "sgd":
                    opt = torch.optim.SGD(table, lr=plan.lr)
                else:
                    opt = torch.optim.Adam(table, lr=plan.lr, eps=plan.eps)
                self.sparse_opts.append(opt)
        params = [q for q in self.dense.parameters() if q.requires_grad]
        self.dense_opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.dense_opt, lr_lambda(t, total_steps))
        self._dense_params = params
        self._count = build_task(cfg).count

    def train_step(self, batch) -> float:
        """One step on a global batch; returns the mean loss over its targets.

        ``batch`` may also be a list of batches, the parts W ranks would see: their loss sums add up
        (each part's in-batch candidates or negatives stay its own, as on the ranks).
        """
        self.dense.train()
        parts = batch if isinstance(batch, (list, tuple)) else [batch]
        targets = sum(self._count(part)[0] for part in parts)
        # One process holds the global batch: W = 1, and the loss scale is 1 / N over all parts.
        steps = [StepInput.of(SyncedStep(part, part, targets, 0), self, world_size=1)
                 .to(self.device, non_blocking=True) for part in parts]
        outs = run_train_step(self, steps)
        loss_sum, counted = 0.0, 0
        for out in outs:
            loss_sum = loss_sum + out.loss_sum.detach()
            counted += int(out.num_targets)
        return float(loss_sum / max(counted, 1))

    # ------------------------------------------------------------ the train step's parts (parallel.step)
    def sparse_inputs(self, batch: Any) -> dict[str, Any]:
        """The tables' inputs of ``batch``'s sparse features (empty without tables)."""
        return table_inputs(self.tables.specs, self.sparse_features(batch)) if self.tables is not None else {}

    def embed(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """The lookups by feature name (empty for a content-only tower)."""
        return self.tables(**inputs) if self.tables is not None else {}

    def dense_forward(self, embeddings: dict[str, Tensor], batch: Any,
                      loss_scale: Tensor) -> tuple[Tensor, TaskOutput]:
        """``scaled_loss`` of the dense tower: ``(loss_sum * loss_scale, TaskOutput)``."""
        return scaled_loss(self.dense, embeddings, batch, loss_scale)

    def backward(self, loss: Tensor) -> None:
        """Gradients of ``loss`` for the dense tower and the table (the previous step's are dropped)."""
        self.dense_opt.zero_grad(set_to_none=True)
        for opt in self.sparse_opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()

    def update(self) -> None:
        """Clipping, AdamW and the schedule on the dense tower (as the engine's step), then the table's optimizer."""
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._dense_params, self.cfg.train.grad_clip)
        self.dense_opt.step()
        self.schedule.step()
        for opt in self.sparse_opts:
            opt.step()

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
        id_emb = None
        if self.tables is not None:
            id_emb = self.tables(**table_inputs(self.tables.specs, {ITEM_FEATURE: ids}, partial=True))[ITEM_FEATURE]
        return self.dense.item_representations(id_emb, None, None, ids).float()

    def user_states(self, history: torch.Tensor, lengths: torch.Tensor, item_repr: torch.Tensor) -> torch.Tensor:
        """User states [B, D] from right-padded histories [B, L]."""
        seq = item_repr[history.to(item_repr.device)]  # [B, L, D]
        return self.dense.user_states(seq, lengths.to(item_repr.device)).float()

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """One process: the values themselves."""
        return values
