"""Users on several tsv lines and exact duplicate csv rows, found where a user's rows meet (grouping):
counted, dropped or rejected (``ingest.duplicates``), against a plain Python reference."""

import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.ingest.errors import IngestError
from mvrec_dist.data.ingest.grouping import group_users
from mvrec_dist.data.ingest.parse import parse_block
from mvrec_dist.data.ingest.sources import detect_format, list_inputs


def parsed(tmp_path, name: str, data: bytes):
    """``(interactions, input files)`` of ``data`` written to ``tmp_path/name`` and parsed as one block."""
    path = tmp_path / name
    path.write_bytes(data)
    files = list_inputs(str(path))
    block = parse_block(data, detect_format(files, "auto"), file_index=0, offset=0, at_eof=True)
    assert not block.bad
    return block.table, files


def group(table, files, policy, min_seq_len=3, with_ts=False):
    return group_users(table, min_seq_len=min_seq_len, with_ts=with_ts, duplicates=policy, files=files).to_pydict()


TSV = b"5\t40 10 30\n3\t1 2 3\n5\t20 50\n5\t60\n"


def test_a_tsv_user_on_several_lines_is_counted_merged_dropped_or_rejected(tmp_path):
    table, files = parsed(tmp_path, "p.tsv", TSV)
    keep = group(table, files, "keep")
    assert keep["user"] == [3, 5] and keep["items"] == [[1, 2, 3], [40, 10, 30, 20, 50, 60]]
    assert (keep["n"], keep["rows"], keep["dup_rows"], keep["dropped"]) == ([3, 6], [1, 3], [0, 2], [0, 0])
    # drop: the user's first line in file order is its sequence; the later lines are dropped and counted.
    drop = group(table, files, "drop")
    assert drop["items"] == [[1, 2, 3], [40, 10, 30]]
    assert (drop["n"], drop["rows"], drop["dup_rows"], drop["dropped"]) == ([3, 3], [1, 1], [0, 2], [0, 3])
    with pytest.raises(IngestError, match=rf"^{re.escape(str(tmp_path))}/p\.tsv:3: user 5 again \(first on line 1\)"
                                          r".*\(and 1 more duplicate row"):
        group(table, files, "error")


def test_dropping_later_lines_applies_min_seq_len_to_the_first_line(tmp_path):
    table, files = parsed(tmp_path, "p.tsv", b"7\t1 2\n7\t3 4 5\n")
    assert group(table, files, "keep", min_seq_len=3)["kept"] == [True]
    drop = group(table, files, "drop", min_seq_len=3)
    assert (drop["kept"], drop["n"], drop["rows"], drop["dup_rows"], drop["dropped"]) == \
        ([False], [2], [1], [1], [3])


# User 1: (10, 100) on lines 1, 4 and 6, with line 2 between them in the (timestamp, position) order.
CSV = b"1,10,100\n1,11,100\n2,5,7\n1,10,100\n1,10,101\n1,10,100\n2,5,8\n2,6,7\n"


def test_exact_duplicate_csv_rows_are_counted_kept_dropped_or_rejected(tmp_path):
    table, files = parsed(tmp_path, "p.csv", CSV)
    keep = group(table, files, "keep", with_ts=True)
    assert keep["user"] == [1, 2] and keep["items"][0] == [10, 11, 10, 10, 10] and keep["ts"][0] == [100] * 4 + [101]
    assert (keep["rows"], keep["dup_rows"], keep["dropped"]) == ([5, 3], [2, 0], [0, 0])
    drop = group(table, files, "drop", with_ts=True)
    assert drop["items"] == [[10, 11, 10], [5, 6, 5]] and drop["ts"][0] == [100, 100, 101]
    assert (drop["n"], drop["rows"], drop["dup_rows"], drop["dropped"]) == ([3, 3], [3, 3], [2, 0], [2, 0])
    with pytest.raises(IngestError, match=rf"^{re.escape(str(tmp_path))}/p\.csv:4: exact duplicate of line 1 "
                                          r"\(user 1, item 10, timestamp 100\).*\(and 1 more duplicate row"):
        group(table, files, "error", with_ts=True)


def test_same_item_at_another_time_or_another_item_at_the_same_time_is_no_duplicate(tmp_path):
    table, files = parsed(tmp_path, "p.csv", b"1,10,100\n1,10,101\n1,11,100\n2,10,100\n")
    out = group(table, files, "error", min_seq_len=1, with_ts=True)
    assert out["dup_rows"] == [0, 0] and out["n"] == [3, 1]


def test_item_ids_too_far_apart_for_one_sort_key_give_the_same_result():
    big = (1 << 62) + 5
    table = pa.table({"user": [1] * 5, "item": [big, 0, big, 0, 7], "ts": [3] * 5, "order": [10, 20, 30, 40, 50]})
    out = group_users(table, min_seq_len=1, with_ts=True, duplicates="drop").to_pydict()
    assert (out["items"], out["dup_rows"], out["dropped"]) == ([[big, 0, 7]], [2], [2])


