"""A forward-only, validating parser of one tar shard (the reader's hot loop).

``tarfile`` costs several microseconds per member, more than everything else per small sample, so
``TarCursor`` parses headers itself: a fast path for the plain ustar headers the ingestion writes,
and a general path for pax / GNU long names, directories and odd size fields (shards written by
other tools). It reads one tar *sample* (the adjacent members sharing a key) at a time, decodes
only the members asked for (``members.member_decoder``: ``.npy`` without pickle, ``.json``,
``.txt``) and checks the layout as it goes: adjacent members, ascending keys, no member twice,
only safe extensions, the manifest's sample count and byte size. Errors name the file and key.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import IO, Any

from mvrec_dist.data.members import MemberDecoder, member_decoder

__all__ = ["TarCursor", "ShardFormatError", "ReadStats"]

_BLOCK = 512
_END_BLOCK = bytes(_BLOCK)
_REGULAR, _REGULAR_OLD, _DIRECTORY = ord("0"), 0, ord("5")
_REGULAR_FLAGS = (_REGULAR, _REGULAR_OLD)
_PAX, _PAX_GLOBAL, _GNU_LONGNAME = ord("x"), ord("g"), ord("L")


class ShardFormatError(ValueError):
    """A shard does not follow ``shards/README.md``; the message names the file and the sample."""


@dataclass
class ReadStats:
    """What a reader did (for tests and benchmarks)."""

    opens: int = 0
    """Shard files opened."""
    decoded: int = 0
    """Tar samples decoded (blocks, in the blocked splits)."""
    skipped: int = 0
    """Tar samples passed over without decoding."""
    rows: int = 0
    """Per-row samples built from blocks (users or items)."""


class TarCursor:
    """A forward-only pass over one shard, one tar sample at a time.

    Args:
        location: The shard's path or URI (for messages).
        file: The open shard (seekable, with ``size()``).
        expected_samples: Tar samples the manifest lists for it.
        expected_bytes: Its size per the manifest.
        block_bytes: Read size; members larger than this get a buffer of their own.
        wanted: Member extensions to decode (None: all); the rest are skipped unread.
        stats: Counters to update.

    Raises:
        ShardFormatError: when the file size differs from the manifest's.
    """

    def __init__(self, location: str, file: IO[bytes], expected_samples: int, expected_bytes: int,
                 block_bytes: int, wanted: frozenset[bytes] | None, stats: ReadStats):
        self.location, self.file, self.expected = location, file, expected_samples
        self.block_bytes, self.wanted, self.stats = block_bytes, wanted, stats
        self.size = file.size()
        if self.size != expected_bytes:
            raise ShardFormatError(f"{location}: {self.size} bytes, the manifest says {expected_bytes} "
                                   "(truncated, rewritten, or a stale manifest)")
        self.buf: bytes = b""
        self.pos = 0  # read position in buf
        self.base = 0  # file offset of buf[0]
        self.position = 0  # shard-local index of the next sample
        self.keys: list[bytes] = []  # keys passed so far, ascending, to tell misplaced from out-of-order
        self.members: dict[bytes, tuple[str, MemberDecoder | None]] = {}  # extension -> (name, decoder)
        self.sample: bytes | None = None  # key of the sample being read, for error messages
        self.present: list[str] = []  # member names of the sample read last, decoded or not
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

    def fail(self, reason: str, key: bytes | None = None) -> ShardFormatError:
        """A ``ShardFormatError`` naming this shard and ``key`` (or the sample being read)."""
        return self._fail(reason, key)

    def read_sample(self, decode: bool) -> tuple[bytes, dict[str, Any] | None]:
        """Read (or, with ``decode=False``, pass over) the next sample, checking the tar layout.

        Args:
            decode: Decode the wanted members (else only the headers are parsed).

        Returns:
            ``(key, {extension: value})``, or ``(key, None)`` when not decoded; ``present`` then
            lists every member extension of the sample.

        Raises:
            ShardFormatError: on any layout or member problem, naming the file and key.
        """
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
        self.present = [self.members[e][0] for e in seen]
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
        """Close the shard file."""
        self.file.close()

