"""The shard reader: streams the per-user (per-item) samples of a plan's chunks out of a split's shards.

``mvrec_dist.data.plan`` decides which global indices a consumer reads and in which order;
``ShardReader.iter_chunks`` turns those chunks into ``(g, Sample)`` pairs, one per user (item).
The unit of ``g`` is the row of the split: a user in train/valid/test, an item in ``items``.

Blocked splits (schema 2: train, valid, test, items) hold ``users_per_block`` consecutive rows per
tar sample as columnar arrays (``mvrec_dist.data.blocks``). The reader decodes each needed block
once (only the members the requested per-row members need), validates it (members, dtypes,
shapes, offsets, consecutive ids at the position the manifest implies, the block key) and builds
the per-row ``Sample``s out of views of its arrays. Chunks may start and end inside blocks: the
blocks of the previous chunk are kept, so consecutive chunks of one shard share one forward pass;
a chunk that goes back before them re-opens the shard. A shuffled chunk holds its selected samples
(and their blocks) until it is emitted, so ``shuffle_block`` bounds the reader's memory.
``iter_blocks`` hands bulk readers (evaluation, verification) the block arrays themselves.

Per-item splits (``content``) keep one tar sample per row and are read sample by sample.
``tar_reader.TarCursor`` parses the tars in both cases and checks their structure (adjacent
members, ascending keys, the manifest's counts and byte sizes, safe extensions).

The plan functions are re-exported here: ``docs/DESIGN.md`` names this module for the contract.
"""

from __future__ import annotations

from typing import Collection, Iterable, Iterator

import numpy as np

from mvrec_dist.data.blocks import (BLOCKED_SPLITS, LAYOUTS, Block, BlockError, Sample, block_sizes,
                                    needed_members)
from mvrec_dist.data.fs import open_input_file
from mvrec_dist.data.manifest import Manifest, load_manifest
from mvrec_dist.data.plan import (Chunk, consumer_index, epoch_plan, eval_plan, iter_indices,
                                  num_consumers, redistribute, skip_consumed, stream_length)
from mvrec_dist.data.tar_reader import ReadStats, ShardFormatError, TarCursor

__all__ = ["ShardReader", "Sample", "Block", "ReadStats", "ShardFormatError", "Chunk", "epoch_plan",
           "eval_plan", "skip_consumed", "redistribute", "iter_indices", "stream_length",
           "num_consumers", "consumer_index"]


class _ShardPass:
    """One forward pass over the blocks of one shard, keeping the blocks from the last fetch's first on."""

    def __init__(self, reader: "ShardReader", s: int):
        self.reader, self.s = reader, s
        info = reader.shards[s]
        self.sizes = block_sizes(info.samples, reader.block_size)
        if info.blocks is not None and info.blocks != len(self.sizes):
            raise ShardFormatError(f"{reader.manifest.path(info.path)}: the manifest lists {info.blocks} blocks; "
                                   f"{info.samples} rows at {reader.block_size} per block make {len(self.sizes)}")
        self.cursor = reader._open(s, len(self.sizes))
        self.cache: dict[int, Block] = {}

    def fetch(self, k0: int, k1: int) -> list[Block] | None:
        """Blocks ``k0..k1`` (shard-local, inclusive); None when ``k0`` lies behind the pass."""
        if k0 not in self.cache and self.cursor.position > k0:
            return None
        r, cursor = self.reader, self.cursor
        # Kept: every block from k0 up to the pass position (a contiguous run), so a later fetch
        # starting at or after k0 never needs a block the pass went by.
        cache = {k: block for k, block in self.cache.items() if k >= k0}
        for k in range(k0, k1 + 1):
            block = cache.get(k)
            if block is None:
                while cursor.position < k:
                    cursor.read_sample(False)
                key, members = cursor.read_sample(True)
                try:
                    block = Block.decode(r.layout, key.decode("utf-8", "replace"), members, cursor.present,
                                         index=r.block_starts[self.s] + k,
                                         first=r.starts[self.s] + k * r.block_size, n=self.sizes[k])
                except BlockError as exc:
                    raise ShardFormatError(f"{cursor.location}: block {key.decode('utf-8', 'replace')}: "
                                           f"{exc}") from None
                cache[k] = block
        self.cache = cache
        return [cache[k] for k in range(k0, k1 + 1)]

    def close(self) -> None:
        self.cursor.close()


