"""Ingestion throughput: end-to-end interactions/s next to a pyarrow parse-only pass (the floor).

    flock /tmp/mvrec_heavy.lock python benchmarks/bench_ingest.py              # 1m, 10m, 50m
    flock /tmp/mvrec_heavy.lock python benchmarks/bench_ingest.py --sizes 1m   # quick look

For each size the synthetic csv of ``jobs/configs/synthetic/ingest-<size>.yaml`` is generated under
``benchmarks/work/`` (git-ignored; reused when already there), read three times with
``pyarrow.csv.read_csv`` using every core (parse only: the floor no ingestion can beat; the fastest pass
counts), then
ingested with ``run_ingest`` on one embedded Ray cluster started beforehand (cluster start is
reported separately). A sampler thread records the peak RSS of the driver and of every Ray
process. Results go to ``benchmarks/results/ingest.json`` and ``ingest.md``; the shards are
deleted after each size unless ``--keep``.

Targets (issue 2): end to end >= 0.3x the parse-only rate at the largest size; cost per
interaction growing <= 1.3x from the smallest to the largest size.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402

from mvrec_dist.config import IngestJobConfig, RayConfig, load_config  # noqa: E402
from mvrec_dist.data.ingest import run_ingest  # noqa: E402
from mvrec_dist.data.synthetic import generate  # noqa: E402
from mvrec_dist.runtime.ray_cluster import ray_session  # noqa: E402

WORK = REPO / "benchmarks" / "work"
TRIED = [
    "(schema 1) the write stage dominated; rendering the nine tar members per user in Python cost ~24 us/user, "
    "then laid out per member kind with numpy gathers (~9 us/user): write stage 17.5 s -> 13.6 s at 10M",
    "(schema 1) the parser's allowed-bytes check with bytes.translate instead of a numpy lookup (5x faster)",
    "(schema 1) shuffle compression zstd / lz4 / none: no difference beyond run-to-run noise (about 10% on this "
    "shared 2-core machine)",
    "(schema 1) 4 / 8 / 16 shuffle partitions, and one Ray Data block per read range: no measurable change",
    "(schema 1) what remained per user in a write task was mostly sha256 and the kernel copy of ~9.4 KB of tar",
    "schema 2: blocks of 1024 consecutive users as columnar arrays instead of nine tar members per user: "
    "shards 12.6x -> 0.86x the csv at 10M (3238 MB -> 222 MB)",
    "the group-by-user hash shuffle plus the write stage's repartition by shard replaced by one range-"
    "partitioning sort whose blocks write their own shards (A/B at 10M under the same load, two runs each: "
    "write 3.6 / 4.1 s -> 1.4 / 1.5 s, read+group 10.2 / 10.3 s -> 11.2 / 12.0 s, end to end 15.5 / 16.3 s -> "
    "14.4 / 15.5 s)",
    "group_users skips its lexsort when the exchange delivers blocks sorted by (user, timestamp, order)",
    "(issue 20, profile first) at 50M the range-partitioning sort took 28 of 41 s; the read tasks' own CPU work "
    "(parse + validate) was close to pyarrow's parse-only CPU; the rest was the exchange: every parsed row "
    "serialised into the object store, sorted by map tasks, merged by reduce tasks, and spilled above the "
    "store's capacity (2.6x the input at 4M with an 80 MiB store)",
    "(issue 20) the exchange moved onto the dataset's disk (exchange.py): the read task, fused with it by Ray "
    "Data, writes one LZ4 Arrow IPC piece per user range; one Ray task per range sorts its pieces, groups them "
    "and writes one grouped file; the write stage reads it. End to end 10M 14.8 s -> 9.3 s (ratio 0.05 -> 0.27), "
    "50M 41.2 s -> 33.3 s (0.056 -> 0.13), 4M with an 80 MiB store spills 0 bytes (was 2.6x the input); a read "
    "split into more blocks than tasks was not fused (one block per range fixes it)",
    "(issue 20) per 5M-row partition at 50M, in process: summarize's np.unique of the items 1.6-1.7 s -> "
    "0.3-0.8 s counting over the item-id span (ids.count_by_id; item lookups through a position table, "
    "ids.lookup); the partition sort np.lexsort 1.30 s -> Arrow's multi-key sort_indices 0.85 s; the map side's "
    "split by range, argsort of int16 range indices (radix) instead of int32: 6.3 s -> 4.9 s over 50M; end to "
    "end 50M 33.3 s -> 26.4 / 27.4 s (ratio 0.14)",
    "(issue 20) the exchange's pieces uncompressed instead of LZ4 (50M, a fresh process each, alternating, two runs "
    "each): 28.9 / 29.9 s vs 28.9 / 32.1 s end to end, read slower (1.6 GB of pieces instead of 1.0 GB), group "
    "faster: no difference beyond noise; LZ4 kept for 37% less disk",
    "(issue 20) where the rest goes at 50M: the read tasks' CPU is 16.5 core-s (parse and validate ~8, pyarrow's "
    "own parse CPU; writing pieces ~5; Ray Data ~3), the group tasks' ~17 (read back 1.5, sort 1.9, take 0.8, "
    "group 0.6, summarise 1.2 per 10M rows), the write tasks' ~10: about 44 core-s, 22 s on 2 cores at best, where "
    "0.3x parse-only allows 13-15 s; the target needs the parse itself cheaper, not the exchange",
    "(issue 20) the floor is now the fastest of three parse-only passes (single passes at 50M ranged 1.75-4.4 s "
    "on this shared machine, and one slow pass put 10M at a ratio of 0.35); against the fastest pass the ratio at "
    "50M is 0.061; against one pass, as before this rework, end to end went 41.2 s -> 28.8 s and the ratio "
    "0.056 -> 0.125 (the same run)",
]
RESULTS = REPO / "benchmarks" / "results"
PARSE_ONLY_PASSES = 3
"""Parse-only passes per size; the fastest is the floor the end-to-end run is compared with."""


class RssSampler:
    """Peak memory per process of this process tree (the driver and the local Ray cluster).

    Records RSS and private memory (RSS minus shared pages): Ray workers map object-store blocks
    they read zero-copy, and those shared pages count in their RSS without being theirs.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.private: dict[int, tuple[str, int]] = {}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    info = p.memory_info()
                    name = "driver" if p.pid == me.pid else (p.cmdline()[0] if p.cmdline() else p.name())
                except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                    continue
                total += info.rss
                if info.rss > self.peaks.get(p.pid, ("", 0))[1]:
                    self.peaks[p.pid] = (name, info.rss)
                if info.rss - info.shared > self.private.get(p.pid, ("", 0))[1]:
                    self.private[p.pid] = (name, info.rss - info.shared)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """Peak RSS and private memory (MiB) of the driver, the largest Ray worker, and per process kind
        (a worker is named after the task it ran at its peak)."""
        mib = 1 << 20

        def by_kind(peaks: dict[int, tuple[str, int]]) -> dict[str, int]:
            kinds: dict[str, int] = {}
            for name, value in peaks.values():
                kind = name.rsplit("/", 1)[-1][:60]
                kinds[kind] = max(kinds.get(kind, 0), round(value / mib))
            return dict(sorted(kinds.items()))

        def top(peaks: dict[int, tuple[str, int]]) -> int:
            return round(max((v for n, v in peaks.values() if n.startswith("ray::")), default=0) / mib)

        me = os.getpid()
        return {"driver_mib": round(self.peaks.get(me, ("", 0))[1] / mib),
                "driver_private_mib": round(self.private.get(me, ("", 0))[1] / mib),
                "max_ray_worker_mib": top(self.peaks), "max_ray_worker_private_mib": top(self.private),
                "sum_of_process_rss_peak_mib": round(self.peak_total / mib),
                "rss_by_kind_mib": by_kind(self.peaks), "private_by_kind_mib": by_kind(self.private)}


