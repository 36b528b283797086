"""The shard reader: streams the samples of a plan's chunks out of a split's tar shards.

``mvrec_dist.data.plan`` decides which global indices a consumer reads and in which order;
``ShardReader.iter_chunks`` turns those chunks into ``(g, Sample)`` pairs. Each shard is read
front to back with a small tar parser of its own (``tarfile`` costs several microseconds per member,
more than everything else per small sample): consecutive chunks of one shard share one pass, the
members of samples outside the chunk are skipped without decoding, and the tar structure is checked
as it goes (adjacent members, ascending keys, the manifest's sample count and byte size). A
shuffled chunk holds its selected samples in memory until it is emitted, so ``shuffle_block``
bounds the reader's memory.

The plan functions are re-exported here: ``docs/DESIGN.md`` names this module for the contract.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import IO, Any, Collection, Iterable, Iterator, NamedTuple

import numpy as np

from mvrec_dist.data.fs import open_input_file
from mvrec_dist.data.manifest import Manifest, ShardInfo, load_manifest
from mvrec_dist.data.members import MemberDecoder, member_decoder
from mvrec_dist.data.plan import (Chunk, consumer_index, epoch_plan, eval_plan, iter_indices,
                                  num_consumers, redistribute, skip_consumed, stream_length)

__all__ = ["ShardReader", "Sample", "ReadStats", "ShardFormatError", "Chunk", "epoch_plan",
           "eval_plan", "skip_consumed", "redistribute", "iter_indices", "stream_length",
           "num_consumers", "consumer_index"]

_BLOCK = 512
_END_BLOCK = bytes(_BLOCK)
_REGULAR, _REGULAR_OLD, _DIRECTORY = ord("0"), 0, ord("5")
_REGULAR_FLAGS = (_REGULAR, _REGULAR_OLD)
_PAX, _PAX_GLOBAL, _GNU_LONGNAME = ord("x"), ord("g"), ord("L")


class ShardFormatError(ValueError):
    """A shard does not follow ``shards/README.md``; the message names the file and the sample."""


class Sample(NamedTuple):
    """One decoded sample."""

    key: str
    """Sample key, e.g. ``u0000000123``."""
    members: dict[str, Any]
    """Member extension (``items.npy``, ``json``, ``txt``) -> ndarray, JSON value or str."""


@dataclass
class ReadStats:
    """What a reader did (for tests and benchmarks)."""

    opens: int = 0
    """Shard files opened."""
    decoded: int = 0
    """Samples decoded."""
    skipped: int = 0
    """Samples passed over without decoding."""


class _TarCursor:
    """A forward-only pass over one shard, one sample at a time."""

    def __init__(self, location: str, file: IO[bytes], info: ShardInfo, block_bytes: int,
                 wanted: frozenset[bytes] | None, stats: ReadStats):
        self.location, self.file, self.expected = location, file, info.samples
        self.block_bytes, self.wanted, self.stats = block_bytes, wanted, stats
        self.size = file.size()
        if self.size != info.bytes:
            raise ShardFormatError(f"{location}: {self.size} bytes, the manifest says {info.bytes} "
                                   "(truncated, rewritten, or a stale manifest)")
        self.buf: bytes = b""
        self.pos = 0  # read position in buf
        self.base = 0  # file offset of buf[0]
        self.position = 0  # shard-local index of the next sample
        self.keys: list[bytes] = []  # keys passed so far, ascending, to tell misplaced from out-of-order
        self.members: dict[bytes, tuple[str, MemberDecoder | None]] = {}  # extension -> (name, decoder)
        self.sample: bytes | None = None  # key of the sample being read, for error messages
        self.head = self._header()  # (key, ext, size) of the next member, None at the end

    def _fail(self, reason: str, key: bytes | None = None) -> ShardFormatError:
        if key is not None:
            return ShardFormatError(f"{self.location}: sample {key.decode('utf-8', 'replace')} {reason}")
        if self.sample is not None:
            return ShardFormatError(f"{self.location}: while reading sample "
                                    f"{self.sample.decode('utf-8', 'replace')}: {reason}")
        return ShardFormatError(f"{self.location}: {reason}")

    def _fill(self, n: int) -> bool:
        """Make ``n`` bytes available at ``pos``; False when the file ends first."""
        avail = len(self.buf) - self.pos
        if avail >= n:
            return True
        pieces = [self.buf[self.pos:]]
        while avail < n:
            more = self.file.read(max(self.block_bytes, n - avail))
            if not more:
                break
            pieces.append(more)
            avail += len(more)
        self.base += self.pos
        self.buf = b"".join(pieces)
        self.pos = 0
        return avail >= n

    def _advance(self, n: int) -> None:
        """Move ``n`` bytes forward, seeking past what is not buffered."""
        if n <= len(self.buf) - self.pos:
            self.pos += n
            return
        target = self.base + self.pos + n
        if target > self.size:
            raise self._fail(f"truncated: a member runs to byte {target}, the file has {self.size}")
        self.file.seek(target)
        self.buf, self.pos, self.base = b"", 0, target

    def _payload(self, size: int) -> tuple[Any, int, bool]:
        """The next ``size`` bytes as ``(buffer, offset, owned)``, then skip the tar padding."""
        padded = (size + _BLOCK - 1) & ~(_BLOCK - 1)
        if size <= self.block_bytes:
            if len(self.buf) - self.pos < padded and not self._fill(padded):
                raise self._fail(f"truncated: a {size}-byte member at byte {self.base + self.pos} "
                                 "runs past the end of the file")
            buf, offset = self.buf, self.pos
            self.pos += padded
            return buf, offset, False
        data = bytearray(size)
        have = min(size, len(self.buf) - self.pos)
        data[:have] = self.buf[self.pos:self.pos + have]
        view, got = memoryview(data), have
        while got < size:
            n = self.file.readinto(view[got:])
            if not n:
                raise self._fail(f"truncated: a {size}-byte member runs past the end of the file")
            got += n
        target = self.base + self.pos + padded
        self.file.seek(min(target, self.size))
        self.buf, self.pos, self.base = b"", 0, target
        return data, 0, True

    def _header(self) -> tuple[bytes, bytes, int] | None:
        """The next regular member's ``(key, extension, size)``; None at the end of the archive."""
        b, p = self.buf, self.pos
        # fast path: a plain ustar header of a regular file, name without directory or prefix
        if len(b) - p >= _BLOCK and b[p + 257:p + 262] == b"ustar" and b[p + 156] in _REGULAR_FLAGS \
                and not b[p + 345]:
            end = b.find(0, p, p + 100)
            if end < 0:
                end = p + 100
            dot = b.find(b".", p, end)
            if dot > p and b.find(b"/", p, end) < 0:
                try:
                    size = int(b[p + 124:p + 135], 8)
                except ValueError:
                    pass
                else:
                    self.pos = p + _BLOCK
                    return b[p:dot], b[dot + 1:end], size
        return self._header_slow()

    def _header_slow(self) -> tuple[bytes, bytes, int] | None:
        """``_header`` for any header: pax and GNU long names, directories, odd size fields."""
        long_name: bytes | None = None
        pax: dict[bytes, bytes] = {}
        while True:
            if not self._fill(_BLOCK):
                if len(self.buf) == self.pos:
                    return None  # end-of-archive blocks are optional for readers, as for tarfile
                raise self._fail(f"truncated: a partial tar header at byte {self.base + self.pos}")
            b, p = self.buf, self.pos
            if b[p + 257:p + 262] != b"ustar":
                if b[p:p + _BLOCK] == _END_BLOCK:
                    return None
                raise self._fail(f"no tar header at byte {self.base + p} (corrupt file?)")
            flag = b[p + 156]
            raw_size = b[p + 124:p + 136]
            try:
                size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
            except ValueError:
                raise self._fail(f"unreadable size field {raw_size!r} at byte {self.base + p}") from None
            self.pos += _BLOCK
            if flag == _REGULAR or flag == _REGULAR_OLD:
                name = long_name or pax.get(b"path")
                if name is None:
                    name = b[p:p + 100].split(b"\0", 1)[0]
                    if b[p + 345]:
                        name = b[p + 345:p + 500].split(b"\0", 1)[0] + b"/" + name
                size = int(pax.get(b"size", size))
                slash = name.rfind(b"/")
                dot = name.find(b".", slash + 1)
                if dot < 0:
                    raise self._fail(f"member '{name.decode('utf-8', 'replace')}' has no "
                                     "<key>.<extension> name")
                return name[:dot], name[dot + 1:], size
            if flag == _DIRECTORY:
                continue
            if flag in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME):
                buf, offset, _ = self._payload(size)
                data = bytes(buf[offset:offset + size])
                if flag == _GNU_LONGNAME:
                    long_name = data.split(b"\0", 1)[0]
                elif flag == _PAX:
                    pax.update(self._pax_records(data))
                continue
            raise self._fail(f"tar member type {chr(flag)!r} at byte {self.base + p} is not a "
                             "regular file")

    def _pax_records(self, data: bytes) -> dict[bytes, bytes]:
        records, i = {}, 0
        while i < len(data) and data[i:i + 1] != b"\0":
            space = data.find(b" ", i)
            try:
                length = int(data[i:space])
                key, _, value = data[space + 1:i + length - 1].partition(b"=")
            except ValueError:
                raise self._fail("unreadable pax header") from None
            records[key] = value
            i += length
        return records

    def _member(self, ext: bytes, key: bytes) -> tuple[str, MemberDecoder | None]:
        """``(extension name, decoder or None when not wanted)``; rejects unsafe extensions."""
        try:
            name = ext.decode("utf-8")
            decoder = member_decoder(name)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._fail(f"member '{ext.decode('utf-8', 'replace')}': {exc}", key) from None
        entry = self.members[ext] = (name, decoder if self.wanted is None or ext in self.wanted else None)
        return entry

    def read_sample(self, decode: bool) -> tuple[bytes, dict[str, Any] | None]:
        """Read (or, with ``decode=False``, pass over) the next sample, checking the tar layout."""
        head = self.head
        if head is None:
            raise ShardFormatError(f"{self.location}: ends after {self.position} samples, the manifest "
                                   f"says {self.expected}")
        key, ext, size = head
        self.sample = key
        values: dict[str, Any] = {}
        seen: list[bytes] = []
        while True:
            if ext in seen:
                raise self._fail(f"member '{ext.decode('utf-8', 'replace')}' appears twice", key)
            seen.append(ext)
            name, decoder = self.members.get(ext) or self._member(ext, key)
            if decode and decoder is not None:
                buf, offset, owned = self._payload(size)
                try:
                    values[name] = decoder(buf, offset, size, owned)
                except ValueError as exc:
                    raise self._fail(f"member '{name}': {exc}", key) from None
            else:
                self._advance((size + _BLOCK - 1) & ~(_BLOCK - 1))
            head = self._header()
            if head is None or head[0] != key:
                break
            ext, size = head[1], head[2]
        if head is not None and head[0] < key:
            misplaced = head[0]
            i = bisect_left(self.keys, misplaced)
            if i < len(self.keys) and self.keys[i] == misplaced:
                raise self._fail("has members that are not adjacent (more follow after sample "
                                 f"{key.decode('utf-8', 'replace')})", misplaced)
            raise self._fail(f"comes after sample {key.decode('utf-8', 'replace')}: keys are not "
                             "in ascending order", misplaced)
        self.keys.append(key)
        self.position += 1
        self.head = head
        if decode:
            self.stats.decoded += 1
        else:
            self.stats.skipped += 1
        if self.position == self.expected and head is not None:
            raise self._fail(f"has more than the manifest's {self.expected} samples", head[0])
        return key, values if decode else None

    def close(self) -> None:
        self.file.close()


