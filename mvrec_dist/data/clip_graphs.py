"""FRAME's user x clip graphs and clip labels from play ratios, and their pooled-lookup form.

FRAME (Learning Fine-grained User Interests for Micro-video Recommendation, SIGIR'23; public code
tsinghua-fib-lab/FRAME) splits each video into ``C = 4`` clips and reads each play's ratio
``r = min(playing_time / duration, 1)``: with ``k = floor(C r)`` the clips watched through, clips
``0 .. k-1`` were liked and clip ``k`` (when ``k < C``) is where the user left. Two bipartite graphs follow,
user rows x clip columns, each row-normalised: ``A_pos`` (edges to watched-through clips) and ``A_neg``
(edges to the clips left in). FRAME aggregates ``A C`` (users from clips) and ``A^T U`` (clips from users).

**Ids.** Clip ``j`` of dense item ``i`` is ``i * C + j``. Dense item and user ids start at 1 (0 is padding,
``data/ingest/ids.py``), so a clip table has ``(N + 1) C`` rows of which ``0 .. C-1`` (item 0's) are never
referenced, and a user graph has ``U + 1`` rows, row 0 empty. Ids outside ``1 .. N`` / ``1 .. U`` are refused.

**This project's rule** (``rule="left_once"``, the default), against the released code (``train.py``'s
commented graph build, which made the shipped ``pos_a_normed.npy`` / ``neg_a_normed.npy``):

* ``r > 1`` counts as 1; ``r = 1`` gives ``C`` positive edges and no negative one (as released).
* Positive edges: clips ``j < k``, weight 1 each (as released). ``r < 1/C`` (``k = 0``) gives none: no clip
  was watched through, and the clip labels below call clip 0 negative then.
* Negative edge: one, weight 1, to clip ``k`` when ``r < 1``, also for ``k = 0``. The released code appends it
  inside the loop over the positive clips, so it has weight ``k`` (heavier the *more* the user watched)
  and a play that left in the first clip, the strongest dislike, gives no edge at all. ``rule="released"``
  reproduces that (weight ``k``, nothing for ``k = 0``).
* Repeated plays of one item by one user each add their edges; equal (user, clip) edges are summed before
  normalising, in both rules (the released code's ``csr_matrix`` sums duplicates too).
* Rows are divided by their sum (the released ``normalize`` divides by ``sqrt(D)`` twice, i.e. by ``D``);
  a user without edges keeps an empty row (released: ``D = 0`` set to 1, a zero row), so ``A C`` is 0 there.
* The transposed graphs (clip rows -> users) are the exact transposes of the row-normalised ones, not
  normalised again, as the released ``pos_A.t()``: a clip gathers ``sum_u A[u, c] U_u``.

Build the graphs from training interactions only (the released code reads its train file), or the
held-out plays leak into the user representations.

**Clip labels** (the pointwise BCE; released ``dataset_gcn.py`` and the model's train step): per play,
clip ``j < k`` is 1, clip ``k`` (``k < C``) is 0, and clips after ``k`` were never seen: -1, left out of the
loss (the released model builds its loss over clips ``0 .. k`` only). FRAME weights the positive term by
``k / C`` (``label_weight``), ``clip_positive_weights``. A play's video label is 1 when ``r >= 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

__all__ = ["CLIPS", "GraphRule", "CsrGraph", "ClipGraphs", "RowBags", "play_ratios", "watched_clips", "clip_edges",
           "graph_from_edges", "build_clip_graphs", "clip_labels", "clip_positive_weights", "video_labels"]

CLIPS = 4
"""Clips per video (FRAME's ``num_clips``)."""
GraphRule = Literal["left_once", "released"]
"""How negative edges are counted (module docstring)."""


class RowBags(NamedTuple):
    """Some rows of a graph as a pooled lookup's input: ``lengths[b]`` ids and weights per bag, concatenated.

    What a TorchRec ``EmbeddingBagCollection`` with per-sample weights consumes (``KeyedJaggedTensor``
    values, lengths, weights; ``models.tables.Bags``): the bag of row ``u`` sums ``w * E[id]`` = ``(A E)[u]``.
    """

    ids: np.ndarray
    """int64 [n] column ids (clip ids for user rows)."""
    lengths: np.ndarray
    """int64 [B] entries per bag, one bag per requested row (0 for an empty row)."""
    weights: np.ndarray
    """float32 [n] the edge weights."""


@dataclass(frozen=True)
class CsrGraph:
    """A weighted sparse matrix in CSR form: row ``r``'s columns are ``indices[indptr[r]:indptr[r+1]]``, ascending."""

    indptr: np.ndarray
    """int64 [R+1] row offsets."""
    indices: np.ndarray
    """int64 [E] column of each edge."""
    weights: np.ndarray
    """float64 [E] weight of each edge (no explicit zeros)."""
    num_cols: int
    """Columns."""

    @property
    def num_rows(self) -> int:
        """Rows R."""
        return len(self.indptr) - 1

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, cols, weights)`` of every edge, int64 / int64 / float64 [E], by row then column."""
        rows = np.repeat(np.arange(self.num_rows, dtype=np.int64), np.diff(self.indptr))
        return rows, self.indices, self.weights

    def transpose(self) -> CsrGraph:
        """The transposed matrix (columns become rows), weights unchanged."""
        rows, cols, w = self.coo()
        order = np.lexsort((rows, cols))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=self.num_cols))]).astype(np.int64)
        return CsrGraph(indptr=indptr, indices=rows[order], weights=w[order], num_cols=self.num_rows)

    def to_dense(self) -> np.ndarray:
        """float64 [R, num_cols] (small graphs: tests and analysis)."""
        out = np.zeros((self.num_rows, self.num_cols))
        rows, cols, w = self.coo()
        out[rows, cols] = w
        return out

    def row_bags(self, rows: np.ndarray) -> RowBags:
        """The given rows (repeats allowed, any order) as one pooled-lookup input, one bag per row.

        Args:
            rows: int [B] row ids (dense user ids for a user x clip graph).

        Returns:
            ``RowBags``: bag ``b`` holds row ``rows[b]``'s columns and weights.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise ValueError(f"row ids must be in [0, {self.num_rows}), got [{rows.min()}, {rows.max()}]")
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        # Position of each output entry in the edge arrays: its bag's start plus its index within the bag.
        offsets = np.cumsum(lengths) - lengths
        at = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        return RowBags(ids=self.indices[at], lengths=lengths, weights=self.weights[at].astype(np.float32))


