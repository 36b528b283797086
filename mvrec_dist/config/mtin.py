"""MTIN settings (Jiang et al., "What Aspect Do You Like: Multi-scale Time-aware User Interest Modeling
for Micro-video Recommendation", MM'20, section 4).

A plain section, not a ``UserEncoderConfig`` variant: MTIN does not follow the user-encoder
interface (``forward(seq[B, L, D], lengths[B]) -> [B, L, D]``, causal). It keeps a per-user memory,
has a negative branch and scores items with an MLP, so it is hosted by a task that owns its batch,
its memory table and its loss (``mvrec_dist.models.user_encoders.mtin``). The embedding width d of the
paper is ``model.embedding_dim`` (paper: 128); the learning rate (paper: 1e-3, Adam) is ``train.lr``.
Every field cites the paper's symbol; where the paper gives no value the doc says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mvrec_dist.config.fields import Problems, setting

__all__ = ["MTINConfig"]


@dataclass(frozen=True, kw_only=True)
class MTINConfig:
    """MTIN: interest-group routing (Alg. 1), temporal masks (Eq. 5-7), interest mask (Eq. 8-10), MLP scorer."""

    num_groups: int = setting(6, doc="s: interest groups = rows of each interest memory M_u (paper: 6 on "
                                     "MicroVideo-1.7M, 4 on KuaiShou).")
    num_temporal_masks: int = setting(8, doc="p: parallel exponential temporal masks of Eq. 5-7 (paper: 8).")
    routing_iterations: int = setting(3, doc="tau of Algorithm 1: passes over the sequence (paper: no value given).")
    routing_base: float = setting(2.0, doc="b of Algorithm 1 line 6, discount xi_g = log_b(b + max(avg_Eg - "
                                           "p_g<-j, 0)); must be > 1 (paper: no value given).")
    routing_threshold: float | None = setting(
        None, doc="epsilon of Algorithm 1 line 8: discounted score an item needs to move to a group; None: no "
                  "threshold, every item joins a group (paper: 'manually adjusted', no value given).")
    coattention_activation: Literal["sigmoid", "tanh", "relu"] = setting(
        "sigmoid", doc="sigma of Eq. 2 and 4 ('the element-wise activation function'; Eq. 12 defines sigma as "
                       "the sigmoid).")
    time_distance: Literal["position", "timestamp"] = setting(
        "position", doc="(i - j) of Eq. 6: gap of within-group positions, or gap of timestamps over "
                        "timestamps_per_unit (needs timestamped input).")
    timestamps_per_unit: float = setting(
        86_400_000.0, doc="Timestamp ticks per unit of time distance when time_distance='timestamp' (default: "
                          "milliseconds per day, so distances are in days; *_pairs.csv timestamps are Unix ms).")
    decay_init: tuple[float, float] = setting(
        (1.0, 0.01), doc="omega_k of Eq. 6 start log-spaced from the first to the second value over the p masks "
                         "and are learned, kept > 0 (paper: no values given).")
    interest_threshold: float | None = setting(
        None, doc="tau of Eq. 9: a group passes the interest mask when its weight w_p,g exceeds it; None: 1/s, "
                  "above-uniform attention (paper: 'manually adjusted', no value given).")
    l2: float = setting(1e-4, doc="lambda of Eq. 12: factor of the squared L2 norm of the regularised weights "
                                  "(paper: 1e-4).")

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.num_groups >= 1, "num_groups", f"must be >= 1, got {self.num_groups}")
        p.check(self.num_temporal_masks >= 1, "num_temporal_masks", f"must be >= 1, got {self.num_temporal_masks}")
        p.check(self.routing_iterations >= 1, "routing_iterations", f"must be >= 1, got {self.routing_iterations}")
        p.check(self.routing_base > 1, "routing_base", f"must be > 1 (a log base whose discount is >= 1), "
                                                       f"got {self.routing_base}")
        p.check(self.routing_threshold is None or math.isfinite(self.routing_threshold), "routing_threshold",
                f"must be a finite number or null, got {self.routing_threshold}")
        p.check(self.timestamps_per_unit > 0, "timestamps_per_unit", f"must be > 0, got {self.timestamps_per_unit}")
        p.check(len(self.decay_init) == 2 and all(w > 0 for w in self.decay_init), "decay_init",
                f"must be two positive numbers [first, last], got {list(self.decay_init)}")
        p.check(self.interest_threshold is None or 0 <= self.interest_threshold < 1, "interest_threshold",
                f"must be in [0, 1) (softmax weights) or null, got {self.interest_threshold}")
        p.check(self.l2 >= 0, "l2", f"must be >= 0, got {self.l2}")
        p.raise_if_any()

    @property
    def interest_tau(self) -> float:
        """tau of Eq. 9: ``interest_threshold``, or 1/s when unset."""
        return 1.0 / self.num_groups if self.interest_threshold is None else self.interest_threshold

    def memory_width(self, embedding_dim: int) -> int:
        """Width of one user's row in the memory table: both branches' memories, ``2 * s * d`` floats."""
        return 2 * self.num_groups * embedding_dim
