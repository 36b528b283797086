"""Embedding tables as data: a model declares ``TableSpec``s; ``parallel/`` shards what they describe.

Two kinds of lookup, as TorchRec has them:

* **sequence** tables (``EmbeddingCollection``): one row per id, in order — the item table read by
  ``item_id`` (every unique item of a step), a per-user memory read by ``user_id``;
* **pooled** tables (``EmbeddingBagCollection``, sum pooling): one vector per bag, optionally with a
  weight per id (``weighted``) — e.g. FRAME's ``A C``: a user's row-normalised clip weights times the
  clip embeddings.

``EmbeddingTables`` holds them (unsharded) in at most three TorchRec modules: ``sequence`` (every
sequence table), ``pooled`` (unweighted pooled tables) and ``weighted`` (pooled tables with per-sample
weights; TorchRec's ``is_weighted`` is per module). Its forward takes one ``KeyedJaggedTensor`` per
module and returns every feature's lookup by feature name. Each table is initialised from
``(seed, init_std)`` alone (``embedding_init``), so it starts from the same values under every
sharding and world size. Row 0 of every table is zero (the padding id).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mvrec_dist.models.embedding_init import init_table_block

__all__ = ["TableSpec", "Bags", "EmbeddingTables", "init_rows_", "initial_rows", "table_inputs"]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table of a model."""

    name: str
    """Table name (unique in the model): the key of its weights in checkpoints and plans."""
    num_embeddings: int
    """Rows, padding row 0 included."""
    embedding_dim: int
    """Width D."""
    features: tuple[str, ...]
    """Features that read the table (each a key of the lookup's input and output)."""
    pooled: bool = False
    """True: an ``EmbeddingBagCollection`` table (one sum per bag); False: one row per id, in order."""
    weighted: bool = False
    """Per-sample weights in the pooled sum (pooled tables only)."""
    keyed_by: Literal["item", "user", "clip"] = "item"
    """What a row stands for; user-keyed tables grow with the users (34.5M at MicroLens scale)."""
    init_std: float = 0.02
    """Std of the normal init."""
    seed: int = 0
    """Init seed (each table its own; the item table uses ``train.seed``, as it always did)."""
    sharding_type: str | None = None
    """Sharding type of this table; None: ``parallel.sharding_type``."""
    state: bool = False
    """The rows are state the dense tower writes, not parameters it learns (MTIN's per-user memory):
    the tower returns the write-back as ``TaskOutput.write_back``, whose gradient on a row is minus
    its update, and ``parallel/`` gives the table plain SGD with learning rate 1 and no decay, so
    that a step moves each looked-up row by exactly the sum of its updates (on any world size)."""
    init_rows: Callable[[int, int], Tensor] | None = field(default=None, compare=False, repr=False)
    """Initial values from data instead of ``(seed, init_std)``: ``init_rows(r0, r1)`` gives rows ``[r0, r1)``,
    every column, ``[r1 - r0, D]`` (FRAME's clip table from the clips' visual features); it must give the same
    rows whoever asks, so that every sharding starts from the same table."""

    def __post_init__(self) -> None:
        if self.num_embeddings < 1 or self.embedding_dim < 1:
            raise ValueError(f"table {self.name!r}: num_embeddings and embedding_dim must be >= 1, "
                             f"got {self.num_embeddings} x {self.embedding_dim}")
        if not self.features:
            raise ValueError(f"table {self.name!r}: needs at least one feature")
        if self.weighted and not self.pooled:
            raise ValueError(f"table {self.name!r}: per-sample weights need a pooled table (pooled=True)")
        if self.state and self.pooled:
            raise ValueError(f"table {self.name!r}: a state table is written row by row; it cannot be pooled")

    @property
    def kind(self) -> str:
        """``sequence``, ``pooled`` or ``weighted``: which TorchRec module holds the table."""
        return "weighted" if self.weighted else ("pooled" if self.pooled else "sequence")


@dataclass
class Bags:
    """A pooled feature's input: ``lengths[b]`` ids (and weights) per bag, concatenated in bag order."""

    ids: Tensor
    """``LongTensor[n]`` row ids."""
    lengths: Tensor
    """``LongTensor[B]`` ids per bag (B bags; every pooled feature of a step has the same B)."""
    weights: Tensor | None = None
    """``FloatTensor[n]`` per-sample weights (weighted tables only)."""