def test_without_input_files_the_error_names_file_index_and_byte():
    table = pa.table({"user": [4, 4], "item": [1, 1], "ts": [9, 9], "order": [(2 << 40) + 7, (2 << 40) + 30]})
    with pytest.raises(IngestError, match=r"^input file 2, byte 30: exact duplicate of input file 2, byte 7"):
        group_users(table, min_seq_len=1, with_ts=True, duplicates="error")


def reference(rows, tsv, policy, min_seq_len):
    """``{user: (n, rows, dup_rows, dropped, items)}`` with Python sorts and sets.

    ``rows``: csv ``(user, item, ts, order)`` rows, or tsv ``(user, [items], order)`` lines."""
    out = {}
    for user in sorted({r[0] for r in rows}):
        if tsv:
            lines = sorted((r for r in rows if r[0] == user), key=lambda r: r[2])
            dup, later = len(lines) - 1, sum(len(r[1]) for r in lines[1:])
            items = lines[0][1] if policy == "drop" else [i for r in lines for i in r[1]]
            nrows = 1 if policy == "drop" else len(lines)
        else:
            mine, seen, items, dup = sorted((r for r in rows if r[0] == user), key=lambda r: (r[2], r[3])), set(), [], 0
            for _, item, ts, _ in mine:
                if (item, ts) in seen:
                    dup += 1
                    if policy == "drop":
                        continue
                seen.add((item, ts))
                items.append(item)
            later, nrows = dup, len(items)
        dropped = later if policy == "drop" else 0
        kept = len(items) >= min_seq_len
        out[user] = (len(items), nrows, dup, dropped, items if kept else [])
    return out


def as_table(rows, tsv):
    if tsv:  # lines -> interactions; a line's tokens have consecutive order keys
        flat = [(u, item, 0, order + k, k == 0) for u, items, order in rows for k, item in enumerate(items)]
    else:
        flat = [r + (True,) for r in rows]
    cols = list(zip(*flat))
    data = {"user": pa.array(cols[0], pa.int64()), "item": pa.array(cols[1], pa.int64()),
            "ts": pa.array(cols[2], pa.int64()), "order": pa.array(cols[3], pa.int64())}
    if tsv:
        data["first"] = pa.array(cols[4], pa.bool_())
    return pa.table(data), len(flat)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.booleans(), st.sampled_from(["keep", "drop", "error"]), st.integers(1, 4), st.randoms(),
       st.booleans())
def test_group_users_matches_reference_and_every_row_is_accounted_for(data, tsv, policy, min_seq_len, rnd,
                                                                      presorted):
    if tsv:
        lines = data.draw(st.lists(st.tuples(st.integers(0, 4), st.lists(st.integers(0, 9), min_size=1, max_size=5)),
                                   min_size=1, max_size=12))
        starts = rnd.sample(range(0, 1 << 20, 16), len(lines))  # a line's tokens never reach the next line
        rows = [(u, items, start) for (u, items), start in zip(lines, starts)]
    else:
        raw = data.draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 2)),
                                 min_size=1, max_size=40))
        rows = [r + (o,) for r, o in zip(raw, rnd.sample(range(1 << 41), len(raw)))]
    table, interactions = as_table(rows, tsv)
    if presorted:  # what the range partitioning's reducers deliver
        table = table.sort_by([("user", "ascending"), ("ts", "ascending"), ("order", "ascending")])
    else:
        table = table.take(pa.array(rnd.sample(range(table.num_rows), table.num_rows)))
    expected = reference(rows, tsv, policy, min_seq_len)
    if policy == "error" and any(e[2] for e in expected.values()):
        with pytest.raises(IngestError, match="user .* again|exact duplicate"):
            group_users(table, min_seq_len=min_seq_len, with_ts=not tsv, duplicates=policy)
        return
    out = group_users(table, min_seq_len=min_seq_len, with_ts=not tsv, duplicates=policy).to_pydict()
    assert out["user"] == list(expected)
    got = {u: (out["n"][k], out["rows"][k], out["dup_rows"][k], out["dropped"][k], out["items"][k])
           for k, u in enumerate(out["user"])}
    assert got == expected
    # Reconciliation: every input row is a grouped row or a dropped duplicate, and so is every interaction.
    dropped_rows = sum(d for _, _, d, x, _ in got.values() if x)
    assert sum(r for _, r, _, _, _ in got.values()) + dropped_rows == len(rows)
    assert sum(n for n, _, _, _, _ in got.values()) + sum(x for _, _, _, x, _ in got.values()) == interactions
    assert np.all(np.asarray(out["dup_rows"]) >= 0)