@dataclass(frozen=True)
class ClipGraphs:
    """FRAME's two row-normalised user x clip graphs and their transposes (clip x user)."""

    positive: CsrGraph
    """``A_pos`` [U+1, (N+1) C]: edges to the clips watched through."""
    negative: CsrGraph
    """``A_neg`` [U+1, (N+1) C]: edges to the clips left in."""
    positive_t: CsrGraph
    """``A_pos^T`` [(N+1) C, U+1]."""
    negative_t: CsrGraph
    """``A_neg^T`` [(N+1) C, U+1]."""


def play_ratios(play: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """``min(play / duration, 1)``, float64 [M] (the shards' ``play.npy`` / ``duration.npy``; durations > 0)."""
    play, duration = np.asarray(play, dtype=np.float64), np.asarray(duration, dtype=np.float64)
    if np.any(duration <= 0) or np.any(play < 0):
        raise ValueError("play ratios need durations > 0 and playing times >= 0")
    return np.minimum(play / duration, 1.0)


def watched_clips(ratios: np.ndarray, clips: int = CLIPS) -> np.ndarray:
    """``k = floor(clips * min(r, 1))``: clips watched through, int64 [M] in ``0 .. clips``.

    Exact at the clip boundaries for ``clips = 4`` (a power of two: ``4 r`` is computed without rounding).
    """
    r = np.asarray(ratios, dtype=np.float64)
    if not np.all(r >= 0):  # also refuses NaN
        raise ValueError("play ratios must be >= 0 (and not NaN)")
    return np.floor(clips * np.minimum(r, 1.0)).astype(np.int64)


def clip_edges(users: np.ndarray, items: np.ndarray, ratios: np.ndarray, *, clips: int = CLIPS,
               rule: GraphRule = "left_once") -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The un-normalised edges of every play, duplicates not merged (module docstring for the rules).

    Args:
        users: int [M] dense user id of each play.
        items: int [M] dense item id of each play.
        ratios: float [M] play ratios (values above 1 count as 1).
        clips: Clips per video C.
        rule: ``left_once`` (this project) or ``released`` (the released code's negative edges).

    Returns:
        ``((rows, cols, weights), (rows, cols, weights))`` of the positive and the negative edges:
        user ids, clip ids ``item * C + j``, float64 weights.
    """
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    k = watched_clips(ratios, clips)
    if not users.shape == items.shape == k.shape:
        raise ValueError(f"users {users.shape}, items {items.shape} and ratios {k.shape} must be equal 1-D shapes")
    # Positive: clips 0 .. k-1 of each play (k of them).
    j = np.arange(int(k.sum()), dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)
    pos = (np.repeat(users, k), np.repeat(items, k) * clips + j, np.ones(len(j)))
    if rule == "left_once":
        left, weight = k < clips, np.ones(len(k))
    elif rule == "released":
        left, weight = (k < clips) & (k > 0), k.astype(np.float64)
    else:
        raise ValueError(f"rule must be 'left_once' or 'released', got {rule!r}")
    neg = (users[left], items[left] * clips + k[left], weight[left])
    return pos, neg


def graph_from_edges(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, *, num_rows: int,
                     num_cols: int) -> CsrGraph:
    """A row-normalised CSR graph: equal ``(row, col)`` edges summed, then each row divided by its sum.

    Args:
        rows, cols: int [E] edge ends (``0 <= rows < num_rows``, ``0 <= cols < num_cols``).
        weights: float [E] positive edge weights.
        num_rows, num_cols: The matrix shape.

    Returns:
        The graph; a row without edges stays empty.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= num_rows or cols.min() < 0 or cols.max() >= num_cols):
        raise ValueError(f"edges out of the {num_rows} x {num_cols} matrix")
    key, merged = np.unique(rows * num_cols + cols, return_inverse=True)
    w = np.bincount(merged, weights=np.asarray(weights, dtype=np.float64), minlength=len(key))
    r, c = key // num_cols, key % num_cols
    w = w / np.bincount(r, weights=w, minlength=num_rows)[r]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=num_rows))]).astype(np.int64)
    return CsrGraph(indptr=indptr, indices=c, weights=w, num_cols=num_cols)