class ShardReader:
    """Reads chunks of one split of an ingested dataset (local directory or URI).

    A reader holds no open file between ``iter_chunks`` calls, so it can be handed to loader
    worker processes.

    Args:
        dataset_dir: Dataset directory or URI holding ``manifest.json``.
        split: ``train``, ``valid``, ``test``, ``items`` or ``content``.
        members: Member extensions to decode (e.g. ``{"items.npy", "json"}``); the others are
            skipped unread. None decodes every member.
        manifest: An already loaded manifest of ``dataset_dir`` (saves reading it again).
        block_bytes: Read size; members larger than this are read straight into their own buffer.
    """

    def __init__(self, dataset_dir: str, split: str, *, members: Collection[str] | None = None,
                 manifest: Manifest | None = None, block_bytes: int = 1 << 20):
        self.manifest = manifest if manifest is not None else load_manifest(dataset_dir)
        self.split = split
        self.shards = self.manifest.shards(split)
        self.wanted = None if members is None else frozenset(m.encode("utf-8") for m in members)
        self.block_bytes = block_bytes
        self.starts = np.concatenate([[0], np.cumsum([s.samples for s in self.shards],
                                                     dtype=np.int64)]).tolist()
        self.stats = ReadStats()

    @property
    def shard_counts(self) -> list[int]:
        """Samples per shard in manifest order (the input of ``epoch_plan``)."""
        return [s.samples for s in self.shards]

    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return self.starts[-1]

    def _shard_of(self, chunk: Chunk) -> int:
        s = bisect_right(self.starts, chunk.start) - 1
        if s >= len(self.shards) or chunk.stop > self.starts[s + 1]:
            raise ValueError(f"chunk [{chunk.start}, {chunk.stop}) is not inside one shard of split "
                             f"'{self.split}' ({self.num_samples} samples in {len(self.shards)} shards)")
        return s

    def _open(self, s: int) -> _TarCursor:
        info = self.shards[s]
        location = self.manifest.path(info.path)
        self.stats.opens += 1
        file = open_input_file(location)
        try:
            return _TarCursor(location, file, info, self.block_bytes, self.wanted, self.stats)
        except BaseException:
            file.close()
            raise

    def _skip_to(self, cursor: _TarCursor, position: int) -> None:
        while cursor.position < position:
            cursor.read_sample(False)

    def iter_chunks(self, chunks: Iterable[Chunk]) -> Iterator[tuple[int, Sample]]:
        """Stream ``(g, sample)`` for every index the chunks emit, in plan order.

        Args:
            chunks: One consumer's chunks (from ``epoch_plan``, ``skip_consumed``, ``redistribute``
                or ``eval_plan``).

        Returns:
            An iterator of ``(global index, Sample)``.

        Raises:
            ShardFormatError: when a shard breaks the format; the message names the file and key.
            ValueError: when a chunk does not lie inside one shard of the split.
        """
        cursor: _TarCursor | None = None
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
                    cursor, shard = self._open(s), s
                self._skip_to(cursor, lo)
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
