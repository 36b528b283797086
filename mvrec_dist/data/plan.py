"""Reading plans: which samples each consumer reads, in which order, as pure index arithmetic.

A split's samples are numbered by their global index ``g`` (position in manifest order: shard 0's
samples first, in key order). A plan is computed from the manifest's per-shard sample counts alone;
no data is read to plan. ``docs/DESIGN.md`` ("Reader contract") states the contract; in short:

* Consumers: ``C = world_size * max(loader_workers, 1)``; consumer ``c = rank * workers + worker``.
* ``epoch_plan`` permutes the shards by ``(seed, epoch)``, cuts the concatenated samples into ``C``
  contiguous parts of sizes differing by at most one, and cuts each part at shard boundaries and
  every ``shuffle_block`` samples into ``Chunk``s, each permuted by its own seed.
* ``skip_consumed`` drops a consumed prefix exactly (resume on the same world size);
  ``redistribute`` re-cuts what is left for another number of consumers (resume on another one).

Every random choice comes from ``numpy.random.Generator(PCG64)`` seeded by an explicit
``SeedSequence(seed, spawn_key=...)``, never from global state. Spawn keys have a fixed length per
purpose (``(epoch, 0)`` for the shard order, ``(epoch, 1, c)`` for consumer ``c``'s chunk seeds),
because ``SeedSequence`` pads short entropy with zeros and variable-length keys could collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["Chunk", "epoch_plan", "eval_plan", "skip_consumed", "redistribute", "iter_indices",
           "stream_length", "num_consumers", "consumer_index"]

_SEED_LIMIT = 1 << 63  # chunk seeds stay below 2**63 so any JSON reader keeps them exact
_SHARD_ORDER, _CHUNK_SEEDS = 0, 1


@dataclass(frozen=True)
class Chunk:
    """A run of one consumer's stream: part of a permuted range of global indices in one shard.

    The chunk emits ``start + p[skip : skip + take]`` where ``p`` is the permutation of
    ``range(stop - start)`` drawn from ``seed`` (the identity when ``seed`` is None).
    """

    start: int
    """First global index of the range."""
    stop: int
    """One past the last global index of the range (the range lies inside one shard)."""
    seed: int | None
    """Seed of the range's permutation; None keeps the range in order."""
    skip: int
    """Permuted positions dropped before the emitted ones."""
    take: int
    """Samples emitted (>= 1)."""

    def __post_init__(self) -> None:
        span = self.stop - self.start
        if self.start < 0 or span < 1:
            raise ValueError(f"Chunk range [{self.start}, {self.stop}) must be non-empty and >= 0")
        if self.skip < 0 or self.take < 1 or self.skip + self.take > span:
            raise ValueError(f"Chunk [{self.start}, {self.stop}): skip={self.skip}, take={self.take} "
                             f"must select a non-empty part of its {span} samples")
        if self.seed is not None and not 0 <= self.seed < _SEED_LIMIT:
            raise ValueError(f"Chunk seed {self.seed} must be in [0, 2**63)")

    def offsets(self) -> np.ndarray:
        """Offsets from ``start`` of the emitted samples, in emit order.

        Returns:
            int64 array of length ``take``.
        """
        if self.seed is None:
            return np.arange(self.skip, self.skip + self.take, dtype=np.int64)
        perm = np.random.Generator(np.random.PCG64(self.seed)).permutation(self.stop - self.start)
        return perm[self.skip:self.skip + self.take].astype(np.int64, copy=False)

    def indices(self) -> np.ndarray:
        """Global indices of the emitted samples, in emit order (int64 array of length ``take``)."""
        return self.start + self.offsets()

    def split(self, n: int) -> tuple[Chunk, Chunk]:
        """Cut the emitted samples in two, keeping their order.

        Args:
            n: Samples in the first piece, ``0 < n < take``.

        Returns:
            ``(first n samples, the rest)``, both over the same range and seed.
        """
        if not 0 < n < self.take:
            raise ValueError(f"cannot split a chunk of {self.take} samples after {n}")
        return (Chunk(self.start, self.stop, self.seed, self.skip, n),
                Chunk(self.start, self.stop, self.seed, self.skip + n, self.take - n))

    def to_dict(self) -> dict[str, Any]:
        """The chunk as a JSON-ready dict (checkpoints store plans as JSON, never pickle)."""
        return {"start": self.start, "stop": self.stop, "seed": self.seed, "skip": self.skip,
                "take": self.take}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Chunk:
        """Rebuild a chunk from ``to_dict`` output.

        Args:
            data: The dict, e.g. read back from a checkpoint's JSON.

        Returns:
            The chunk; ``ValueError`` on missing or extra keys or an invalid range.
        """
        keys = {"start", "stop", "seed", "skip", "take"}
        if set(data) != keys:
            raise ValueError(f"a chunk needs exactly the keys {sorted(keys)}, got {sorted(data)}")
        seed = data["seed"]
        return Chunk(int(data["start"]), int(data["stop"]), None if seed is None else int(seed),
                     int(data["skip"]), int(data["take"]))


