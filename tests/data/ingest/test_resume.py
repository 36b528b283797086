"""Resumable ingest (``resume.py``): records, checks and the work-directory lock on their own, then whole
runs: a driver SIGKILLed mid-write and rerun, a corrupted finished shard, changed inputs or settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvrec_dist.config import IngestJobConfig, load_config
from mvrec_dist.config.ingest import IngestConfig, SyntheticConfig
from mvrec_dist.data.ingest import pipeline as pipeline_module
from mvrec_dist.data.ingest import run_ingest, run_ingest_job
from mvrec_dist.data.ingest.resume import (RECORDS_DIR, claim, recorded_bytes, release, verified_entries,
                                           work_dir_for, write_shard)
from mvrec_dist.data.synthetic import generate
from mvrec_dist.data.verify import verify_dataset
from tests.helpers.processes import kill_session

REPO = Path(__file__).resolve().parents[3]
ENTRY = {"split": "train", "index": 3, "path": "train/train-00003.tar", "samples": 5, "blocks": 2, "interactions": 9}
KILL_CONFIG = """# Many small shards, so the write stage lasts long enough to be killed in the middle.
ingest:
  output_dir: {out}
  shard_max_samples: 4
  users_per_block: 2
  items_per_block: 64
  progress: false
synthetic:
  enabled: true
  output: {raw}
  users: 2400
  items: 400
  interactions: 19200
  seed: 5
  chunk_users: 800
ray:
  num_cpus: 2
  dashboard: false