def build_clip_graphs(users: np.ndarray, items: np.ndarray, ratios: np.ndarray, *, num_users: int, num_items: int,
                      clips: int = CLIPS, rule: GraphRule = "left_once") -> ClipGraphs:
    """FRAME's positive and negative user x clip graphs, row-normalised, and their transposes.

    Args:
        users: int [M] dense user id (1 .. num_users) of each training play.
        items: int [M] dense item id (1 .. num_items) of each training play.
        ratios: float [M] play ratios (``play_ratios``; above 1 counts as 1).
        num_users: U (the graphs get U + 1 rows, row 0 the padding user).
        num_items: N (the graphs get (N + 1) C columns).
        clips: Clips per video C.
        rule: ``left_once`` or ``released`` (module docstring).

    Returns:
        ``ClipGraphs``.
    """
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    for name, ids, n in (("user", users, num_users), ("item", items, num_items)):
        if len(ids) and (ids.min() < 1 or ids.max() > n):
            raise ValueError(f"{name} ids must be in 1 .. {n} (0 is padding), got [{ids.min()}, {ids.max()}]")
    pos, neg = clip_edges(users, items, ratios, clips=clips, rule=rule)
    shape = {"num_rows": num_users + 1, "num_cols": (num_items + 1) * clips}
    positive, negative = graph_from_edges(*pos, **shape), graph_from_edges(*neg, **shape)
    return ClipGraphs(positive=positive, negative=negative, positive_t=positive.transpose(),
                      negative_t=negative.transpose())


def clip_labels(ratios: np.ndarray, clips: int = CLIPS) -> np.ndarray:
    """Per-clip BCE labels of each play: 1 watched through, 0 left in, -1 never reached (no loss).

    Args:
        ratios: float [M] play ratios.
        clips: Clips per video C.

    Returns:
        int8 [M, C].
    """
    k = watched_clips(ratios, clips)[:, None]
    j = np.arange(clips)[None, :]
    return np.where(j < k, 1, np.where(j == k, 0, -1)).astype(np.int8)


def clip_positive_weights(ratios: np.ndarray, clips: int = CLIPS) -> np.ndarray:
    """FRAME's weight of the positive BCE term of each play, ``k / C`` (released ``label_weight``), float64 [M]."""
    return watched_clips(ratios, clips) / clips


def video_labels(ratios: np.ndarray) -> np.ndarray:
    """A play's video-level label for evaluation, 1 when watched to the end (``r >= 1``), int8 [M]."""
    return (np.asarray(ratios, dtype=np.float64) >= 1.0).astype(np.int8)