def num_consumers(world_size: int, loader_workers: int) -> int:
    """Consumers of a run: one per (rank, loader worker).

    Args:
        world_size: Ranks.
        loader_workers: DataLoader workers per rank; 0 reads in the rank's own process (one consumer).

    Returns:
        ``C = world_size * max(loader_workers, 1)``.
    """
    if world_size < 1 or loader_workers < 0:
        raise ValueError(f"world_size={world_size} must be >= 1 and loader_workers={loader_workers} >= 0")
    return world_size * max(loader_workers, 1)


def consumer_index(rank: int, worker: int, loader_workers: int) -> int:
    """The consumer a (rank, loader worker) pair is.

    Args:
        rank: Rank in the run.
        worker: Loader worker id in the rank (0 when ``loader_workers`` is 0).
        loader_workers: DataLoader workers per rank.

    Returns:
        ``c = rank * max(loader_workers, 1) + worker``.
    """
    workers = max(loader_workers, 1)
    if rank < 0 or not 0 <= worker < workers:
        raise ValueError(f"rank={rank}, worker={worker} out of range for {loader_workers} loader workers")
    return rank * workers + worker


def _balanced_sizes(total: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous parts of ``total`` items; the first ``total % parts`` get one more."""
    if parts < 1:
        raise ValueError(f"need at least one consumer, got {parts}")
    base, extra = divmod(total, parts)
    return [base + (1 if c < extra else 0) for c in range(parts)]


def _check_counts(shard_counts: Sequence[int]) -> list[int]:
    counts = [int(n) for n in shard_counts]
    bad = [(s, n) for s, n in enumerate(counts) if n < 0]
    if bad:
        raise ValueError(f"shard sample counts must be >= 0; shard {bad[0][0]} has {bad[0][1]}")
    return counts


def _segments(counts: list[int], order: Sequence[int]) -> list[tuple[int, int]]:
    """``(first global index, samples)`` of each non-empty shard, in reading ``order``."""
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)[:-1]]) if counts else []
    return [(int(starts[s]), counts[s]) for s in order if counts[s] > 0]


def _cut_parts(segments: list[tuple[int, int]], sizes: list[int],
               block: int | None) -> list[list[tuple[int, int]]]:
    """Cut the concatenated segments into parts of ``sizes``; each part into ``[start, stop)`` ranges
    that stay in one segment and hold at most ``block`` samples (no limit when ``block`` is None)."""
    parts: list[list[tuple[int, int]]] = []
    seg, used = 0, 0  # current segment, samples of it already given out
    for size in sizes:
        ranges: list[tuple[int, int]] = []
        while size > 0:
            start, count = segments[seg]
            n = min(size, count - used)
            lo, hi = start + used, start + used + n
            step = block or n
            ranges.extend((a, min(a + step, hi)) for a in range(lo, hi, step))
            size -= n
            used += n
            if used == count:
                seg, used = seg + 1, 0
        parts.append(ranges)
    return parts


def epoch_plan(shard_counts: Sequence[int], *, epoch: int, seed: int, shuffle: bool,
               shuffle_block: int, num_consumers: int) -> list[list[Chunk]]:
    """Plan one epoch: every sample of the split goes to exactly one consumer.

    Args:
        shard_counts: Samples per shard, in manifest order (``ShardReader.shard_counts``).
        epoch: Epoch number (>= 0); with ``shuffle`` each epoch has its own order.
        seed: Run seed (>= 0), e.g. ``train.seed``.
        shuffle: Permute the shards and the samples inside every chunk; otherwise manifest order.
        shuffle_block: Most samples in one chunk, i.e. permuted together (bounds the reader's memory).
        num_consumers: ``C = world_size * loader workers`` (see ``num_consumers``).

    Returns:
        ``C`` lists of chunks; consumer ``c`` reads ``plan[c]`` in order. Part sizes differ by at
        most one; part ``c`` is contiguous in the (shard-permuted) sample sequence.
    """
    counts = _check_counts(shard_counts)
    if epoch < 0 or seed < 0 or shuffle_block < 1:
        raise ValueError(f"epoch={epoch} and seed={seed} must be >= 0, shuffle_block={shuffle_block} >= 1")
    order: Sequence[int] = range(len(counts))
    if shuffle:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(epoch, _SHARD_ORDER))))
        order = rng.permutation(len(counts)).tolist()
    segments = _segments(counts, order)
    parts = _cut_parts(segments, _balanced_sizes(sum(counts), num_consumers), shuffle_block)
    plan = []
    for c, ranges in enumerate(parts):
        if shuffle:
            ss = np.random.SeedSequence(seed, spawn_key=(epoch, _CHUNK_SEEDS, c))
            seeds = np.random.Generator(np.random.PCG64(ss)).integers(0, _SEED_LIMIT, size=len(ranges)).tolist()
        else:
            seeds = [None] * len(ranges)
        plan.append([Chunk(a, b, s, 0, b - a) for (a, b), s in zip(ranges, seeds)])
    return plan


def eval_plan(shard_counts: Sequence[int], *, num_consumers: int) -> list[list[Chunk]]:
    """The evaluation slices: the split in manifest order, cut into contiguous balanced parts.

    With ``num_consumers = world_size`` rank ``r`` scores part ``r``; with ``world_size * workers``
    the parts of one rank's workers are still adjacent, so each rank keeps a contiguous slice.

    Args:
        shard_counts: Samples per shard of the valid or test split, in manifest order.
        num_consumers: Number of parts.

    Returns:
        ``num_consumers`` lists of unshuffled chunks (cut at shard boundaries only).
    """
    counts = _check_counts(shard_counts)
    parts = _cut_parts(_segments(counts, range(len(counts))), _balanced_sizes(sum(counts), num_consumers), None)
    return [[Chunk(a, b, None, 0, b - a) for a, b in ranges] for ranges in parts]


def stream_length(chunks: Sequence[Chunk]) -> int:
    """Samples a consumer's chunks emit in total.

    Args:
        chunks: One consumer's chunks.

    Returns:
        The sum of their ``take``.
    """
    return sum(chunk.take for chunk in chunks)


def skip_consumed(chunks: Sequence[Chunk], n: int) -> list[Chunk]:
    """Drop exactly the first ``n`` samples of a consumer's stream.

    Args:
        chunks: The consumer's chunks.
        n: Samples already consumed, ``0 <= n <= stream_length(chunks)``.

    Returns:
        Chunks emitting the rest of the stream, in the same order.
    """
    total = stream_length(chunks)
    if not 0 <= n <= total:
        raise ValueError(f"cannot skip {n} samples of a stream of {total}")
    rest: list[Chunk] = []
    for i, chunk in enumerate(chunks):
        if n < chunk.take:
            rest.append(chunk.split(n)[1] if n else chunk)
            rest.extend(chunks[i + 1:])
            break
        n -= chunk.take
    return rest


def _cut_stream(chunks: list[Chunk], sizes: list[int]) -> list[list[Chunk]]:
    """Cut one stream of chunks into consecutive parts of ``sizes`` (summing to its length)."""
    parts: list[list[Chunk]] = []
    queue = list(reversed(chunks))
    for size in sizes:
        part: list[Chunk] = []
        while size > 0:
            chunk = queue.pop()
            if chunk.take > size:
                head, tail = chunk.split(size)
                part.append(head)
                queue.append(tail)
                size = 0
            else:
                part.append(chunk)
                size -= chunk.take
        parts.append(part)
    return parts


def redistribute(plans: Sequence[Sequence[Chunk]], consumed: Sequence[int],
                 new_num_consumers: int) -> list[list[Chunk]]:
    """Re-plan the rest of an epoch for another number of consumers (resume on another world size).

    The samples not yet consumed, in old consumer order and then stream order, are cut into
    ``new_num_consumers`` contiguous parts whose sizes differ by at most one. Chunks keep their
    seeds, so every old consumer's remaining order is preserved; no sample is lost or repeated.

    Args:
        plans: Every old consumer's chunks (``plans[c]``), as planned for the epoch.
        consumed: Samples consumer ``c`` had consumed, ``0 <= consumed[c] <= its stream length``.
        new_num_consumers: Consumers of the resumed run.

    Returns:
        ``new_num_consumers`` lists of chunks.
    """
    if len(plans) != len(consumed):
        raise ValueError(f"{len(plans)} plans but {len(consumed)} consumed counts")
    rest = [chunk for chunks, n in zip(plans, consumed) for chunk in skip_consumed(chunks, n)]
    return _cut_stream(rest, _balanced_sizes(stream_length(rest), new_num_consumers))


def iter_indices(chunks: Sequence[Chunk]) -> Iterator[int]:
    """Global indices a consumer's chunks emit, in stream order (reads no data).

    Args:
        chunks: One consumer's chunks.

    Returns:
        An iterator of global sample indices ``g``.
    """
    for chunk in chunks:
        yield from chunk.indices().tolist()
