"""MTIN at full scale in the plan part (benchmarks/fullscale/mtin.py), in quick mode: the task's real tables,
TorchRec's planner on a simulated 1x8 H100 node, and the projected step (CPU only, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mtin():
    from benchmarks.bench_plan import load_assumptions
    from benchmarks.fullscale.mtin import mtin_full_scale
    from benchmarks.fullscale.workload import draw_windows

    a, _ = load_assumptions()
    d = a["dataset"]
    drawn = draw_windows(users=d["users"], items=d["items"], interactions=d["interactions"], chunk_users=2000,
                         parts=1, max_seq_len=10)
    res = {"data": {}, "measurements": [], "notes": []}
    mtin_full_scale(res, a, repo=REPO, quick=True, drawn=drawn, read_us_per_example=5.0, log=lambda _: None)
    return a, res


def test_tables_are_the_tasks_at_full_scale(mtin):
    a, res = mtin
    m, users, items = res["data"]["mtin"], a["dataset"]["users"], a["dataset"]["items"]
    tables = m["plans"][0]["tables"]
    mem, item = tables["mtin_memory"], tables["item"]
    assert mem["rows"] == (users + 1) * 2 * 6 and mem["dim"] == 128 and mem["state"]
    assert item["rows"] == items + 1 and item["dim"] == 128
    for t in (mem, item):
        assert t["table_gib"] == pytest.approx(t["rows"] * t["dim"] * 4 / 2**30, abs=1e-9)
    # The memory is written through plain SGD (no state, and the planner is told so); the item table's row-wise
    # Adagrad keeps a float per row, which the planner does not count (the sharders' default optimizer).
    assert (mem["optimizer"], mem["optimizer_state_gib"], mem["planner_optimizer"]) == ("sgd", 0.0, "SGD")
    assert item["optimizer"] == "rowwise_adagrad" and item["planner_optimizer"] is None
    assert item["optimizer_state_gib"] == pytest.approx(item["rows"] * 4 / 2**30)
    size = next(x for x in res["measurements"] if x["name"] == "MTIN: memory table size (fp32)")
    assert size["value"] == pytest.approx(mem["rows"] * 128 * 4 / 2**30, abs=1e-9)


def test_plan_places_every_table_within_hbm(mtin):
    _, res = mtin
    p = res["data"]["mtin"]["plans"][0]
    assert p["world_size"] == 8 and set(p["tables"]) == {"item", "mtin_memory"}
    per_rank = p["per_rank"].values()
    assert sum(r["hbm_bytes"] + r["ddr_bytes"] for r in per_rank) >= sum(
        t["rows"] * t["dim"] * 4 for t in p["tables"].values())
    for t in p["tables"].values():
        assert t["planner_hbm_gib"] + t["planner_ddr_gib"] >= t["table_gib"]
        assert t["max_rank_hbm_gib"] * p["world_size"] >= t["planner_hbm_gib"] - 1e-9
    assert p["max_hbm_gib"] == pytest.approx(max(r["hbm_bytes"] for r in per_rank) / 2**30)
    # 197 GiB over 8 ranks of 63 GiB usable: the planner keeps it in HBM (no UVM kernels).
    assert p["fits_in_hbm"] and p["max_hbm_gib"] <= p["hbm_usable_gib"] and not p["spill_kernels"]
    assert p["max_rank_ms"] > 0


def test_projected_step_counts_the_memory_rows(mtin):
    from benchmarks.fullscale.calibrate import embedding_bytes

    _, res = mtin
    m = res["data"]["mtin"]
    w, batch = m["workload"], m["batch_per_rank"]
    assert w["memory_rows"] == batch * 12 and 0 < w["distinct_users"] <= batch
    assert w["unique_items"] <= batch * (10 + 10 + 5) + 1
    f = m["flops"]
    assert f["forward"] > 0 and f["backward"] > 0 and f["trainable_params"] < f["dense_params"]
    x = m["projection"]["8"]
    assert x["traffic"]["mtin_memory"]["hbm_bytes"] == 3 * batch * 12 * 128 * 4  # read, then the update's read + write
    step = x["step"]
    assert step["embedding_memory"] > 0 and step["total"] >= max(step["data"], step["overhead"])
    assert step["bound"] in {k for k in step if k not in ("total", "bound")}
    assert x["traffic"]["mtin_memory"]["hbm_bytes"] + x["traffic"]["item"]["hbm_bytes"] == pytest.approx(
        embedding_bytes(w["memory_rows"] + w["unique_items"], 128))


def test_state_rows_cost_what_item_rows_cost():
    from benchmarks.bench_plan import load_assumptions
    from benchmarks.fullscale.projection import project_step

    a, _ = load_assumptions()
    kw = dict(a=a, world=32, dim=128, batch=2048, imbalance=1.1, dense_flops_per_seq=4e7, dense_params=600_000,
              content_flops_per_item=0.0, loader_us_per_sequence=5.0, bf16=True)
    split = project_step(unique_ids=40_000, state_rows=24_576, **kw)
    assert split == project_step(unique_ids=64_576, **kw)
    assert split["embedding_memory"] > project_step(unique_ids=40_000, **kw)["embedding_memory"]
