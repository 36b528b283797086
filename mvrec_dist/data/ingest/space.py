"""Free space before an ingest starts: what the run will write, against what each filesystem holds.

The estimate (``estimate_needs``), in bytes, for an input of ``I`` bytes and ``N`` items:

* **dataset**, on ``ingest.output_dir``'s filesystem: ``I x SHARD_BYTES_PER_INPUT_BYTE[format] +
  N x ITEM_BYTES + FIXED_BYTES`` (``N``: ``synthetic.items``, else ``ASSUMED_ITEMS``: the item count
  is unknown before reading), less the shards an interrupted run of the same inputs and settings
  already finished there (``resume.recorded_bytes``: a resumed run writes only the rest);
* **exchange**, on the same filesystem (the exchange's files live in the work directory beside the
  shards, ``exchange.py``): ``max(0, I x EXCHANGE_BYTES_PER_INPUT_BYTE[format] - shards) + in flight``. The
  pieces peak when the read stage ends; afterwards each partition's pieces are deleted once its grouped
  file (smaller) is written, and each grouped file once its shards (larger) are, so pieces + grouped
  files + shards never exceed the larger of the pieces and the shards, plus the files of the partitions
  in flight (``EXCHANGE_IN_FLIGHT_BYTES``). No interaction passes through Ray's object store (it holds
  the id maps and per-partition summaries), so nothing is estimated for Ray's spilling;
* **synthetic csv**, on ``synthetic.output``'s filesystem, when ``synthetic.enabled`` and an identical
  generation is not already there: ``synthetic_csv_bytes`` (an upper bound from the config), which is
  then also ``I``.

Needs that land on one filesystem add up. Inputs on an object store (``s3://``, ``gs://``) are sized
from their listing and take no local space; an output directory on an object store is not
checked (the job prints so). Only the interactions are estimated: video frames and title tokens
(``video``, ``text``) are not. ``ingest.check_free_space=false`` skips the check. The constants come
from ``benchmarks/ingest_space.py`` (``benchmarks/results/ingest_space.json``, 2026-12-05, after the exchange rework).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from mvrec_dist.config.jobs import IngestJobConfig
from mvrec_dist.data import fs as dfs
from mvrec_dist.data.ingest.errors import IngestError

__all__ = ["SHARD_BYTES_PER_INPUT_BYTE", "ITEM_BYTES", "ASSUMED_ITEMS", "EXCHANGE_BYTES_PER_INPUT_BYTE",
           "EXCHANGE_IN_FLIGHT_BYTES", "FIXED_BYTES", "Need", "synthetic_csv_bytes", "estimate_needs", "free_bytes",
           "check_free_space"]

SHARD_BYTES_PER_INPUT_BYTE = {"pairs_csv": 1.44, "plays_csv": 2.25, "pairs_tsv": 3.77}
"""Bytes of the user-split shards (and user map) per input byte, by format: the largest measured
(``ingest_space.json``). pairs_csv: 1.44 at 1M synthetic interactions, 1.41 at 4M
(``benchmarks/results/ingest.md``: shards 1.40x the csv at 50M). plays_csv: 2.25 at 1M (play time and
duration stored like the timestamps). pairs_tsv: 3.77 on MicroLens-50K, whose 7.2 interactions per
user make the per-user arrays weigh (a tsv row costs ~6 bytes an interaction). Labelled csv uses the
pairs_csv ratio, which bounds it: an exposure is stored once, an interaction three times."""
ITEM_BYTES = 70
"""Bytes per item of the item shards, item map and item stats (69.1-69.7 measured at 19K-889K items)."""
ASSUMED_ITEMS = 1_142_528
"""Items assumed when the count is unknown before reading: the full MicroLens's (about 80 MB)."""
EXCHANGE_BYTES_PER_INPUT_BYTE = {"pairs_csv": 0.80, "plays_csv": 0.80, "pairs_tsv": 1.5}
"""Bytes of the exchange's pieces (LZ4 Arrow IPC) per input byte, by format, rounded up from
``ingest_space.json``: pairs_csv 0.766 at 1M and 0.752 at 4M synthetic interactions (0.74 at 50M),
plays_csv 0.756 at 1M, pairs_tsv 1.43 on MicroLens-50K. Their grouped files are smaller (0.46-0.83):
below the shards for every format, so only the partitions in flight add to the dataset's peak."""
EXCHANGE_IN_FLIGHT_BYTES = 4 * (128 << 20)
"""Files of the partitions being grouped or written at once: a few partitions of ~128 MiB of input."""
FIXED_BYTES = 1 << 20
"""Added to every dataset estimate: tiny inputs' shards are mostly tar headers and padding (10 KiB a tar)."""
_TS_DIGITS = 13
"""Digits of the synthetic generator's millisecond timestamps (2019-2021)."""
_PLAY_DIGITS = 6
"""Digits of its playing times and durations (at most 120,000 ms)."""


