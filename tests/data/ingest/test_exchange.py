"""The group-by-user exchange on disk: pieces keep users whole, partitions arrive sorted by (user,
timestamp, order key), counts reconcile across it, retries do not double rows, files are removed."""

import numpy as np
import pyarrow as pa
import pytest

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.exchange import (ExchangeStats, group_pieces, grouped_path, read_partition,
                                             remove_exchange, spill_pieces, write_grouped)
from mvrec_dist.data.ingest.grouping import group_users, user_order
from mvrec_dist.data.ingest.ids import summarize
from mvrec_dist.data.ingest.partition import user_boundaries

pytestmark = pytest.mark.integration


def _interactions(n: int = 4000, seed: int = 4) -> pa.Table:
    """Rows in file order (order keys ascend), with many timestamp ties inside a user."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return pa.table({"user": rng.integers(0, 300, n), "item": rng.integers(0, 50, n),
                     "ts": rng.integers(0, 20, n), "order": np.arange(n, dtype=np.int64) * 7 + 3})


def _spill(table: pa.Table, bounds: list[int], exchange: str, block: int = 500) -> ExchangeStats:
    written = [spill_pieces(table.slice(i, block), boundaries=bounds, exchange_dir=exchange)
               for i in range(0, table.num_rows, block)]
    rows = pa.concat_tables(written)
    return ExchangeStats(piece_rows=int(np.sum(rows.column("rows").to_numpy())),
                         piece_bytes=int(np.sum(rows.column("bytes").to_numpy())), pieces=rows.num_rows)


def test_pieces_keep_users_whole_and_partitions_arrive_sorted(tmp_path):
    table = _interactions()
    bounds = user_boundaries(table.column("user").to_numpy(), 4)
    stats = _spill(table, bounds, str(tmp_path / "x"))  # users spread over 8 read blocks
    assert stats.piece_rows == table.num_rows and stats.pieces <= 8 * (len(bounds) + 1)
    seen, total = set(), 0
    for p in range(len(bounds) + 1):
        part = read_partition(str(tmp_path / "x"), p)
        u, ts, order = (part.column(k).to_numpy() for k in ("user", "ts", "order"))
        assert user_order(u, ts, order) is None  # (user, ts, order key) order: group_users's fast path
        assert np.all(np.searchsorted(bounds, u, side="right") == p)  # only its own range
        assert not set(u.tolist()) & seen
        seen |= set(u.tolist())
        total += part.num_rows
    assert total == table.num_rows
    # Sorting the whole input at once gives the same rows in the same order.
    idx = np.lexsort([table.column(k).to_numpy() for k in ("order", "ts", "user")])
    expected = table.take(pa.array(idx))
    got = pa.concat_tables([read_partition(str(tmp_path / "x"), p) for p in range(len(bounds) + 1)])
    assert got.equals(expected)


def test_a_retried_map_task_rewrites_its_pieces(tmp_path):
    table = _interactions(1000)
    bounds = user_boundaries(table.column("user").to_numpy(), 3)
    _spill(table, bounds, str(tmp_path / "x"))
    _spill(table, bounds, str(tmp_path / "x"))  # every block written twice, as retried tasks do
    (tmp_path / "x" / "p00000" / "00000000000000000003.arrow.tmp-deadbeef").write_bytes(b"torn")  # a killed write
    rows = sum(read_partition(str(tmp_path / "x"), p).num_rows for p in range(len(bounds) + 1))
    assert rows == table.num_rows


def test_grouping_reconciles_and_leaves_only_grouped_files(ray_local, tmp_path):
    table = _interactions()
    exchange = str(tmp_path / "x")
    bounds = user_boundaries(table.column("user").to_numpy(), 4)
    stats = _spill(table, bounds, exchange)
    kwargs = {"min_seq_len": 5, "with_ts": True}
    summary = group_pieces(exchange, len(bounds) + 2, stats, in_flight=2, **kwargs)  # one partition empty
    whole = summarize(group_users(table, **kwargs))
    assert np.array_equal(summary.users, whole.users) and np.array_equal(summary.items, whole.items)
    assert np.array_equal(summary.train_counts, whole.train_counts) and summary.counts == whole.counts
    assert stats.reduced_rows == table.num_rows and stats.grouped_bytes > 0
    assert sorted(f.name for f in (tmp_path / "x").iterdir()) == \
        [f"grouped-{p:05d}.arrow" for p in range(len(bounds) + 1)]  # pieces deleted once grouped

    sizes = write_grouped(exchange, len(bounds) + 2, _rows, in_flight=2, extra=1)
    assert [t.column("n")[0].as_py() - 1 for t in sizes] == \
        [group_users(read_part, **kwargs).num_rows for read_part in _by_partition(table, bounds)]
    assert list((tmp_path / "x").iterdir()) == []  # each grouped file deleted once written
    assert grouped_path(exchange, 3) == f"{exchange}/grouped-00003.arrow"
    remove_exchange(exchange)
    assert not (tmp_path / "x").exists()
    remove_exchange(exchange)  # absent: nothing to do


def test_rows_lost_in_the_exchange_fail_the_job(ray_local, tmp_path):
    table = _interactions(1000)
    bounds = user_boundaries(table.column("user").to_numpy(), 3)
    stats = _spill(table, bounds, str(tmp_path / "x"))
    (tmp_path / "x" / "p00001").joinpath(sorted(p.name for p in (tmp_path / "x" / "p00001").iterdir())[0]).unlink()
    with pytest.raises(IngestError, match=r"reducers read \d+ rows but its map side wrote 1000"):
        group_pieces(str(tmp_path / "x"), len(bounds) + 1, stats, in_flight=2, min_seq_len=1, with_ts=True)


def _by_partition(table: pa.Table, bounds: list[int]) -> list[pa.Table]:
    part = np.searchsorted(bounds, table.column("user").to_numpy(), side="right")
    return [table.filter(pa.array(part == p)) for p in range(len(bounds) + 1)]


def _rows(grouped: pa.Table, *, extra: int) -> pa.Table:
    return pa.table({"n": [grouped.num_rows + extra]})