def parse_only(paths: list[Path]) -> tuple[float, int]:
    """Seconds to parse every part with pyarrow (all cores), and the rows read.

    Runs in a child process (``parse_only_isolated``) so its Arrow allocations do not inflate the
    driver's RSS measured afterwards.
    """
    types = {"user": pa.int64(), "item": pa.int64(), "timestamp": pa.int64()}
    start, rows = time.perf_counter(), 0
    for path in paths:
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=True, block_size=64 << 20),
                              convert_options=pcsv.ConvertOptions(column_types=types))
        rows += table.num_rows
        del table
    return time.perf_counter() - start, rows


def disk_write_mb_s(size: int = 1 << 30) -> float:
    """Sustained write rate of the disk under benchmarks/work/ (1 GiB, fsync'ed), MB/s."""
    path, block = WORK / "_disk_probe.bin", os.urandom(16 << 20)
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return round(size / seconds / 1e6)


def parse_only_isolated(paths: list[Path]) -> tuple[float, int]:
    """``parse_only`` in a fresh spawned process."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(parse_only, paths).result()


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import ray
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
            "disk_free_gib": round(shutil.disk_usage(REPO).free / (1 << 30), 1),
            "disk_write_mb_s": disk_write_mb_s(), "python": platform.python_version(),
            "ray": ray.__version__, "pyarrow": pa.__version__, "platform": platform.platform()}


def run_size(size: str, keep: bool, disk_mb_s: float) -> dict:
    cfg = load_config(IngestJobConfig, REPO / "jobs" / "configs" / "synthetic" / f"ingest-{size}.yaml",
                      [f"synthetic.output={WORK / f'raw-{size}'}", f"ingest.output_dir={WORK / f'shards-{size}'}",
                       "ingest.overwrite=true", "ingest.progress=false"])
    t = time.perf_counter()
    generate(cfg.synthetic)
    gen_s = time.perf_counter() - t
    paths = sorted((WORK / f"raw-{size}").glob("part-*.csv"))
    input_bytes = sum(p.stat().st_size for p in paths)
    load_before = round(os.getloadavg()[0], 1)  # other users of the machine slow both measurements below
    # The floor: the fastest of three passes (one pass is noisy on this shared 2-core machine: 0.75-2.2 s at 10M).
    parse_s, rows = min(parse_only_isolated(paths) for _ in range(PARSE_ONLY_PASSES))
    ingest = dataclasses.replace(cfg.ingest, input=str(WORK / f"raw-{size}"))
    with RssSampler() as rss:
        result = run_ingest(ingest)
    counts = result.manifest["counts"]
    out_bytes = sum(s["bytes"] for split in result.manifest["splits"].values() for s in split["shards"])
    if not keep:
        shutil.rmtree(WORK / f"shards-{size}", ignore_errors=True)
    return {
        "size": size, "interactions": counts["input_interactions"], "users": counts["users"],
        "items": counts["items"], "input_bytes": input_bytes, "output_bytes": out_bytes,
        "generate_s": round(gen_s, 2), "disk_floor_s": round(out_bytes / 1e6 / disk_mb_s, 2), "parse_only_s": round(parse_s, 3), "parse_only_rows": rows,
        "parse_only_per_s": round(rows / parse_s), "end_to_end_s": round(result.seconds, 2),
        "end_to_end_per_s": round(counts["input_interactions"] / result.seconds),
        "ratio_to_parse_only": round(parse_s / result.seconds, 3),
        "us_per_interaction": round(1e6 * result.seconds / counts["input_interactions"], 3),
        "stages_s": {k: round(v, 2) for k, v in result.timings.items()}, "load_before": load_before,
        "peak_rss": rss.summary(),
    }


def markdown(report: dict) -> str:
    m, rows, t = report["machine"], report["results"], report["targets"]
    lines = [
        "# Ingestion benchmark (`benchmarks/bench_ingest.py`)", "",
        f"Measured {report['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, disk "
        f"{m['disk_write_mb_s']} MB/s sustained write (Python {m['python']}, Ray {m['ray']}, "
        f"pyarrow {m['pyarrow']}); Ray cluster start "
        f"{report['ray_start_s']} s, not included below.", "",
        "| size | interactions | users | input MB | shards MB | parse-only /s | end-to-end /s | ratio | "
        "µs/interaction | read s | group s | ids s | write s | items s | shards at disk speed s | driver RSS "
        "(private) MiB | max worker RSS (private) MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["stages_s"]
        lines.append(
            f"| {r['size']} | {r['interactions']:,} | {r['users']:,} | {r['input_bytes'] / 1e6:.0f} | "
            f"{r['output_bytes'] / 1e6:.0f} | {r['parse_only_per_s']:,} | {r['end_to_end_per_s']:,} | "
            f"{r['ratio_to_parse_only']} | {r['us_per_interaction']} | {s.get('read')} | {s.get('group')} | {s.get('ids')} | "
            f"{s.get('write')} | {s.get('items')} | {r['disk_floor_s']} | {r['peak_rss']['driver_mib']} "
            f"({r['peak_rss']['driver_private_mib']}) | {r['peak_rss']['max_ray_worker_mib']} "
            f"({r['peak_rss']['max_ray_worker_private_mib']}) |")
    lines += ["", "Targets:",
              f"* end to end >= 0.3x parse-only at the largest size: {t['ratio_at_largest']} -> "
              f"{'met' if t['ratio_met'] else 'NOT met'}",
              f"* cost per interaction growth smallest -> largest <= 1.3x: {t['cost_growth']} -> "
              f"{'met' if t['growth_met'] else 'NOT met'}", ""]
    big = rows[-1]
    budget = big["parse_only_s"] / 0.3
    s = big["stages_s"]
    lines += [
        f"Where the time goes at {big['size']} (0.3x parse-only allows {budget:.1f} s end to end; "
        f"{big['end_to_end_s']} s measured):", "",
        f"* Stages: read {s.get('read')} s (parse, validate and write the exchange's pieces), group {s.get('group')} s "
        f"(sort, group and summarise each user range), ids {s.get('ids')} s, write {s.get('write')} s, items "
        f"{s.get('items')} s.",
        f"* The shards are {big['output_bytes'] / big['input_bytes']:.2f}x the csv ({big['output_bytes'] / 1e9:.2f} GB "
        f"for {big['input_bytes'] / 1e9:.2f} GB: schema 2, blocks of consecutive users as columnar arrays, "
        f"`shards/README.md`); writing them at the disk's measured sustained rate takes {big['disk_floor_s']} s.",
        "* Cost per interaction falls with size: Ray Data has a few seconds of fixed cost per stage, which "
        "dominates 1M interactions.",
        "* The machine is shared: the 1-minute load average before each size is "
        + ", ".join(f"{r['size']} {r.get('load_before', '?')}" for r in rows)
        + f" on {m['cores']} cores; parse-only and end to end are measured under the same load.", "",
    ]
    lines += ["What was tried (profiling the 10M and 50M runs): " + "; ".join(TRIED), ""]
    if report.get("notes"):
        lines += ["Notes:", ""] + [f"* {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1m", "10m", "50m"])
    parser.add_argument("--keep", action="store_true", help="keep the shards under benchmarks/work/")
    parser.add_argument("--notes", default=None, help="JSON file with a list of notes to add to the report")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    host = machine()
    t = time.perf_counter()
    with ray_session(RayConfig()):
        ray_start = time.perf_counter() - t
        results = []
        for size in args.sizes:
            results.append(run_size(size, args.keep, host["disk_write_mb_s"]))
            print(json.dumps(results[-1]), flush=True)
    first, last = results[0], results[-1]
    targets = {"ratio_at_largest": last["ratio_to_parse_only"], "ratio_met": last["ratio_to_parse_only"] >= 0.3,
               "cost_growth": round(last["us_per_interaction"] / first["us_per_interaction"], 3)}
    targets["growth_met"] = targets["cost_growth"] <= 1.3
    report = {"date": datetime.date.today().isoformat(), "machine": host, "ray_start_s": round(ray_start, 2),
              "results": results, "targets": targets,
              "notes": json.loads(Path(args.notes).read_text()) if args.notes else []}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