@dataclass
class Need:
    """Bytes one filesystem must have free, and why."""

    path: str
    """The directory checked (the first existing one up from what the run writes)."""
    key: str
    """The setting that moves it elsewhere (``ingest.output_dir``, ...)."""
    needed: int
    what: list[str] = field(default_factory=list)
    """How each part of ``needed`` was estimated."""


def synthetic_csv_bytes(cfg) -> int:
    """An upper bound of the csv ``synthetic.generate`` writes for ``cfg`` (a ``SyntheticConfig``).

    Each row has at most the digits of the largest user and item id, a 13-digit timestamp, the separators
    and the newline (plus two 6-digit play fields with ``plays``, a label with ``exposures``, whose rows
    are ``exposures`` per interaction on top).
    """
    row = len(str(cfg.users)) + len(str(cfg.items)) + _TS_DIGITS + 3
    if cfg.plays:
        row += 2 * (_PLAY_DIGITS + 1)
    if cfg.exposures > 0:
        row += 2
    rows = int(cfg.interactions * (1 + cfg.exposures))
    parts = -(-cfg.users // cfg.chunk_users)
    return rows * row + parts * 64  # + a header per part


def _fmt(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


def _existing_dir(path: str) -> str:
    """``path`` or its nearest existing ancestor (what the run will create lives on its filesystem)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def free_bytes(path: str) -> tuple[int, int]:
    """``(bytes free to this user, device id)`` of the filesystem holding ``path`` (or its nearest ancestor)."""
    p = _existing_dir(path)
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize, os.stat(p).st_dev


def estimate_needs(cfg: IngestJobConfig, *, input_bytes: int, input_what: str, fmt: str, items: int | None,
                   done_bytes: int = 0, synthetic_bytes: int = 0) -> list[Need]:
    """What each directory the run writes needs (``check_free_space`` adds up those on one filesystem).

    Args:
        cfg: The job config.
        input_bytes: ``I``: the interactions' bytes (measured or, for synthetic input, estimated).
        input_what: Where ``I`` came from, for the message.
        fmt: The input format (picks the shard ratio).
        items: The item count when known before reading (synthetic input), else None (``ASSUMED_ITEMS``).
        done_bytes: Shards an interrupted run already finished in the work directory (``resume``).
        synthetic_bytes: The synthetic csv still to be generated (0 when there is none to generate).

    Returns:
        The needs, the dataset's first.
    """
    ratio = SHARD_BYTES_PER_INPUT_BYTE[fmt]
    n = items if items is not None else ASSUMED_ITEMS
    dataset = int(input_bytes * ratio) + n * ITEM_BYTES + FIXED_BYTES
    what = [f"dataset {_fmt(dataset)} = input {input_what} x {ratio} ({fmt} shard bytes per input byte, measured) "
            f"+ {n:,} items{'' if items is not None else ' (assumed: MicroLens full)'} x {ITEM_BYTES} bytes "
            f"+ {_fmt(FIXED_BYTES)}"]
    if done_bytes:
        dataset = max(dataset - done_bytes, 0)
        what.append(f"less {_fmt(done_bytes)} of shards an interrupted run finished (ingest.resume)")
    needs = [Need(path=cfg.ingest.output_dir, key="ingest.output_dir", needed=dataset, what=what)]
    if synthetic_bytes:
        needs.append(Need(path=cfg.synthetic.output, key="synthetic.output", needed=synthetic_bytes,
                          what=[f"synthetic csv {_fmt(synthetic_bytes)} (upper bound from synthetic.users, "
                                f"items and interactions)"]))
    pieces = int(input_bytes * EXCHANGE_BYTES_PER_INPUT_BYTE[fmt])
    shards = int(input_bytes * ratio)
    in_flight = min(EXCHANGE_IN_FLIGHT_BYTES, pieces)
    exchange = max(0, pieces - shards) + in_flight
    needs.append(Need(path=cfg.ingest.output_dir, key="ingest.output_dir", needed=exchange,
                      what=[f"exchange {_fmt(exchange)} = pieces {_fmt(pieces)} (input x "
                            f"{EXCHANGE_BYTES_PER_INPUT_BYTE[fmt]}, measured) beyond the shards' {_fmt(shards)}, plus "
                            f"{_fmt(in_flight)} in flight"]))
    return needs


def _inputs(cfg: IngestJobConfig) -> tuple[int, str, str, int | None, int, list | None]:
    """``(I, where it came from, format, items if known, synthetic bytes to generate, input files or None)``."""
    from mvrec_dist.data.ingest.sources import detect_format, list_inputs
    from mvrec_dist.data.synthetic import generated_bytes

    syn = cfg.synthetic
    if syn.enabled:
        fmt = "plays_csv" if syn.plays else "pairs_csv"
        done = generated_bytes(syn)
        if done is None:
            n = synthetic_csv_bytes(syn)
            return n, f"{_fmt(n)} (synthetic csv to generate, upper bound)", fmt, syn.items, n, None
        files = list_inputs(syn.output)
        return done, f"{_fmt(done)} (synthetic csv, generated)", fmt, syn.items, 0, files
    files = list_inputs(cfg.ingest.input)
    n = sum(f.size for f in files)
    where = "local" if dfs.is_local(cfg.ingest.input) else "sized from the object store's listing"
    return n, f"{_fmt(n)} ({len(files)} file{'s' * (len(files) != 1)}, {where})", \
        detect_format(files, cfg.ingest.format), None, 0, files


def check_free_space(cfg: IngestJobConfig) -> list[Need]:
    """Refuse to start an ingest that will not fit on the filesystems it writes to.

    Args:
        cfg: The job config (``ingest.check_free_space`` false: nothing is checked).

    Returns:
        The needs checked (empty when skipped).

    Raises:
        IngestError: one line naming the directory, its free bytes, the bytes needed and how they were
            estimated, and what to do.
    """
    if not cfg.ingest.check_free_space:
        return []
    input_bytes, input_what, fmt, items, synthetic_bytes, files = _inputs(cfg)
    done = 0
    if files is not None and cfg.ingest.resume:
        from mvrec_dist.data.ingest.pipeline import dataset_identity
        from mvrec_dist.data.ingest.resume import recorded_bytes, resume_key

        ingest = cfg.ingest if not cfg.synthetic.enabled else \
            dataclasses.replace(cfg.ingest, input=cfg.synthetic.output, format=fmt)
        done = recorded_bytes(ingest.output_dir, resume_key(dataset_identity(ingest).fingerprint, files))
    needs = estimate_needs(cfg, input_bytes=input_bytes, input_what=input_what, fmt=fmt, items=items,
                           done_bytes=done, synthetic_bytes=synthetic_bytes)
    by_device: dict[int, list[Need]] = {}
    for need in needs:
        if not dfs.is_local(need.path):
            print(f"ingest: {need.path} is on an object store: free space not checked", flush=True)
            continue
        by_device.setdefault(free_bytes(need.path)[1], []).append(need)
    for group in by_device.values():
        free, _ = free_bytes(group[0].path)
        needed = sum(n.needed for n in group)
        if needed > free:
            where = _existing_dir(group[0].path)
            raise IngestError(
                f"{where}: {_fmt(free)} ({free:,} bytes) free, but this ingest needs about {_fmt(needed)} "
                f"({needed:,} bytes) there: " + "; ".join(w for n in group for w in n.what) +
                ". Free space there, point " + " / ".join(dict.fromkeys(n.key for n in group)) +
                " at a filesystem with room, or set ingest.check_free_space=false to skip this check")
    return needs
