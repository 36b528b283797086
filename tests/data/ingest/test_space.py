"""The free-space check before an ingest (``space.py``): the estimate's parts, and the job refused on a
small tmpfs while a run that fits there is not."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mvrec_dist.config import IngestJobConfig, load_config
from mvrec_dist.config.ingest import SyntheticConfig
from mvrec_dist.data.ingest import IngestError, run_ingest_job
from mvrec_dist.data.ingest.space import (ASSUMED_ITEMS, EXCHANGE_BYTES_PER_INPUT_BYTE, EXCHANGE_IN_FLIGHT_BYTES,
                                          FIXED_BYTES, ITEM_BYTES, SHARD_BYTES_PER_INPUT_BYTE, check_free_space,
                                          estimate_needs, synthetic_csv_bytes)
from mvrec_dist.data.synthetic import generate
from mvrec_dist.data.verify import verify_dataset


def _config(tmp_path: Path, out: Path, **synthetic) -> IngestJobConfig:
    syn = {"users": 2000, "items": 200, "interactions": 100000, "chunk_users": 1000, "seed": 3, **synthetic}
    return load_config(IngestJobConfig, None, [f"ingest.output_dir={out}", "ingest.progress=false",
                                               "synthetic.enabled=true", f"synthetic.output={tmp_path / 'raw'}",
                                               *(f"synthetic.{k}={v}" for k, v in syn.items())])


@pytest.mark.parametrize("extra", [{}, {"plays": True}, {"structure": 0.5, "exposures": 1.0}])
def test_the_synthetic_csv_estimate_is_a_close_upper_bound(tmp_path, extra):
    cfg = SyntheticConfig(output=str(tmp_path), users=900, items=300, interactions=9000, chunk_users=400, **extra)
    written = sum(p.stat().st_size for p in Path(generate(cfg, use_ray=False)).glob("*.csv"))
    assert 0.85 * synthetic_csv_bytes(cfg) <= written <= synthetic_csv_bytes(cfg)


def test_the_estimate_is_input_times_the_measured_ratio_plus_items_and_the_exchange(tmp_path, monkeypatch):
    cfg = load_config(IngestJobConfig, None, ["ingest.input=/d/a.csv", f"ingest.output_dir={tmp_path / 'ds'}"])
    dataset, exchange = estimate_needs(cfg, input_bytes=10**9, input_what="1 GB", fmt="pairs_csv", items=None)
    assert dataset.needed == int(10**9 * SHARD_BYTES_PER_INPUT_BYTE["pairs_csv"]) + ASSUMED_ITEMS * ITEM_BYTES \
        + FIXED_BYTES and dataset.key == "ingest.output_dir"
    # csv pieces are smaller than the shards they become: only the partitions in flight add to the peak.
    assert EXCHANGE_BYTES_PER_INPUT_BYTE["pairs_csv"] < SHARD_BYTES_PER_INPUT_BYTE["pairs_csv"]
    assert exchange.path == dataset.path and exchange.needed == EXCHANGE_IN_FLIGHT_BYTES
    # A small input: every partition is in flight at once. A resumed run needs only what is not written yet.
    (resumed, exchange) = estimate_needs(cfg, input_bytes=10**6, input_what="1 MB", fmt="pairs_tsv", items=10,
                                         done_bytes=10**6)
    assert resumed.needed == int(10**6 * SHARD_BYTES_PER_INPUT_BYTE["pairs_tsv"]) + 10 * ITEM_BYTES + FIXED_BYTES \
        - 10**6
    assert exchange.needed == int(10**6 * EXCHANGE_BYTES_PER_INPUT_BYTE["pairs_tsv"])
    assert "interrupted run" in resumed.what[-1] and "beyond the shards'" in exchange.what[0]
    # Pieces larger than the shards would add their excess.
    monkeypatch.setitem(EXCHANGE_BYTES_PER_INPUT_BYTE, "pairs_csv", 2.0)
    (_, big) = estimate_needs(cfg, input_bytes=10**10, input_what="10 GB", fmt="pairs_csv", items=None)
    assert big.path == str(tmp_path / "ds") and big.needed == int(10**10 * 2.0) - int(10**10 * SHARD_BYTES_PER_INPUT_BYTE["pairs_csv"]) \
        + EXCHANGE_IN_FLIGHT_BYTES


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, size)``: a tmpfs of ``size`` at ``tmp_path/name`` (skips unless root can mount one);
    unmounted at teardown."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not available here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_an_ingest_that_does_not_fit_is_refused_before_anything_is_written(ray_local, tmp_path, tmpfs):
    small = tmpfs("small", "2m")
    cfg = _config(tmp_path, small / "ds")
    needed = synthetic_csv_bytes(cfg.synthetic) * SHARD_BYTES_PER_INPUT_BYTE["pairs_csv"]
    assert needed > 2 << 20  # the input's shards alone do not fit, whatever the constant terms
    with pytest.raises(IngestError) as err:
        run_ingest_job(cfg)
    message = str(err.value)
    assert message.startswith(f"{small}: ") and "free, but this ingest needs about" in message
    assert "x 1.44 (pairs_csv shard bytes per input byte, measured)" in message and "(synthetic csv to generate, upper bound)" in message
    assert "point ingest.output_dir at a filesystem with room" in message
    assert "set ingest.check_free_space=false to skip this check" in message and "\n" not in message
    assert list(small.iterdir()) == [] and not (tmp_path / "raw").exists()  # nothing generated, nothing written
    off = load_config(IngestJobConfig, None, [f"ingest.output_dir={small / 'ds'}", "ingest.check_free_space=false",
                                              "synthetic.enabled=true", f"synthetic.output={tmp_path / 'raw'}"])
    assert check_free_space(off) == []


def test_an_ingest_that_fits_is_not_refused(ray_local, tmp_path, tmpfs):
    roomy = tmpfs("roomy", "16m")
    cfg = _config(tmp_path, roomy / "ds", users=300, interactions=3000)
    result = run_ingest_job(cfg)
    assert result.manifest["counts"]["users"] == 300 and verify_dataset(str(roomy / "ds")) == []
    used = sum(p.stat().st_size for p in (roomy / "ds").rglob("*") if p.is_file())
    (dataset, *_) = check_free_space(cfg)  # now sized from the generated csv
    assert used <= dataset.needed < 16 << 20
    assert json.loads((roomy / "ds" / "manifest.json").read_text())["config"]["ingest"]["check_free_space"] is True