"""


def _records(output_dir: Path) -> list[Path]:
    return [p for d in output_dir.parent.glob(f"{output_dir.name}.partial-*") for p in (d / RECORDS_DIR).rglob("*.json")]


def _without_run_fields(manifest: dict) -> dict:
    """The manifest less what differs between two runs of one command: ``created_at`` only."""
    return {k: v for k, v in manifest.items() if k != "created_at"}


# --- records, checks and the lock, without Ray ---------------------------------------------------------

def test_a_written_shard_is_reused_only_while_file_record_and_counts_agree(tmp_path):
    root = str(tmp_path / "w")
    info = write_shard(root, ENTRY, b"x" * 3000, "k1")
    assert verified_entries(root, {"train": ENTRY}, "k1") == {"train": {**ENTRY, **info}}
    assert recorded_bytes(str(tmp_path / "nope"), "k1") == 0
    assert verified_entries(root, {"train": ENTRY}, "k2") == {}  # another run's key
    assert verified_entries(root, {"train": dict(ENTRY, samples=6)}, "k1") == {}  # other counts
    path = tmp_path / "w" / ENTRY["path"]
    data = bytearray(path.read_bytes())
    data[1234] ^= 1
    path.write_bytes(bytes(data))
    assert verified_entries(root, {"train": ENTRY}, "k1") == {}  # one flipped bit
    path.write_bytes(b"x" * 2000)
    assert verified_entries(root, {"train": ENTRY}, "k1") == {}  # partial
    path.unlink()
    assert verified_entries(root, {"train": ENTRY}, "k1") == {}  # gone
    assert not list(path.parent.glob("*.tmp-*"))  # written under a temporary name, renamed into place


def test_claim_locks_the_work_dir_and_clears_what_a_rerun_rewrites(tmp_path):
    out = str(tmp_path / "ds")
    work = claim(out, "a" * 64)
    assert work.path == work_dir_for(out, "a" * 64) and not work.resumed
    write_shard(work.path, ENTRY, b"y" * 100, work.key)
    assert claim(out, "a" * 64) is None  # held by a live run
    release(work)
    for scratch in ("_quarantine_parts/0000000-0000000000000.tsv", "items/items-00000.tar", "maps/users.npy",
                    "train/train-00004.tar.tmp-0123456789ab", "manifest.json"):
        (Path(work.path) / scratch).parent.mkdir(parents=True, exist_ok=True)
        (Path(work.path) / scratch).write_bytes(b"half")
    again = claim(out, "a" * 64)
    left = sorted(str(p.relative_to(again.path)) for p in Path(again.path).rglob("*") if p.is_file())
    assert again.resumed and left == [".lock", f"{RECORDS_DIR}/train/train-00003.tar.json", "train/train-00003.tar"]
    assert recorded_bytes(out, again.key) == 100
    release(again)


# --- whole runs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    """Two csv parts of 300 users each; shards of 20 users make about 30 shards a split."""
    cfg = SyntheticConfig(output=str(tmp_path_factory.mktemp("raw")), users=600, items=200, interactions=6000,
                          seed=7, chunk_users=300)
    return Path(generate(cfg, use_ray=False))


SETTINGS = {"shard_max_samples": 20, "users_per_block": 8, "items_per_block": 50, "progress": False}


def _ingest(src, out, **kw):
    return run_ingest(IngestConfig(input=str(src), output_dir=str(out), **{**SETTINGS, **kw}))


def _interrupt_after_the_user_shards(monkeypatch, src, out, **kw) -> Path:
    """Run until every user-split shard is written, then raise KeyboardInterrupt (as Ctrl-C would); return
    the work directory the run left."""
    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption after the user shards were written")

    before = set(out.parent.glob(f"{out.name}.partial-*"))
    with monkeypatch.context() as m:
        m.setattr(pipeline_module, "write_item_shards", boom)
        with pytest.raises(KeyboardInterrupt):
            _ingest(src, out, **kw)
    assert not out.exists()
    (work,) = set(out.parent.glob(f"{out.name}.partial-*")) - before
    return work


def test_a_corrupted_or_partial_finished_shard_is_rewritten(ray_local, small_input, monkeypatch, tmp_path, capsys):
    out = tmp_path / "ds"
    first = _ingest(small_input, out)
    total = first.resume["written"]
    assert first.resume["resumed"] is False and first.resume["reused"] == 0 and total >= 60
    expected = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)
    work = _interrupt_after_the_user_shards(monkeypatch, small_input, out)
    assert len(_records(out)) == total  # every user-split shard recorded
    flipped = work / "train" / "train-00007.tar"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    cut = work / "valid" / "valid-00011.tar"
    cut.write_bytes(cut.read_bytes()[:700])
    (work / "test" / "test-00002.tar").unlink()
    capsys.readouterr()
    result = _ingest(small_input, out)
    assert (result.resume["resumed"], result.resume["reused"], result.resume["written"]) == (True, total - 3, 3)
    assert f"reused {total - 3} of {total} user-split shard files" in capsys.readouterr().out
    assert _without_run_fields(json.loads((out / "manifest.json").read_text())) == _without_run_fields(expected)
    assert verify_dataset(str(out)) == []
    assert not work.exists() and not (out / RECORDS_DIR).exists() and not (out / ".lock").exists()


def test_other_settings_or_a_rewritten_input_reuse_nothing(ray_local, small_input, monkeypatch, tmp_path):
    copy = tmp_path / "input"
    shutil.copytree(small_input, copy)
    out = tmp_path / "ds"
    stale = _interrupt_after_the_user_shards(monkeypatch, copy, out)
    # Other block sizes write other bytes: another fingerprint, another work directory.
    other = _ingest(copy, out, users_per_block=4)
    assert (other.resume["resumed"], other.resume["reused"]) == (False, 0) and stale.exists()
    # The first settings again over inputs rewritten in place (same paths and sizes, new modification times).
    for part in copy.glob("*.csv"):
        part.write_bytes(part.read_bytes())
        st = part.stat()
        os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = _ingest(copy, out, overwrite=True)
    assert (again.resume["resumed"], again.resume["reused"]) == (False, 0)
    assert stale.exists()  # a stale work directory is left alone, never read
    assert verify_dataset(str(out)) == []


def test_a_killed_ingest_rerun_reuses_finished_shards_and_ends_identical(ray_local, tmp_path, capsys):
    config = tmp_path / "ingest.yaml"
    out = tmp_path / "ds"
    config.write_text(KILL_CONFIG.format(out=out, raw=tmp_path / "raw"))
    cfg = load_config(IngestJobConfig, config, [])
    reference = run_ingest_job(cfg)
    total = reference.resume["written"]
    expected = json.loads((out / "manifest.json").read_text())
    shutil.rmtree(out)

    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "ingest_microlens.py"), "--config", str(config)],
                                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(_records(out)) < total // 10:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the killed job never reached its write stage"
            time.sleep(0.01)
    finally:
        kill_session(proc.pid)
        proc.wait(timeout=60)
    time.sleep(1.0)  # nothing of the killed session writes any more
    at_kill = len(_records(out))
    assert 0 < at_kill < total and not out.exists()

    capsys.readouterr()
    result = run_ingest_job(cfg)
    assert result.resume["resumed"] and result.resume["reused"] > 0
    assert result.resume["reused"] + result.resume["written"] == total
    log = capsys.readouterr().out
    assert f"reused {result.resume['reused']} of {total} user-split shard files" in log
    assert _without_run_fields(json.loads((out / "manifest.json").read_text())) == _without_run_fields(expected)
    assert verify_dataset(str(out)) == []
    print(f"killed with {at_kill} of {total} shard files recorded; the rerun reused {result.resume['reused']}",
          file=sys.stderr)