def table_inputs(specs: tuple[TableSpec, ...], features: dict[str, Tensor | Bags], *,
                 partial: bool = False) -> dict[str, KeyedJaggedTensor]:
    """The ``EmbeddingTables`` inputs (one ``KeyedJaggedTensor`` per kind) of a step's features.

    A sequence feature's ids form *one* bag (the lookup returns a row per id, in order): every rank
    then sends a KJT of batch size 1, also a rank that looks up nothing. Pooled features are given
    as ``Bags``.

    Args:
        specs: The model's tables.
        features: Feature name -> ids (sequence features) or ``Bags`` (pooled features); every
            feature of the tables must be present unless ``partial``.
        partial: Look up only the given features (evaluation's item lookups): a missing sequence
            feature looks up nothing (a sharded collection takes all its features), a pooled kind
            with none of its features given is left out.

    Returns:
        ``{"sequence" | "pooled" | "weighted": KeyedJaggedTensor}`` for the kinds the model has.
    """
    by_kind: dict[str, list[str]] = {}
    for spec in specs:
        by_kind.setdefault(spec.kind, []).extend(spec.features)
    out = {}
    given = [f for f in features.values() if isinstance(f, Tensor)] + [f.ids for f in features.values()
                                                                       if isinstance(f, Bags)]
    device = given[0].device if given else torch.device("cpu")
    for kind, keys in by_kind.items():
        missing = [k for k in keys if k not in features]
        if partial and kind != "sequence" and len(missing) == len(keys):
            continue
        if missing and not (partial and kind == "sequence"):
            raise KeyError(f"features {missing} of the model's {kind} tables are not in the step's features")
        if kind == "sequence":
            empty = torch.zeros(0, dtype=torch.long, device=device)
            values = [features.get(k, empty) for k in keys]
            lengths = torch.tensor([v.numel() for v in values], dtype=torch.int32, device=device)
            out[kind] = KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=lengths)
            continue
        bags = [features[k] for k in keys]
        weights = torch.cat([b.weights for b in bags]).float() if kind == "weighted" else None
        out[kind] = KeyedJaggedTensor(keys=keys, values=torch.cat([b.ids for b in bags]),
                                      lengths=torch.cat([b.lengths for b in bags]).int(), weights=weights)
    return out


