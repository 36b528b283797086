"""Sharding-invariant initialisation of ID embedding tables.

A table sharded row-wise, column-wise or table-wise over any number of ranks must start from the
same values as the unsharded table, or "1 rank vs W ranks" comparisons and resumes on another
world size would not be exact. Values are drawn in fixed blocks of rows, each block from its own
seeded generator, so any rectangle of the table can be produced without the rest of it.
"""

from __future__ import annotations

import torch

__all__ = ["init_table_block", "BLOCK_ROWS"]

BLOCK_ROWS = 16_384


def init_table_block(*, row_start: int, row_end: int, col_start: int, col_end: int, dim: int,
                     std: float, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows ``[row_start, row_end)`` x columns ``[col_start, col_end)`` of an N(0, std) table.

    Row 0 is the padding row and is zero. The full table of width ``dim`` is defined by
    ``(seed, std)`` alone; this returns one rectangle of it.

    Args:
        row_start: First row (inclusive).
        row_end: Last row (exclusive).
        col_start: First column (inclusive).
        col_end: Last column (exclusive).
        dim: Full table width D.
        std: Standard deviation of the normal init.
        seed: Table seed.
        dtype: Result dtype.

    Returns:
        Tensor[row_end - row_start, col_end - col_start].
    """
    if not (0 <= row_start <= row_end and 0 <= col_start <= col_end <= dim):
        raise ValueError(f"bad rectangle rows [{row_start}, {row_end}) cols [{col_start}, {col_end}) of width {dim}")
    out = torch.empty(row_end - row_start, col_end - col_start, dtype=dtype)
    first, last = row_start // BLOCK_ROWS, (max(row_end, 1) - 1) // BLOCK_ROWS
    for block in range(first, last + 1):
        lo = block * BLOCK_ROWS
        gen = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63 - 1))
        values = torch.randn(BLOCK_ROWS, dim, generator=gen) * std  # [BLOCK_ROWS, D]
        if block == 0:
            values[0] = 0.0
        a, b = max(row_start, lo), min(row_end, lo + BLOCK_ROWS)
        if a < b:
            out[a - row_start: b - row_start] = values[a - lo: b - lo, col_start:col_end].to(dtype)
    return out
