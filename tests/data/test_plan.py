"""Property tests of the reading plans (``mvrec_dist.data.plan``): pure index arithmetic, no data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvrec_dist.data.plan import (Chunk, consumer_index, epoch_plan, eval_plan, iter_indices, num_consumers,
                                  redistribute, skip_consumed, stream_length)

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)

shard_counts = st.lists(st.integers(0, 40), min_size=0, max_size=7)
plan_args = st.fixed_dictionaries({
    "epoch": st.integers(0, 6),
    "seed": st.integers(0, 2**40),
    "shuffle": st.booleans(),
    "shuffle_block": st.integers(1, 25),
    "num_consumers": st.integers(1, 9),
})


def streams(plan: list[list[Chunk]]) -> list[list[int]]:
    return [list(iter_indices(chunks)) for chunks in plan]


def shard_bounds(counts: list[int]) -> list[tuple[int, int]]:
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return [(starts[s], starts[s + 1]) for s in range(len(counts))]


def shard_of(g: int, counts: list[int]) -> int:
    return next(s for s, (a, b) in enumerate(shard_bounds(counts)) if a <= g < b)


def assert_balanced(sizes: list[int]) -> None:
    assert max(sizes) - min(sizes) <= 1, sizes


@PROPERTY
@given(counts=shard_counts, args=plan_args)
def test_epoch_plan_gives_every_sample_to_exactly_one_consumer(counts, args):
    plan = epoch_plan(counts, **args)
    assert len(plan) == args["num_consumers"]
    got = streams(plan)
    assert sorted(g for s in got for g in s) == list(range(sum(counts)))
    assert_balanced([len(s) for s in got])
    assert plan == epoch_plan(counts, **args), "same inputs must give the same plan"
    for chunk in (c for chunks in plan for c in chunks):
        assert chunk.stop - chunk.start <= args["shuffle_block"]
        assert shard_of(chunk.start, counts) == shard_of(chunk.stop - 1, counts), f"{chunk} crosses a shard"
        assert (chunk.seed is None) == (not args["shuffle"])
        assert (chunk.skip, chunk.take) == (0, chunk.stop - chunk.start)
        assert Chunk.from_dict(json.loads(json.dumps(chunk.to_dict()))) == chunk


@PROPERTY
@given(counts=shard_counts, args=plan_args)
def test_parts_are_contiguous_pieces_of_a_shard_permutation(counts, args):
    """Chunks in consumer order walk whole shards one after another, each shard front to back."""
    plan = epoch_plan(counts, **args)
    bounds = shard_bounds(counts)
    flat = [c for chunks in plan for c in chunks]
    visited = []
    for prev, nxt in zip(flat, flat[1:]):
        if prev.stop != nxt.start or shard_of(prev.start, counts) != shard_of(nxt.start, counts):
            assert prev.stop == bounds[shard_of(prev.start, counts)][1], "a shard was left before its end"
            assert nxt.start == bounds[shard_of(nxt.start, counts)][0], "a shard was entered mid-way"
    for chunk in flat:
        s = shard_of(chunk.start, counts)
        if not visited or visited[-1] != s:
            visited.append(s)
    assert sorted(visited) == [s for s, n in enumerate(counts) if n], "each shard is read in one run"
    if not args["shuffle"]:
        assert [g for s in streams(plan) for g in s] == list(range(sum(counts)))


@PROPERTY
@given(counts=st.lists(st.integers(20, 60), min_size=1, max_size=5), args=plan_args,
       other=st.integers(1, 5))
def test_shuffled_epochs_differ(counts, args, other):
    # every shard >= 20 and block >= 20 with parts >= 20 samples: some chunk holds >= 10 samples,
    # so two epochs coincide with probability < 1/10!
    args = dict(args, shuffle=True, shuffle_block=max(args["shuffle_block"], 20),
                num_consumers=min(args["num_consumers"], sum(counts) // 20))
    first = streams(epoch_plan(counts, **args))
    second = streams(epoch_plan(counts, **dict(args, epoch=args["epoch"] + other)))
    assert first != second
    assert sorted(g for s in first for g in s) == sorted(g for s in second for g in s)


@PROPERTY
@given(counts=shard_counts, args=plan_args, data=st.data())
def test_skip_consumed_resumes_exactly(counts, args, data):
    plan = epoch_plan(counts, **args)
    c = data.draw(st.integers(0, len(plan) - 1))
    full = list(iter_indices(plan[c]))
    n = data.draw(st.integers(0, len(full)))
    rest = skip_consumed(plan[c], n)
    assert full[:n] + list(iter_indices(rest)) == full
    assert stream_length(rest) == len(full) - n
    with pytest.raises(ValueError):
        skip_consumed(plan[c], len(full) + 1)


@PROPERTY
@given(counts=shard_counts, args=plan_args, new_c=st.integers(1, 9), again_c=st.integers(1, 9), data=st.data())
def test_redistribute_loses_and_repeats_nothing(counts, args, new_c, again_c, data):
    plan = epoch_plan(counts, **args)
    seen: list[int] = []
    for target in (new_c, again_c):  # a resumed run can itself be resumed on yet another size
        old = streams(plan)
        consumed = [data.draw(st.integers(0, len(s))) for s in old]
        seen += [g for s, n in zip(old, consumed) for g in s[:n]]
        plan = redistribute(plan, consumed, target)
        assert len(plan) == target
        new = streams(plan)
        assert_balanced([len(s) for s in new])
        assert [g for s in new for g in s] == [g for s, n in zip(old, consumed) for g in s[n:]], \
            "the rest keeps old consumer order, then stream order"
        assert sorted(seen + [g for s in new for g in s]) == list(range(sum(counts)))
        for chunk in (c for chunks in plan for c in chunks):
            assert shard_of(chunk.start, counts) == shard_of(chunk.stop - 1, counts)


@PROPERTY
@given(counts=shard_counts, world=st.integers(1, 8))
def test_eval_plan_is_contiguous_balanced_and_ordered(counts, world):
    plan = eval_plan(counts, num_consumers=world)
    got = streams(plan)
    assert [g for s in got for g in s] == list(range(sum(counts)))
    assert_balanced([len(s) for s in got])
    assert all(c.seed is None for chunks in plan for c in chunks)


def test_plan_is_pinned_across_processes_and_versions():
    """Resume recomputes a saved epoch's plan in a new process: the numbers must not move.

    If numpy ever changes ``Generator.permutation``/``integers`` streams this fails, and checkpoints
    taken before the upgrade must store their plans explicitly to resume exactly.
    """
    plan = epoch_plan([5, 3, 4], epoch=1, seed=42, shuffle=True, shuffle_block=4, num_consumers=2)
    assert streams(plan) == PINNED_STREAMS


PINNED_STREAMS = [[11, 8, 9, 10, 5, 6], [7, 2, 3, 0, 1, 4]]


def test_resume_on_another_size_from_a_mid_epoch_position():
    plan = epoch_plan([10, 7, 9], epoch=2, seed=5, shuffle=True, shuffle_block=4, num_consumers=4)
    old = streams(plan)
    assert [len(s) for s in old] == [7, 7, 6, 6]
    new = redistribute(plan, [3, 0, 6, 1], 3)
    assert [len(s) for s in streams(new)] == [6, 5, 5]
    assert sorted(old[0][:3] + old[2][:6] + old[3][:1] + [g for s in streams(new) for g in s]) == list(range(26))


def test_chunk_rejects_invalid_ranges_and_dicts():
    for bad in [(5, 5, None, 0, 1), (0, 4, None, 3, 2), (0, 4, None, 0, 0), (0, 4, -1, 0, 4), (-1, 2, None, 0, 1)]:
        with pytest.raises(ValueError):
            Chunk(*bad)
    with pytest.raises(ValueError, match="exactly the keys"):
        Chunk.from_dict({"start": 0, "stop": 2, "seed": None, "skip": 0, "take": 2, "extra": 1})
    chunk = Chunk(10, 20, 123, 2, 5)
    head, tail = chunk.split(2)
    assert list(iter_indices([head, tail])) == chunk.indices().tolist()
    assert sorted(Chunk(10, 20, 123, 0, 10).indices().tolist()) == list(range(10, 20))


def test_consumers_are_rank_major_and_zero_workers_means_one():
    assert num_consumers(3, 2) == 6 and num_consumers(3, 0) == 3
    assert [consumer_index(r, w, 2) for r in range(2) for w in range(2)] == [0, 1, 2, 3]
    assert consumer_index(2, 0, 0) == 2
    with pytest.raises(ValueError):
        consumer_index(0, 2, 2)


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError):
        epoch_plan([3, -1], epoch=0, seed=0, shuffle=False, shuffle_block=2, num_consumers=1)
    with pytest.raises(ValueError):
        epoch_plan([3], epoch=0, seed=0, shuffle=False, shuffle_block=0, num_consumers=1)
    with pytest.raises(ValueError):
        epoch_plan([3], epoch=0, seed=0, shuffle=False, shuffle_block=2, num_consumers=0)
    with pytest.raises(ValueError, match="consumed counts"):
        redistribute([[]], [0, 0], 1)
