"""Measure the constants of the ingest job's free-space check (``mvrec_dist.data.ingest.space``).

For each input format at about 1M interactions: the bytes of what grows with the interactions (the
user-split shards and the user map) per input byte, and of what grows with the items (item shards,
item map, stats) per item. For the read+group exchange (``exchange.py``): its pieces' and grouped files'
bytes per input byte, and the bytes Ray spilled (in all, and the most on disk at once, sampled every
50 ms) with an object store far smaller than the data (none since the exchange left the object store).

    python benchmarks/ingest_space.py --work /tmp/ingest-space [--microlens ../shared/data/microlens-50k]

Prints one JSON object; the figures are copied, with the date, into ``space.py``'s constants.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.harness.rss import ray_spilled_bytes  # noqa: E402

FULL = {"users": 34_492_051, "items": 1_142_528, "interactions": 1_006_528_709}
"""The full MicroLens shape (``bench_ingest_scale.FULL_TOTALS``): part k is that dataset's k-th part."""
CHUNK_USERS = 34_268
"""Users per generated part: about 1M interactions (as ``bench_ingest_scale``)."""


USER_PARTS = ("train", "valid", "test", "exposures", "maps/users.npy")
"""What grows with the interactions (and users); everything else grows with the items."""


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _SpillWatch:
    """Peak bytes of Ray's spilled-object files on disk, sampled every 50 ms in a thread."""

    def __init__(self, session_dir: str) -> None:
        import threading

        self.root, self.peak, self._stop = Path(session_dir), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for d in self.root.glob("ray_spilled_objects*"):
                for f in d.rglob("*"):
                    try:
                        total += f.stat().st_size
                    except OSError:  # deleted while listed
                        pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _write_parts(cfg, parts: int, out: Path, plays: bool) -> int:
    from mvrec_dist.data.synthetic import generate_part

    out.mkdir(parents=True, exist_ok=True)
    c = dataclasses.replace(cfg, plays=plays)
    return sum((out / f"part-{p:05d}.csv").write_bytes(generate_part(c, p)) for p in range(parts))


def _ingest(inp: Path, out: Path, fmt: str) -> dict:
    from mvrec_dist.config import IngestConfig
    from mvrec_dist.data.ingest import run_ingest

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    r = run_ingest(IngestConfig(input=str(inp), output_dir=str(out), format=fmt, progress=False,
                                duplicates="keep"))
    input_bytes = sum(i["bytes"] for i in r.manifest["inputs"])
    total = _tree_bytes(out)
    user = sum(_tree_bytes(out / p) if (out / p).is_dir() else (out / p).stat().st_size
               for p in USER_PARTS if (out / p).exists())
    items = r.manifest["counts"]["items"]
    shutil.rmtree(out)
    return {"format": fmt, "interactions": r.manifest["counts"]["input_interactions"], "input_bytes": input_bytes,
            "exchange_piece_bytes": r.exchange["piece_bytes"],
            "exchange_ratio": round(r.exchange["piece_bytes"] / input_bytes, 4),
            "exchange_grouped_ratio": round(r.exchange["grouped_bytes"] / input_bytes, 4),
            "dataset_bytes": total, "ratio": round(total / input_bytes, 4), "user_bytes": user,
            "user_ratio": round(user / input_bytes, 4), "items": items,
            "item_bytes_per_item": round((total - user) / items, 1), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="scratch directory (deleted at the end)")
    ap.add_argument("--microlens", default=None, help="MicroLens-50K directory (pairs_tsv ratio); skipped if absent")
    ap.add_argument("--spill-parts", type=int, default=4, help="~1M-interaction parts for the spill run")
    ap.add_argument("--store-mib", type=int, default=80, help="object store of the spill run (MiB)")
    args = ap.parse_args()

    import ray

    from mvrec_dist.config import SyntheticConfig
    from mvrec_dist.runtime.ray_cluster import LOOPBACK_ENV, apply_loopback_env

    work = Path(args.work)
    cfg = SyntheticConfig(users=FULL["users"], items=FULL["items"], interactions=FULL["interactions"], seed=0,
                          chunk_users=CHUNK_USERS)
    apply_loopback_env()
    out: dict = {"date": time.strftime("%Y-%m-%d"), "ratios": [], "spill": None}
    try:
        ray.init(address="local", num_cpus=2, object_store_memory=args.store_mib << 20, include_dashboard=False,
                 runtime_env={"env_vars": dict(LOOPBACK_ENV, OMP_NUM_THREADS="1")})
        csv = work / "csv"
        _write_parts(cfg, args.spill_parts, csv, plays=False)
        before = ray_spilled_bytes()
        watch = _SpillWatch(ray._private.worker._global_node.get_session_dir_path())
        r = _ingest(csv, work / "ds", "pairs_csv")
        peak = watch.stop()
        spilled = ray_spilled_bytes() - before
        out["spill"] = {**r, "object_store_bytes": args.store_mib << 20, "spilled_bytes": spilled,
                        "spilled_per_input_byte": round(spilled / r["input_bytes"], 4),
                        "peak_spill_on_disk_bytes": peak, "peak_on_disk_per_input_byte": round(peak / r["input_bytes"], 4)}
        shutil.rmtree(csv)
        for plays, fmt in ((False, "pairs_csv"), (True, "plays_csv")):
            _write_parts(cfg, 1, work / fmt, plays=plays)
            out["ratios"].append(_ingest(work / fmt, work / "ds", fmt))
            shutil.rmtree(work / fmt)
        tsv = Path(args.microlens or "") / "MicroLens-50k_pairs.tsv"
        if args.microlens and tsv.exists():
            out["ratios"].append({**_ingest(tsv, work / "ds", "pairs_tsv"), "input": "MicroLens-50K"})
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
