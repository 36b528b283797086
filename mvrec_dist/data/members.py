"""Safe decoding of shard members: ``.npy`` (never pickle), ``.json`` and ``.txt`` (UTF-8).

Decoders take ``(buffer, offset, size)`` so the reader can decode straight out of its read buffer
without slicing first. ``.npy`` has a fast path: the header is parsed once per distinct header text
(sequence arrays of one length share it) and the data is taken with ``np.frombuffer``; object
dtypes, which only pickle can restore, are refused.
"""

from __future__ import annotations

import ast
import json
from typing import Any, Callable

import numpy as np

__all__ = ["MemberDecoder", "member_decoder", "decode_npy"]

MemberDecoder = Callable[[Any, int, int, bool], Any]
"""``decoder(buffer, offset, size, owned) -> value``; ``owned`` says the buffer belongs to this
member alone, so arrays may view it instead of copying."""

_NPY_MAGIC = b"\x93NUMPY"
_JSON = json.JSONDecoder()
_NPY_CACHE_LIMIT = 4096
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


def _npy_spec(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse a ``.npy`` header dict into ``(dtype, shape, fortran_order, count)``."""
    try:
        meta = ast.literal_eval(header.decode("latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable .npy header {header[:80]!r} ({exc})") from None
    if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"a .npy header needs exactly descr, fortran_order and shape, got {header[:80]!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(meta["descr"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f".npy dtype {meta['descr']!r} is invalid ({exc})") from None
    if dtype.hasobject:
        raise ValueError(f".npy dtype {meta['descr']!r} holds Python objects, which only pickle can "
                         "load; refused (shards are read with allow_pickle=False)")
    shape = meta["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f".npy shape {shape!r} is invalid")
    return dtype, shape, bool(meta["fortran_order"]), int(np.prod(shape, dtype=np.int64))


def decode_npy(buf: Any, offset: int, size: int, owned: bool = False) -> np.ndarray:
    """Decode one ``.npy`` member without pickle.

    Args:
        buf: Bytes-like object holding the member.
        offset: Where the member starts in ``buf``.
        size: Member size in bytes.
        owned: Whether the returned array may view ``buf`` (else it copies out of it, so that a
            small array does not keep a large read buffer alive).

    Returns:
        The array (writable).

    Raises:
        ValueError: on a bad magic or header, an object dtype, or a data size that does not match.
    """
    if size < 10 or buf[offset:offset + 6] != _NPY_MAGIC:
        raise ValueError("not a .npy file (bad magic)")
    major = buf[offset + 6]
    if major == 1:
        start = offset + 10
        length = buf[offset + 8] | buf[offset + 9] << 8
    elif major in (2, 3):
        start = offset + 12
        length = int.from_bytes(buf[offset + 8:offset + 12], "little")
    else:
        raise ValueError(f".npy format version {major} is not supported")
    header = bytes(buf[start:start + length])
    spec = _npy_headers.get(header)
    if spec is None:
        spec = _npy_spec(header)
        if len(_npy_headers) >= _NPY_CACHE_LIMIT:
            _npy_headers.clear()
        _npy_headers[header] = spec
    dtype, shape, fortran, count = spec
    data = start + length
    if offset + size - data != count * dtype.itemsize:
        raise ValueError(f".npy data is {offset + size - data} bytes, header says {count} x "
                         f"{dtype.itemsize} (truncated or corrupt)")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=data)
    if not owned or not arr.flags.writeable:
        arr = arr.copy()
    if fortran:
        return arr.reshape(shape[::-1]).T
    return arr.reshape(shape)


def _decode_json(buf: Any, offset: int, size: int, owned: bool = False) -> Any:
    try:
        text = buf[offset:offset + size].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"JSON is not valid UTF-8 ({exc})") from None
    try:
        value, end = _JSON.scan_once(text, 0)
    except (StopIteration, ValueError):
        end = -1
    if end == len(text):
        return value
    try:  # leading or trailing blanks, or an error: the full decoder accepts or explains them
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc})") from None


def _decode_txt(buf: Any, offset: int, size: int, owned: bool = False) -> str:
    try:
        return buf[offset:offset + size].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"text is not valid UTF-8 ({exc})") from None


def member_decoder(ext: str) -> MemberDecoder:
    """The decoder of a member extension.

    Args:
        ext: The member name after the sample key (``items.npy``, ``json``, ``txt``); its last
            dot-separated part picks the decoder.

    Returns:
        A ``MemberDecoder``.

    Raises:
        ValueError: for any other extension (only safe encodings are allowed in shards).
    """
    last = ext.rsplit(".", 1)[-1]
    if last == "npy":
        return decode_npy
    if last == "json":
        return _decode_json
    if last == "txt":
        return _decode_txt
    raise ValueError(f"extension '{ext}' is not a safe shard encoding (.npy, .json or .txt)")
