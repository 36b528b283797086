"""The ``sparse_dist`` train step (TorchRec's ``TrainPipelineSparseDist``) against the ``simple`` one.

Two gloo ranks train the same batches through ``ParallelModel.train_steps`` with each pipeline; the
step statistics, the whole embedding table and the dense parameters must agree. Tolerance 1e-6
absolute (measured: bitwise equal). The pipeline runs the same operations in the same order; only
step i+1's input all-to-all is issued before step i's forward, and ids are not values. Six steps of
AdamW and Adagrad move the parameters by more than 1e-3, so a skipped, repeated or mis-scaled step
shows far above the tolerance.

Each case lets one rank run out of batches before the other (it trains on dummy batches until the
other is done), and the pipeline must run every batch exactly once although it holds up to three
in flight (``execute_all_batches``: the last two run after the iterator ended).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.helpers.dist import run_ranks

N_ITEMS, DIM, BATCH, L = 60, 16, 4, 10
BASE = [f"model.embedding_dim={DIM}", "model.user_encoder.attention_dropout=0.0", f"train.batch_size={BATCH}",
        "train.lr=0.01", "parallel.embedding_lr=0.1", "train.grad_clip=0.5", f"data.max_seq_len={L}"]
# (name, overrides, batches of rank 0 and rank 1): ZeRO 1, 2 and 3, the three losses, each sharding type.
CASES = [
    ("table_wise-zero1-full-rank1-short", ["parallel.sharding_type=table_wise", "parallel.zero_stage=1",
                                           "model.user_encoder.dropout=0.1"], (6, 4)),
    ("row_wise-zero2-sampled-rank0-short", ["parallel.sharding_type=row_wise", "parallel.zero_stage=2",
                                            "model.loss.name=sampled_softmax", "model.loss.num_negatives=8"], (3, 6)),
    ("column_wise-sgd-zero3-inbatch-even", ["parallel.sharding_type=column_wise", "parallel.zero_stage=3",
                                            "parallel.embedding_optimizer=sgd", "model.loss.name=inbatch_softmax"],
     (5, 5)),
]
EARLY_STOP = 3  # steps taken before the loop stops (max_steps) with batches still in flight
TOL = 1e-6


def _config(world_size: int, overrides: list[str], pipeline: str):
    from mvrec_dist.config import TrainJobConfig, load_config

    return load_config(TrainJobConfig, None, BASE + overrides + [f"parallel.num_workers={world_size}",
                                                                 f"parallel.pipeline={pipeline}"])


def _rank_batches(cfg, rank: int, count: int) -> tuple[list, object]:
    """This rank's ``count`` batches (ragged windows; cursor = (rank, index)) and its dummy-batch maker."""
    from mvrec_dist.data.batch import collate_train, dummy_batch
    from mvrec_dist.models.builders import collate_options

    opts = collate_options(cfg.model, np.arange(N_ITEMS + 1, dtype=np.int64))
    rng = np.random.default_rng(7 + rank)
    out = []
    for step in range(count):
        wins = [rng.integers(1, N_ITEMS + 1, size=int(rng.integers(2, L + 2))) for _ in range(BATCH // 2)]
        batch = collate_train(wins, list(range(len(wins))), max_seq_len=L, num_items=N_ITEMS,
                              generator=torch.Generator().manual_seed(100 * rank + step), **opts)
        batch.cursor = (rank, step)
        out.append(batch)
    return out, lambda: dummy_batch(L, num_items=N_ITEMS, all_items=opts["all_items"])


def _train(ctx, overrides: list[str], counts: tuple[int, ...], pipeline: str, stop_after: int | None) -> dict:
    """Train this rank's batches with ``pipeline``; what was run, what was fetched, and the final weights."""
    from deepspeed.utils import safe_get_full_fp32_param

    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.parallel.facade import ParallelModel

    cfg = _config(ctx.world_size, overrides, pipeline)
    torch.manual_seed(cfg.train.seed)
    model = build_recommender(cfg.model, num_items=N_ITEMS, item_train_counts=np.arange(N_ITEMS + 1), max_seq_len=L,
                              seed=cfg.train.seed, device="meta")
    pm = ParallelModel(model, cfg, ctx, total_steps=max(counts))
    batches, dummy = _rank_batches(cfg, ctx.rank, counts[ctx.rank])
    torch.manual_seed(1234 + ctx.rank)  # the same dropout masks under both pipelines
    fetched = []

    def source():
        for b in batches:
            fetched.append(b.cursor)
            yield b

    table = pm.sparse.module._dmp_wrapped_module.sequence  # the sharded item collection
    steps, fetched_at_first, forward_in_step = [], None, None
    from mvrec_dist.tasks import build_task

    run = pm.train_steps(source(), dummy, build_task(cfg).count)
    for batch, stats in itertools.islice(run, stop_after):
        if fetched_at_first is None:
            fetched_at_first, forward_in_step = len(fetched), type(table.forward).__name__
        steps.append((None if batch is None else list(batch.cursor), stats.loss, stats.num_targets, stats.sequences))
    run.close()
    with torch.no_grad():  # the whole table on every rank, through the sharded lookup (collective)
        rows = pm.lookup(torch.arange(N_ITEMS + 1, device=ctx.device)).float().cpu()
    dense = {}
    for name, p in pm.engine.module.dense.named_parameters():
        full = safe_get_full_fp32_param(p)
        dense[name] = (full if full is not None else p).detach().float().cpu().clone()
    return {"pipeline": pm.pipeline, "steps": steps, "fetched": [list(c) for c in fetched],
            "fetched_at_first": fetched_at_first, "forward_in_step": forward_in_step,
            "forward_after": type(table.forward).__name__, "table": rows, "dense": dense}


def _both(ctx, cases) -> dict:
    """Every case with ``simple`` and ``sparse_dist`` run to the end; the first one also stopped early."""
    pipelines = ("simple", "sparse_dist")
    full = [{p: _train(ctx, overrides, counts, p, None) for p in pipelines} for _, overrides, counts in cases]
    _, overrides, counts = cases[0]
    return {"full": full, "early": {p: _train(ctx, overrides, counts, p, EARLY_STOP) for p in pipelines}}


def _assert_same(simple: dict, piped: dict, tol: float) -> None:
    assert simple["pipeline"] == "simple" and piped["pipeline"] == "sparse_dist"
    assert [s[0] for s in piped["steps"]] == [s[0] for s in simple["steps"]]  # cursors, dummy steps
    assert [s[2:] for s in piped["steps"]] == [s[2:] for s in simple["steps"]]  # targets, sequences
    np.testing.assert_allclose([s[1] for s in piped["steps"]], [s[1] for s in simple["steps"]], rtol=0, atol=tol)
    torch.testing.assert_close(piped["table"], simple["table"], rtol=0, atol=tol)
    assert set(piped["dense"]) == set(simple["dense"])
    for name in simple["dense"]:
        torch.testing.assert_close(piped["dense"][name], simple["dense"][name], rtol=0, atol=tol, msg=name)


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_ranks(_both, 2, CASES)


@pytest.mark.integration
@pytest.mark.parametrize("index", range(len(CASES)), ids=[name for name, _, _ in CASES])
def test_sparse_dist_matches_simple_with_uneven_ranks(two_ranks, index):
    counts = CASES[index][2]
    for rank, results in enumerate(two_ranks):
        full = results["full"][index]
        simple, piped = full["simple"], full["sparse_dist"]
        _assert_same(simple, piped, TOL)
        # Steps run while any rank has data: the shorter rank's last steps are dummies.
        cursors = [s[0] for s in piped["steps"]]
        assert cursors == [[rank, i] for i in range(counts[rank])] + [None] * (max(counts) - counts[rank])
        # Every batch fetched exactly once, in order, and each one run.
        assert piped["fetched"] == [[rank, i] for i in range(counts[rank])]
        # Pipelined for real: three steps were in flight when the first one finished, the table's forward
        # was TorchRec's PipelinedForward during the steps and its own forward again afterwards.
        assert piped["fetched_at_first"] == min(3, counts[rank]) and simple["fetched_at_first"] == 1
        assert piped["forward_in_step"] == "PipelinedForward"
        assert piped["forward_after"] == simple["forward_after"] != "PipelinedForward"
        start = _start_table(CASES[index][1])
        assert (simple["table"] - start).abs().max() > 1e-3  # the steps did train


@pytest.mark.integration
def test_stopping_early_leaves_in_flight_batches_unrun(two_ranks):
    for rank, results in enumerate(two_ranks):
        simple, piped = results["early"]["simple"], results["early"]["sparse_dist"]
        # The same EARLY_STOP steps were run; the batches the pipeline had fetched beyond them were not
        # (their cursors were never yielded), and the lookups after closing use the table's own forward.
        _assert_same(simple, piped, TOL)
        assert len(piped["steps"]) == EARLY_STOP
        count = CASES[0][2][rank]
        assert simple["fetched"] == [[rank, i] for i in range(min(EARLY_STOP, count))]
        assert piped["fetched"] == [[rank, i] for i in range(min(EARLY_STOP + 2, count))]
        assert piped["forward_after"] != "PipelinedForward"


def _start_table(overrides: list[str]) -> torch.Tensor:
    from mvrec_dist.models.embedding_init import init_table_block

    cfg = _config(1, overrides, "simple")
    return init_table_block(row_start=0, row_end=N_ITEMS + 1, col_start=0, col_end=DIM, dim=DIM,
                            std=cfg.model.init_std, seed=cfg.train.seed)


def test_pipeline_choice():
    from mvrec_dist.config.parallel import ParallelConfig
    from mvrec_dist.parallel.facade import train_pipeline
    from mvrec_dist.parallel.planning import sharding_problems

    auto = ParallelConfig()
    assert train_pipeline(auto, is_cuda=False, has_id_table=True) == "simple"
    assert train_pipeline(auto, is_cuda=True, has_id_table=True) == "sparse_dist"
    assert train_pipeline(auto, is_cuda=True, has_id_table=False) == "simple"
    piped = ParallelConfig(pipeline="sparse_dist")
    assert train_pipeline(piped, is_cuda=False, has_id_table=True) == "sparse_dist"
    assert sharding_problems(piped) == []  # runs on CPU (no streams) as well as on CUDA
    with pytest.raises(ValueError, match="parallel.pipeline"):
        train_pipeline(piped, is_cuda=True, has_id_table=False)


@pytest.mark.gpu
def test_sparse_dist_matches_simple_on_one_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (nccl, TorchRec's CUDA streams)")
    fbgemm_gpu = pytest.importorskip("fbgemm_gpu")
    if getattr(fbgemm_gpu, "__variant__", "cpu") == "cpu":
        pytest.skip("fbgemm-gpu is the CPU build; the sharded table on CUDA needs the CUDA build")
    import os

    from tests.helpers.dist import free_port

    from mvrec_dist.parallel.process_groups import destroy_distributed, init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    ctx = init_distributed(use_gpu=True, rank=0, world_size=1, local_rank=0)
    try:
        for _, overrides, counts in CASES[:2]:
            overrides = [o for o in overrides if not o.startswith("parallel.sharding_type")] + ["parallel.use_gpu=true"]
            both = {p: _train(ctx, overrides, counts[:1], p, None) for p in ("simple", "sparse_dist")}
            # fbgemm's CUDA backward accumulates rows with atomics: summation order may differ.
            _assert_same(both["simple"], both["sparse_dist"], 1e-5)
            assert both["sparse_dist"]["forward_in_step"] == "PipelinedForward"
    finally:
        destroy_distributed()