def initial_rows(spec: TableSpec, *, row_start: int, row_end: int, col_start: int, col_end: int,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """A rectangle of ``spec``'s initial table: ``spec.init_rows`` when it has one, else its seeded normal init.

    Args:
        spec: The table.
        row_start: First row (inclusive).
        row_end: Last row (exclusive).
        col_start: First column (inclusive).
        col_end: Last column (exclusive).
        dtype: Result dtype.

    Returns:
        ``Tensor[row_end - row_start, col_end - col_start]``.
    """
    if spec.init_rows is None:
        return init_table_block(row_start=row_start, row_end=row_end, col_start=col_start, col_end=col_end,
                                dim=spec.embedding_dim, std=spec.init_std, seed=spec.seed, dtype=dtype)
    rows = spec.init_rows(row_start, row_end)
    if tuple(rows.shape) != (row_end - row_start, spec.embedding_dim):
        raise ValueError(f"table {spec.name!r}: init_rows({row_start}, {row_end}) gave {tuple(rows.shape)}, expected "
                         f"{(row_end - row_start, spec.embedding_dim)}")
    return rows[:, col_start:col_end].to(dtype)


def init_rows_(weight: Tensor, *, std: float, num_rows: int, seed: int,
               spec: TableSpec | None = None) -> Tensor:
    """Initialise a table ~ N(0, std) with a zero padding row, exactly as its sharded version.

    Used as the TorchRec ``init_fn``. The whole table comes from ``embedding_init.init_table_block``
    (values depend only on ``seed``), so an unsharded table starts where any sharding starts. TorchRec
    may call it on a shard (without the shard's offsets); the parallel layer then overwrites every
    shard from the same global init.

    Args:
        weight: ``[rows, D]`` the table, or a shard of it (modified in place; a ``meta`` tensor is returned
            as it is).
        std: Standard deviation.
        num_rows: Rows of the whole table.
        seed: Table seed.
        spec: The table, when its rows come from ``spec.init_rows`` (then ``std`` and ``seed`` are unused).

    Returns:
        ``weight``.
    """
    if weight.is_meta:  # shapes only (the trainer's meta build, the planner): drawing would allocate the table
        return weight
    with torch.no_grad():
        if weight.shape[0] == num_rows and spec is not None and spec.init_rows is not None:
            weight.copy_(initial_rows(spec, row_start=0, row_end=num_rows, col_start=0, col_end=weight.shape[1]))
        elif weight.shape[0] == num_rows:
            dim = weight.shape[1]
            weight.copy_(init_table_block(row_start=0, row_end=num_rows, col_start=0, col_end=dim, dim=dim,
                                          std=std, seed=seed))
        else:
            weight.normal_(0.0, std)
    return weight


def _init_fn(spec: TableSpec):
    return functools.partial(init_rows_, std=spec.init_std, num_rows=spec.num_embeddings, seed=spec.seed, spec=spec)


class EmbeddingTables(nn.Module):
    """A model's embedding tables, unsharded (see the module docstring).

    Args:
        specs: The tables; names unique, every feature read by one table.
        device: ``'meta'`` to leave allocation to the parallel layer (sharding), else a real device.
    """

    def __init__(self, specs: tuple[TableSpec, ...] | list[TableSpec], *, device: str | torch.device = "cpu"):
        super().__init__()
        specs = tuple(specs)
        names = [s.name for s in specs]
        features = [f for s in specs for f in s.features]
        if len(set(names)) != len(names) or len(set(features)) != len(features):
            raise ValueError(f"EmbeddingTables: table names {names} and features {features} must be unique")
        self.specs = specs
        device = torch.device(device)
        by_kind = {k: [s for s in specs if s.kind == k] for k in ("sequence", "pooled", "weighted")}
        self.sequence = EmbeddingCollection(tables=[
            EmbeddingConfig(name=s.name, embedding_dim=s.embedding_dim, num_embeddings=s.num_embeddings,
                            feature_names=list(s.features), init_fn=_init_fn(s)) for s in by_kind["sequence"]],
            device=device) if by_kind["sequence"] else None
        self.pooled = self._bags(by_kind["pooled"], weighted=False, device=device)
        self.weighted = self._bags(by_kind["weighted"], weighted=True, device=device)

    @staticmethod
    def _bags(specs: list[TableSpec], *, weighted: bool, device: torch.device) -> EmbeddingBagCollection | None:
        if not specs:
            return None
        return EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=s.name, embedding_dim=s.embedding_dim, num_embeddings=s.num_embeddings,
                               feature_names=list(s.features), pooling=PoolingType.SUM, init_fn=_init_fn(s))
            for s in specs], is_weighted=weighted, device=device)

    def spec(self, table: str) -> TableSpec:
        """The spec of table ``table``."""
        return next(s for s in self.specs if s.name == table)

    def forward(self, sequence: KeyedJaggedTensor | None = None, pooled: KeyedJaggedTensor | None = None,
                weighted: KeyedJaggedTensor | None = None) -> dict[str, Tensor]:
        """Look up every feature of the given inputs.

        Args:
            sequence: Ids of the sequence tables' features (a bag per row; every id gets its own row).
            pooled: Bags of the unweighted pooled tables' features.
            weighted: Bags with ``weights`` of the weighted pooled tables' features.

        Returns:
            Feature name -> ``[ids, D]`` (sequence: the rows of all the feature's ids, in order) or
            ``[bags, D]`` (pooled: one sum per bag).
        """
        # Feature names come from the specs, not from iterating outputs: TorchRec's pipeline traces
        # this forward with FX, where outputs are proxies that cannot be iterated.
        out: dict[str, Tensor] = {}
        if self.sequence is not None and sequence is not None:
            looked = self.sequence(sequence)
            for spec in self.specs:
                if spec.kind == "sequence":
                    out.update({f: looked[f].values() for f in spec.features})
        for kind, module, kjt in (("pooled", self.pooled, pooled), ("weighted", self.weighted, weighted)):
            if module is not None and kjt is not None:
                keyed = module(kjt)
                for spec in self.specs:
                    if spec.kind == kind:
                        out.update({f: keyed[f] for f in spec.features})
        return out