class ShardReader:
    """Reads chunks of one split of an ingested dataset (local directory or URI).

    A reader holds no open file between ``iter_chunks`` calls, so it can be handed to loader
    worker processes.

    Args:
        dataset_dir: Dataset directory or URI holding ``manifest.json``.
        split: ``train``, ``valid``, ``test``, ``items`` or ``content``.
        members: Per-row member names to build (e.g. ``{"items.npy", "json"}``; blocked splits:
            ``blocks.row_members(split)``); block members that only the others need are skipped
            unread. None builds every member.
        manifest: An already loaded manifest of ``dataset_dir`` (saves reading it again).
        block_bytes: Read size; members larger than this are read straight into their own buffer.

    Raises:
        ManifestError: when the manifest lacks the split or its block size.
        ValueError: when ``members`` names a member the split's samples do not have.
    """

    def __init__(self, dataset_dir: str, split: str, *, members: Collection[str] | None = None,
                 manifest: Manifest | None = None, block_bytes: int = 1 << 20):
        self.manifest = manifest if manifest is not None else load_manifest(dataset_dir)
        self.split = split
        self.shards = self.manifest.shards(split)
        self.block_bytes = block_bytes
        self.starts = np.concatenate([[0], np.cumsum([s.samples for s in self.shards],
                                                     dtype=np.int64)]).tolist()
        self.stats = ReadStats()
        self.rows_wanted = None if members is None else frozenset(members)
        if split in BLOCKED_SPLITS:
            self.layout = LAYOUTS[split]
            self.block_size = self.manifest.block_size(split)
            tar_members = needed_members(split, self.rows_wanted)
            counts = [len(block_sizes(s.samples, self.block_size)) for s in self.shards]
            self.block_starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
        else:
            self.layout, self.block_size, tar_members = None, None, self.rows_wanted
        self.wanted = None if tar_members is None else frozenset(m.encode("utf-8") for m in tar_members)

    @property
    def shard_counts(self) -> list[int]:
        """Samples (users, items) per shard in manifest order (the input of ``epoch_plan``)."""
        return [s.samples for s in self.shards]

    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return self.starts[-1]

    def _shard_of(self, chunk: Chunk) -> int:
        s = int(np.searchsorted(self.starts, chunk.start, side="right")) - 1
        if s >= len(self.shards) or chunk.stop > self.starts[s + 1]:
            raise ValueError(f"chunk [{chunk.start}, {chunk.stop}) is not inside one shard of split "
                             f"'{self.split}' ({self.num_samples} samples in {len(self.shards)} shards)")
        return s

    def _open(self, s: int, expected: int) -> TarCursor:
        info = self.shards[s]
        location = self.manifest.path(info.path)
        self.stats.opens += 1
        file = open_input_file(location)
        try:
            return TarCursor(location, file, expected, info.bytes, self.block_bytes, self.wanted, self.stats)
        except BaseException:
            file.close()
            raise

    def _fetch(self, current: _ShardPass | None, s: int, k0: int, k1: int) -> tuple[list[Block], _ShardPass]:
        """Blocks ``k0..k1`` of shard ``s``, continuing ``current`` when it can, else a new pass."""
        if current is not None and current.s == s:
            blocks = current.fetch(k0, k1)
            if blocks is not None:
                return blocks, current
        if current is not None:
            current.close()
        current = _ShardPass(self, s)
        return current.fetch(k0, k1), current

    def _spans(self, current: _ShardPass | None, s: int, lo: int,
               hi: int) -> tuple[list[tuple[Block, int, int]], _ShardPass]:
        """The blocks holding global rows ``lo .. hi-1`` of shard ``s``, each with its row range ``[a, b)``."""
        base, size = self.starts[s], self.block_size
        blocks, current = self._fetch(current, s, (lo - base) // size, (hi - 1 - base) // size)
        spans = []
        for block in blocks:
            a, b = max(lo, block.first) - block.first, min(hi, block.first + len(block)) - block.first
            self.stats.rows += b - a
            spans.append((block, a, b))
        return spans, current

    def iter_chunks(self, chunks: Iterable[Chunk]) -> Iterator[tuple[int, Sample]]:
        """Stream ``(g, sample)`` for every index the chunks emit, in plan order.

        Args:
            chunks: One consumer's chunks (from ``epoch_plan``, ``skip_consumed``, ``redistribute``
                or ``eval_plan``).

        Returns:
            An iterator of ``(global index, Sample)``: one per user (item); in the blocked splits
            the arrays are views of the block's arrays (writable; one block is shared by its rows).

        Raises:
            ShardFormatError: when a shard breaks the format; the message names the file and key.
            ValueError: when a chunk does not lie inside one shard of the split.
        """
        if self.layout is None:
            return self._iter_samples(chunks)
        return self._iter_rows(chunks)

    def iter_blocks(self, chunks: Iterable[Chunk] | None = None) -> Iterator[Block]:
        """Stream the rows of unshuffled chunks as block slices: the vectorised bulk path.

        Bulk readers (evaluation, verification, statistics) get the columnar arrays instead of
        one ``Sample`` per row. Each yielded ``Block`` holds consecutive rows: ``block.first`` is
        the global index of its row 0, ``block.ids`` the dense ids, ``block.arrays`` the decoded
        members (``offsets.npy`` rebased to start at 0; jagged arrays cut to the rows).

        Args:
            chunks: Chunks with ``seed=None`` (e.g. ``eval_plan``); None reads the whole split.

        Returns:
            An iterator of ``Block``s, in chunk order, covering exactly the chunks' rows.

        Raises:
            ValueError: for a shuffled chunk, a chunk outside one shard, or a per-item split.
            ShardFormatError: as ``iter_chunks``.
        """
        if self.layout is None:
            raise ValueError(f"split '{self.split}' is not blocked; read it with iter_chunks")
        if chunks is None:
            chunks = [c for part in eval_plan(self.shard_counts, num_consumers=1) for c in part]
        current: _ShardPass | None = None
        try:
            for chunk in chunks:
                if chunk.seed is not None:
                    raise ValueError(f"iter_blocks reads unshuffled chunks only, got seed {chunk.seed}")
                lo = chunk.start + chunk.skip
                spans, current = self._spans(current, self._shard_of(chunk), lo, lo + chunk.take)
                for block, a, b in spans:
                    yield block.slice(a, b)
        finally:
            if current is not None:
                current.close()

    def _iter_rows(self, chunks: Iterable[Chunk]) -> Iterator[tuple[int, Sample]]:
        size, wanted = self.block_size, self.rows_wanted
        current: _ShardPass | None = None
        try:
            for chunk in chunks:
                s = self._shard_of(chunk)
                base = self.starts[s]
                offsets = chunk.offsets()
                if chunk.seed is None:
                    lo = chunk.start + chunk.skip
                    spans, current = self._spans(current, s, lo, lo + chunk.take)
                    for block, a, b in spans:
                        g = block.first + a
                        for sample in block.samples(range(a, b), wanted):
                            yield g, sample
                            g += 1
                    continue
                # Shuffled: build the samples block by block in index order, emit in plan order.
                order = np.argsort(offsets, kind="stable")
                rows = chunk.start + offsets[order]
                blocks, current = self._fetch(current, s, (int(rows[0]) - base) // size,
                                              (int(rows[-1]) - base) // size)
                built: list[Sample] = []
                for block in blocks:
                    i0, i1 = np.searchsorted(rows, [block.first, block.first + len(block)])
                    built += block.samples((rows[i0:i1] - block.first).tolist(), wanted)
                self.stats.rows += len(built)
                out: list[Sample | None] = [None] * len(built)
                for p, sample in zip(order.tolist(), built):
                    out[p] = sample
                yield from zip((chunk.start + offsets).tolist(), out)
        finally:
            if current is not None:
                current.close()

    def _iter_samples(self, chunks: Iterable[Chunk]) -> Iterator[tuple[int, Sample]]:
        """``iter_chunks`` of a per-item split: one tar sample per row."""
        cursor: TarCursor | None = None
        shard = -1
        try:
            for chunk in chunks:
                s = self._shard_of(chunk)
                offsets = chunk.offsets()
                first = int(offsets.min())
                span = int(offsets.max()) - first + 1
                lo = chunk.start - self.starts[s] + first  # shard-local position of the first needed sample
                if cursor is None or shard != s or cursor.position > lo:
                    if cursor is not None:
                        cursor.close()
                    cursor, shard = self._open(s, self.shards[s].samples), s
                while cursor.position < lo:
                    cursor.read_sample(False)
                base = chunk.start + first
                if span == chunk.take:
                    # the selected samples are contiguous: decode in file order, no mask needed
                    got = [cursor.read_sample(True) for _ in range(span)]
                else:
                    wanted = np.zeros(span, dtype=bool)
                    wanted[offsets - first] = True
                    got = [cursor.read_sample(w) for w in wanted.tolist()]
                for o in (offsets - first).tolist():
                    key, members = got[o]
                    yield base + o, Sample(key.decode("utf-8"), members)
        finally:
            if cursor is not None:
                cursor.close()
