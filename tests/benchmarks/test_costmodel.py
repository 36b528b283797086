"""The full-scale cost model (benchmarks/fullscale/costmodel.py) on hand-checked cases, the workload
simulation against its closed form, and the TorchRec planner on a simulated cluster (CPU only)."""

from __future__ import annotations

import math

import pytest

from benchmarks.fullscale import costmodel as cm


def test_a2a_bytes_row_wise():
    b = cm.a2a_bytes(unique_ids=1000, dim=128, out_bytes=2, world=4)
    assert b["index"] == pytest.approx(1000 * 8 * 3 / 4)
    assert b["forward"] == b["backward"] == pytest.approx(1000 * 128 * 2 * 3 / 4)
    assert b["total"] == pytest.approx(b["index"] + 2 * b["forward"])
    assert cm.a2a_bytes(unique_ids=1000, dim=128, out_bytes=4, world=1)["total"] == 0


def test_a2a_seconds_splits_nvlink_and_nic():
    # 15 peers, 7 on the node: 7/15 of the bytes over NVLink, 8/15 over the NIC, concurrently.
    t = cm.a2a_seconds(15e9, world=16, gpus_per_node=8, intra_gb_s=100, inter_gb_s=10, efficiency=1.0)
    assert t == pytest.approx(max(7e9 / 100e9, 8e9 / 10e9))
    assert cm.a2a_seconds(7e9, world=8, gpus_per_node=8, intra_gb_s=100, inter_gb_s=10, efficiency=0.5) == pytest.approx(
        7e9 / 50e9)
    assert cm.a2a_seconds(1e9, world=1, gpus_per_node=8, intra_gb_s=1, inter_gb_s=1, efficiency=1) == 0


def _step(data_s: float, overlap: bool) -> dict:
    return cm.step_seconds(data_s=data_s, overlap_data=overlap, overhead_s=0.001, dense_flops=2e12, content_flops=0,
                           flops_per_s=1e15, embedding_bytes=1e9, mem_bytes_per_s=1e12, a2a_s=0.004, latency_s=1e-5,
                           collectives=10, sync_bytes=0, sync_bytes_per_s=1)


def test_step_overlaps_data_when_the_loader_runs_ahead():
    compute = 0.001 + 0.002 + 0.001 + 0.004 + 0.0001
    assert _step(0.002, True)["total"] == pytest.approx(compute)
    assert _step(0.002, True)["bound"] == "all_to_all"
    assert _step(0.5, True)["total"] == 0.5 and _step(0.5, True)["bound"] == "data"
    assert _step(0.002, False)["total"] == pytest.approx(compute + 0.002)


def test_epoch_and_eval():
    e = cm.epoch_seconds(windows=1000, batch_per_rank=10, world=3, step_s=2.0, eval_s=5.0)
    assert e["steps"] == math.ceil(1000 / 30) and e["total_s"] == pytest.approx(34 * 2.0 + 5.0)
    t = cm.eval_seconds(users=10, items=99, dim=4, world=2, flops_per_s=8000, mem_bytes_per_s=12000, score_passes=3)
    assert t == pytest.approx((2 * 10 * 100 * 4 / 8000 + 4 * 10 * 100 * 3 / 12000) / 2)


def test_ingest_stages_add_up_each_bounded_by_its_slowest_resource():
    kw = dict(stage_core_seconds={"read": 1000.0, "group": 400.0, "write": 200.0},
              stage_bytes={"read": 50e9, "group": 30e9, "write": 40e9}, serial_s=12.0, cores_per_node=100,
              parallel_efficiency=0.5, network_gb_s=10, storage_gb_s=1, fixed_s=30)
    one = cm.ingest_seconds(nodes=1, **kw)
    assert one["stages"]["read"]["cpu"] == pytest.approx(10.0) and one["stages"]["read"]["network"] == 0
    assert one["stages"]["read"]["io"] == pytest.approx(50.0) and one["stages"]["read"]["bound"] == "io"
    assert one["total"] == pytest.approx(30 + 12 + 50 + 30 + 40) and one["bound"] == "read: io"
    four = cm.ingest_seconds(nodes=4, **kw)
    assert four["stages"]["read"]["cpu"] == pytest.approx(1000 / (4 * 100 * 0.5))
    assert four["stages"]["group"]["network"] == pytest.approx(30e9 * 3 / 4 / (4 * 10e9))
    assert four["total"] == pytest.approx(30 + 12 + sum(st["total"] for st in four["stages"].values()))
    assert four["serial"] == one["serial"]  # the driver's work does not spread


def test_workload_windows_match_the_closed_form():
    from benchmarks.fullscale.workload import epoch_size, step_workload

    totals = dict(users=34_492_051, items=1_142_528, interactions=1_006_528_709)
    e = epoch_size(max_seq_len=10, **totals)
    assert e["sum_check"] and e["targets"] == pytest.approx(totals["interactions"] - 3 * totals["users"], rel=1e-3)
    w, sample = step_workload(chunk_users=3000, parts=1, batch=256, max_seq_len=10, negatives=512, sampler="popularity",
                              world_sizes=[8], max_steps=3, sample_batch=16, **totals)
    assert w["windows_per_user"] == pytest.approx(e["windows_per_user"], rel=0.1)
    assert w["unique_batch_ids"] < w["unique_ids"] <= w["unique_batch_ids"] + 512 + 1
    assert w["shard_load_max_over_mean"]["8"] >= 1.0
    assert sample.items.shape[0] == 16 and sample.negatives.numel() == 512


def test_planner_runs_on_cpu_for_a_simulated_h100_node():
    from benchmarks.bench_plan import load_assumptions
    from benchmarks.fullscale.planner import plan_item_table

    a, _ = load_assumptions()
    p = plan_item_table(rows=1_142_529, dim=128, nodes=1, gpus_per_node=8, batch_per_rank=2048, ids_per_sequence=13.0,
                        gpu=a["gpu"], node=a["node"], reserve_fraction=0.15,
                        sharding_types=["table_wise", "row_wise", "column_wise", "table_row_wise"], bf16_output=True,
                        learning_rate=0.05)
    assert p["world_size"] == 8 and p["sharding_type"] in ("table_wise", "row_wise", "column_wise", "table_row_wise")
    assert sum(s["sizes"][0] for s in p["shards"] if s["offsets"][1] == 0) == 1_142_529  # every row placed once
    total_hbm = sum(r["hbm_bytes"] for r in p["per_rank"].values())
    assert total_hbm >= 1_142_529 * 128 * 4  # the fp32 table at least
    assert p["max_rank_ms"] > 0
