"""FRAME's metrics over each user's scored test candidates: AUC, log loss, Recall@K, NDCG@K (and FRAME's DCG@K).

FRAME (SIGIR'23; released code tsinghua-fib-lab/FRAME, ``run_train.py`` and ``metric.py``) scores every test
play of a user (a candidate video) and labels it 1 when watched to the end (``clip_graphs.video_labels``).
Candidates are given as flat arrays ``(users [M], logits [M], labels [M])``; a user's candidates need not be
adjacent. The score is a logit (FRAME: the sum of the video's clip logits, whose sigmoid is the probability).

* ``auc``: global AUC over all candidates pooled (FRAME's ``roc_auc_score`` over the whole test set), the
  Mann-Whitney statistic with ties counted 1/2. ``user_auc``: the same per user, averaged over the users
  that have both a positive and a negative candidate (it is undefined otherwise).
* ``logloss``: the mean binary cross-entropy of ``sigmoid(logit)`` over all candidates, from the logit
  (exact; FRAME adds 5e-5 inside both logs of the probability, twice for the positive term).
* Per user, candidates are ranked by logit, descending, ties in input order (FRAME's stable ``sort``).
  ``recall@K`` = positives in the top K / the user's positives (FRAME's definition, not divided by
  ``min(K, P)``); ``ndcg@K`` = DCG@K / IDCG@K with binary gains and ``1 / log2(position + 2)`` discounts,
  IDCG from the user's ``min(K, P)`` positives at the top; ``dcg@K`` = DCG@K un-normalised, what FRAME's
  ``metric_cal`` reports as NDCG (it exceeds 1 for a user with several positives, so it mixes how many
  positives a user has with how well they are ranked). A user with fewer than K candidates is ranked over
  all of them (the released loop would index past the end). With one positive per user and no ties,
  ``ndcg@K`` is ``eval.metrics.ndcg`` of the positive's rank and ``recall@K`` its ``hit_rate``.
* **Averaging.** Every metric is averaged over users, each user once, which is what FRAME intends: its
  ``metric_cal`` returns inside the user loop (only the first user of each call counts), it is called per
  batch of 64 candidates of a user's file (a user with more counts once per batch, ranked within it), and
  the sum is divided by the last file index, one less than the users. Recall, NDCG and DCG average over the
  users with at least one positive (``users_ranked``; the released code divides by zero for the others);
  a user without negatives is ranked (trivially perfect) but has no ``user_auc``. ``users``,
  ``users_ranked`` and ``users_auc`` are reported with the values.

``candidate_metric_sums`` returns sums and counts that add up across ranks when every user's candidates
are on one rank; the global ``auc`` needs all candidates in one place (gather them first).

**In the trainer** every ranking model is scored on the same candidates: ``draw_candidates`` gives each
evaluation user its target and ``negatives`` videos the user never played (history and target excluded),
keyed by ``(train.seed, split, user)`` so that any model, world size and run draws the same ones, and
``CandidateScores`` collects one rank's scored candidates and combines every rank's into the ``frame/*``
results. FRAME's task scores them with its video score (a logit); a next-item model (``eval.candidate_negatives``)
with its dot product ``s_u . e_v``, which ranks like a logit but is trained by a softmax over items, so its
``frame/logloss`` (of ``sigmoid(s_u . e_v)``) is reported but is not a calibrated probability's loss.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from mvrec_dist.data.negatives import row_keys, sample_non_interacted

__all__ = ["auc", "log_loss", "candidate_metric_sums", "candidate_metrics", "draw_candidates", "CandidateScores"]


def _check(logits: np.ndarray, labels: np.ndarray, users: np.ndarray | None = None) -> None:
    shapes = [a.shape for a in (logits, labels, users) if a is not None]
    if logits.ndim != 1 or any(s != logits.shape for s in shapes):
        raise ValueError(f"candidates must be equal 1-D arrays, got shapes {shapes}")
    if np.isnan(logits).any():
        raise ValueError("logits must not be NaN")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """bool [n]: where a run of equal consecutive ``keys`` tuples starts (also for n = 0)."""
    out = np.ones(len(keys[0]), dtype=bool)
    out[1:] = np.logical_or.reduce([k[1:] != k[:-1] for k in keys])
    return out


def _grouped_auc(group: np.ndarray, scores: np.ndarray, labels: np.ndarray, groups: int) -> np.ndarray:
    """AUC of each group (float64 [G], NaN without both classes): positives' average ranks within the group."""
    order = np.lexsort((scores, group))
    g, s, y = group[order], scores[order], labels[order].astype(np.float64)
    n = len(s)
    group_first, run_first = _run_starts(g), _run_starts(g, s)
    # Every element of a run of equal scores gets the mean of the run's 1-based positions in its group.
    run_start = np.flatnonzero(run_first)
    run_end = np.r_[run_start[1:], n]
    start_of_group = np.flatnonzero(group_first)[np.cumsum(group_first) - 1]  # per element
    run = np.cumsum(run_first) - 1
    rank = (run_start + run_end + 1)[run] / 2.0 - start_of_group
    pos = np.bincount(g, weights=y, minlength=groups)
    neg = np.bincount(g, minlength=groups) - pos
    rank_sum = np.bincount(g, weights=rank * y, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), out, np.nan)


