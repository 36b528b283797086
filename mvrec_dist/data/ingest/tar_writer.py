"""Deterministic uncompressed tar archives, built in memory with vectorised headers.

The output is byte-identical to what ``tarfile`` writes in ``USTAR_FORMAT`` for members with
mode 0644, mtime 0, uid/gid 0 and empty user/group names (tested against it), so any tar or
webdataset reader reads it. Building the 512-byte headers of all members as one numpy array
instead of through ``tarfile.TarInfo`` is what keeps millions of small members affordable.
"""

from __future__ import annotations

import hashlib
from typing import Sequence, Union

import numpy as np

__all__ = ["BLOCK", "RECORD", "Payload", "tar_frame", "tar_bytes", "write_bytes"]

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads archives to whole records of 20 blocks

Piece = Union[bytes, bytearray, memoryview]
"""Bytes-like with one-byte items (a ``memoryview`` of another format must be ``cast("B")``)."""
Payload = Sequence[Piece]
"""A member's content: bytes-like pieces written back to back."""


def _template() -> np.ndarray:
    h = np.zeros(BLOCK, dtype=np.uint8)

    def put(offset: int, text: bytes) -> None:
        h[offset:offset + len(text)] = np.frombuffer(text, dtype=np.uint8)

    put(100, b"0000644\0")       # mode
    put(108, b"0000000\0")       # uid
    put(116, b"0000000\0")       # gid
    put(136, b"00000000000\0")   # mtime 0
    put(148, b"        ")        # checksum field counts as spaces while summing
    put(156, b"0")               # regular file
    put(257, b"ustar\x0000")     # magic + version; devmajor/devminor stay NUL for regular files
    return h


_TEMPLATE = _template()
_OCT11 = (3 * np.arange(10, -1, -1)).astype(np.uint64)
_OCT6 = (3 * np.arange(5, -1, -1)).astype(np.int64)


def tar_frame(names: Union[Sequence[bytes], np.ndarray], sizes: np.ndarray) -> tuple[bytearray, np.ndarray]:
    """An archive with every header written and every member's data area zeroed.

    Callers that fill the data areas themselves (vectorised, e.g. ``array_shards``) use this
    directly; ``tar_bytes`` fills them from byte pieces.

    Args:
        names: Member names (ASCII, at most 100 bytes each), or the name fields already laid out
            as uint8 [M, 100] (NUL-padded).
        sizes: Member sizes, int64 [M].

    Returns:
        ``(archive, data offsets)``: the buffer (end blocks and record padding included) and where
        each member's data starts, int64 [M] (always a multiple of 512).
    """
    m = len(names)
    sizes = np.asarray(sizes, dtype=np.int64)
    if m != len(sizes):
        raise ValueError(f"{m} names for {len(sizes)} sizes")
    if m and sizes.max() >= 8 ** 11:
        raise ValueError("a tar member of 8 GiB or more needs a non-ustar header")
    data_blocks = (sizes + BLOCK - 1) // BLOCK
    header_block = np.zeros(m, dtype=np.int64)
    if m:
        np.cumsum(1 + data_blocks[:-1], out=header_block[1:])
    used = int(header_block[-1] + 1 + data_blocks[-1]) if m else 0
    total = (used + 2) * BLOCK
    total += -total % RECORD
    out = bytearray(total)
    if m == 0:
        return out, header_block
    if isinstance(names, np.ndarray):
        name_fields = names
    else:
        if max(len(n) for n in names) > 100:
            raise ValueError("tar member names are limited to 100 bytes here")
        name_fields = np.frombuffer(b"".join(n.ljust(100, b"\0") for n in names), dtype=np.uint8).reshape(m, 100)
    h = np.empty((m, BLOCK), dtype=np.uint8)
    h[:] = _TEMPLATE
    h[:, :100] = name_fields
    h[:, 124:135] = ((sizes.astype(np.uint64)[:, None] >> _OCT11) & np.uint64(7)) + np.uint64(48)
    h[:, 135] = 0
    chk = h.sum(axis=1, dtype=np.int64)
    h[:, 148:154] = ((chk[:, None] >> _OCT6) & 7) + 48
    h[:, 154] = 0
    np.frombuffer(out, dtype=np.uint8).reshape(-1, BLOCK)[header_block] = h
    return out, (header_block + 1) * BLOCK


def tar_bytes(names: Sequence[bytes], payloads: Sequence[Payload],
              sizes: np.ndarray | None = None) -> bytearray:
    """Render a tar archive of ``names[i]`` -> ``payloads[i]`` in the given order.

    Args:
        names: Member names (ASCII, at most 100 bytes each).
        payloads: Member contents, each a sequence of bytes-like pieces.
        sizes: Member sizes when the caller knows them already (saves a pass), int64 [M].

    Returns:
        The archive, including the end-of-archive blocks and record padding.
    """
    if len(names) != len(payloads):
        raise ValueError(f"{len(names)} names for {len(payloads)} payloads")
    if sizes is None:
        sizes = np.fromiter((sum(len(x) for x in ps) for ps in payloads), dtype=np.int64, count=len(names))
    out, starts = tar_frame(names, sizes)
    view = memoryview(out)
    for pos, ps in zip(starts.tolist(), payloads):
        for x in ps:
            k = len(x)
            view[pos:pos + k] = x
            pos += k
    return out


def write_bytes(path: str, data: Union[bytes, bytearray]) -> dict:
    """Write ``data`` to ``path`` (local or URI) and describe it for the manifest.

    Args:
        path: Destination; parent directories are created.
        data: The file content.

    Returns:
        ``{"bytes": size, "sha256": hex digest}``.
    """
    from mvrec_dist.data import fs as dfs

    with dfs.open_output_stream(path) as f:
        f.write(data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