def auc(logits: np.ndarray, labels: np.ndarray) -> float:
    """Global AUC of scores against 0/1 labels (ties count 1/2); NaN without both classes.

    Args:
        logits: float [M] scores (any monotone transform gives the same AUC).
        labels: int [M] 0/1 labels.

    Returns:
        The AUC.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    _check(logits, labels)
    return float(_grouped_auc(np.zeros(len(logits), dtype=np.int64), logits, labels, 1)[0])


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against 0/1 labels, computed from the logits; NaN when empty.

    Args:
        logits: float [M] logits.
        labels: int [M] 0/1 labels.

    Returns:
        The mean log loss (natural log).
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    _check(logits, labels)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits)) if len(logits) else float("nan")


def candidate_metric_sums(users: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                          ks: Iterable[int] = (3, 5)) -> dict[str, float]:
    """Sums over users of the per-user metrics, the log-loss sum, and the counts to divide them by.

    Args:
        users: int [M] the user of each candidate.
        logits: float [M] scores.
        labels: int [M] 0/1 labels.
        ks: Cut-offs K.

    Returns:
        ``{'user_auc', 'recall@K', 'ndcg@K', 'dcg@K' (each K), 'logloss', 'candidates', 'users', 'users_ranked',
        'users_auc'}``: ``user_auc`` sums over ``users_auc`` users, recall/NDCG/DCG over ``users_ranked``,
        ``logloss`` over ``candidates``. Add them across ranks, then divide (``candidate_metrics``).
    """
    users, logits, labels = np.asarray(users), np.asarray(logits, dtype=np.float64), np.asarray(labels)
    _check(logits, labels, users)
    ks = list(ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs K must be >= 1, got {ks}")
    ids, g = np.unique(users, return_inverse=True)
    groups, n = len(ids), len(logits)
    user_auc = _grouped_auc(g, logits, labels, groups)
    # Rank within each user: logit descending, ties in input order.
    order = np.lexsort((np.arange(n), -logits, g))
    gs, ys = g[order], labels[order].astype(np.float64)
    new_user = _run_starts(gs)
    position = np.arange(n) - np.flatnonzero(new_user)[np.cumsum(new_user) - 1]
    discount = 1.0 / np.log2(position + 2.0)
    positives = np.bincount(gs, weights=ys, minlength=groups)
    ranked = positives > 0
    # ideal[m]: DCG of m positives at the top.
    ideal = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(max(ks, default=1)) + 2.0))]
    out = {"user_auc": float(np.nansum(user_auc))}
    for k in ks:
        top = ys * (position < k)
        hits = np.bincount(gs, weights=top, minlength=groups)
        dcg = np.bincount(gs, weights=top * discount, minlength=groups)
        idcg = ideal[np.minimum(positives, k).astype(np.int64)]
        out[f"recall@{k}"] = float(np.sum(hits[ranked] / positives[ranked]))
        out[f"ndcg@{k}"] = float(np.sum(dcg[ranked] / idcg[ranked]))
        out[f"dcg@{k}"] = float(np.sum(dcg[ranked]))
    out["logloss"] = float(np.sum(np.logaddexp(0.0, logits) - labels * logits))
    out.update(candidates=float(n), users=float(groups), users_ranked=float(ranked.sum()),
               users_auc=float(np.sum(~np.isnan(user_auc))))
    return out


def candidate_metrics(users: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                      ks: Iterable[int] = (3, 5)) -> dict[str, float]:
    """FRAME's metric set over one process's candidates: global ``auc`` and the user averages (module docstring).

    Args:
        users: int [M] the user of each candidate.
        logits: float [M] scores.
        labels: int [M] 0/1 labels.
        ks: Cut-offs K (FRAME: 3 and 5).

    Returns:
        ``{'auc', 'user_auc', 'logloss', 'recall@K', 'ndcg@K', 'dcg@K', 'candidates', 'users', 'users_ranked',
        'users_auc'}``; a mean over no users is NaN.
    """
    sums = candidate_metric_sums(users, logits, labels, ks)
    per = {"user_auc": "users_auc", "logloss": "candidates"}
    out = {"auc": auc(logits, labels)}
    for key, value in sums.items():
        if key in ("candidates", "users", "users_ranked", "users_auc"):
            out[key] = value
            continue
        count = sums[per.get(key, "users_ranked")]
        out[key] = value / count if count else float("nan")
    return out


def draw_candidates(*, seed: int, split: str, users: np.ndarray, targets: np.ndarray, history_values: np.ndarray,
                    history_offsets: np.ndarray, negatives: int, num_items: int) -> torch.Tensor:
    """Each evaluation user's candidates: the target, then ``negatives`` videos the user never played (independent
    uniform draws, ``negatives.sample_non_interacted``: a video may be drawn twice for a user).

    Args:
        seed: Run seed (``train.seed``): with ``split`` and the user, the key of the draws.
        split: ``valid`` or ``test``.
        users: int [B] dense user ids.
        targets: int [B] held-out items.
        history_values: int [H] every user's history, concatenated.
        history_offsets: int [B+1]; user b's history is ``history_values[o[b]:o[b+1]]``.
        negatives: Label-0 candidates per user.
        num_items: N.

    Returns:
        ``LongTensor[B, 1 + negatives]``, the target in column 0.
    """
    excluded = [np.append(history_values[history_offsets[b]:history_offsets[b + 1]], targets[b])
                for b in range(len(targets))]
    drawn = sample_non_interacted(row_keys(seed, split, 0, users), negatives, excluded, num_items)
    return torch.from_numpy(np.concatenate([targets[:, None], drawn], 1).astype(np.int64))


class CandidateScores:
    """One rank's scored candidates of a split, and their ``frame/*`` metrics over every rank.

    Args:
        ks: Cut-offs of Recall/NDCG/DCG (FRAME: 3 and 5).
    """

    def __init__(self, ks: Iterable[int]):
        self.ks = tuple(ks)
        self._sums: dict[str, float] = {}
        self._scored: list[torch.Tensor] = []

    def add(self, users: torch.Tensor, logits: torch.Tensor) -> None:
        """Scores of a batch's candidates.

        Args:
            users: ``[B]`` the batch's users (each user's candidates on this rank only).
            logits: ``[B, 1 + K]`` scores, the target's in column 0 (``draw_candidates``).
        """
        logits = logits.detach().double().cpu()
        labels = torch.zeros(logits.shape, dtype=torch.float64)
        labels[:, 0] = 1.0
        part = candidate_metric_sums(users.cpu().repeat_interleave(logits.shape[1]).numpy(),
                                     logits.reshape(-1).numpy(), labels.reshape(-1).numpy(), self.ks)
        self._sums = {k: self._sums.get(k, 0.0) + v for k, v in part.items()}
        self._scored.append(torch.stack([logits.reshape(-1), labels.reshape(-1)], 1))

    def results(self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor],
                gather_rows: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """``frame/auc`` (global, over every rank's candidates), ``frame/user_auc``, ``frame/logloss`` and
        ``frame/{recall,ndcg,dcg}@K`` (collective: every rank calls it, and gets the same values).

        Args:
            sum_over_ranks: Adds a tensor over ranks.
            gather_rows: Concatenates every rank's rows (variable counts).
        """
        names = sorted(candidate_metric_sums(np.zeros(2), np.zeros(2), np.array([1, 0]), self.ks))
        totals = sum_over_ranks(torch.tensor([self._sums.get(n, 0.0) for n in names], dtype=torch.float64))
        c = dict(zip(names, totals.cpu().tolist()))
        mine = torch.cat(self._scored) if self._scored else torch.zeros(0, 2, dtype=torch.float64)
        every = gather_rows(mine).cpu().numpy()
        out = {"frame/auc": auc(every[:, 0], every[:, 1].astype(np.int64)) if len(every) else float("nan"),
               "frame/user_auc": c["user_auc"] / max(c["users_auc"], 1),
               "frame/logloss": c["logloss"] / max(c["candidates"], 1)}
        for k in self.ks:
            for m in ("recall", "ndcg", "dcg"):
                out[f"frame/{m}@{k}"] = c[f"{m}@{k}"] / max(c["users_ranked"], 1)
        return out
