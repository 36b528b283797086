"""The CUDA paths of the dense side, on one GPU: nccl, DeepSpeed ZeRO-2 in bf16 and with bf16 autocast,
torch's fused AdamW, a video item tower (R3D) on the GPU, and an exact checkpoint round trip on CUDA.

Content-only item tower (VideoRec's V mode), so the ID table, and with it TorchRec, is not needed:
the GPU machines this runs on may carry only torch and DeepSpeed (fbgemm-gpu does not travel
there). A TorchRec-free environment gets placeholders for the TorchRec names the model builder
imports; nothing here calls them. Skipped without CUDA.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (nccl, bf16, fused AdamW)", allow_module_level=True)

N_ITEMS, BATCH, STEPS = 40, 16, 5
STATE = '{"step": 2, "epoch": 0}'
TINY_R3D = ["model.content_encoder.name=r3d18", "model.content_encoder.widths=[8,8,16,16]",
            "model.content_encoder.layers=[1,1,1,1]", "model.content_encoder.stem_width=8",
            "model.content_encoder.frames=2", "model.content_encoder.size=32",
            "model.content_encoder.finetune=full"]
BASE = ["model.item_tower=content", "model.embedding_dim=32", "model.user_encoder.dropout=0.0",
        "model.user_encoder.attention_dropout=0.0", "model.loss.name=inbatch_softmax",
        f"train.batch_size={BATCH}", "train.lr=0.003", "parallel.use_gpu=true", "parallel.num_workers=1",
        "parallel.zero_stage=2", *TINY_R3D]


@pytest.fixture(scope="module")
def ctx():
    try:
        import torchrec  # noqa: F401
    except ImportError:
        from benchmarks.quality_sweep import _placeholder_torchrec

        _placeholder_torchrec()
    from mvrec_dist.parallel.process_groups import destroy_distributed, init_distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"})  # DeepSpeed reads LOCAL_RANK
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    context = init_distributed(use_gpu=True, rank=0, world_size=1, local_rank=0)
    yield context
    destroy_distributed()


def _batches(cfg):
    from mvrec_dist.data.batch import collate_train
    from mvrec_dist.models.builders import collate_options

    rng = np.random.default_rng(0)
    counts = np.arange(N_ITEMS + 1, dtype=np.int64)
    opts = collate_options(cfg.model, counts)
    frames = rng.integers(0, 256, size=(N_ITEMS + 1, 2, 32, 32, 3), dtype=np.uint8)
    out = []
    for step in range(STEPS):
        wins = [rng.integers(1, N_ITEMS + 1, size=int(rng.integers(3, 12))) for _ in range(BATCH)]
        batch = collate_train(wins, list(range(BATCH)), max_seq_len=10, num_items=N_ITEMS,
                              generator=torch.Generator().manual_seed(step), **opts)
        # Every 7th item has no video: the learned no-content vector stands in for it (and trains).
        mask = (batch.unique_items > 0) & (batch.unique_items % 7 != 0)
        batch.content_mask = mask
        batch.content = torch.from_numpy(frames[batch.unique_items[mask].numpy()])
        out.append(batch)
    return out, counts


def _model(cfg, counts, ctx):
    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.parallel.facade import ParallelModel

    torch.manual_seed(cfg.train.seed)
    model = build_recommender(cfg.model, num_items=N_ITEMS, item_train_counts=counts, max_seq_len=10,
                              seed=cfg.train.seed, device="meta")
    return ParallelModel(model, cfg, ctx, total_steps=STEPS)


def _steps(pm, batches):
    targets = [int((b.lengths - 1).clamp(min=0).sum()) for b in batches]
    return [pm.train_step(b, global_targets=t, global_sequences=len(b.lengths)).loss for b, t in zip(batches, targets)]


@pytest.mark.parametrize("precision", ["bf16", "bf16_autocast", "fp32"])
def test_video_tower_trains_on_cuda_with_zero2(ctx, precision):
    from mvrec_dist.config import TrainJobConfig, load_config

    cfg = load_config(TrainJobConfig, None, BASE + [f"parallel.precision={precision}"])
    batches, counts = _batches(cfg)
    pm = _model(cfg, counts, ctx)
    assert ctx.backend == "nccl" and ctx.device.type == "cuda"
    before = {n: p.detach().float().clone() for n, p in pm.dense.named_parameters() if p.requires_grad}
    assert all(p.device.type == "cuda" for p in pm.dense.parameters())
    losses = _steps(pm, batches)
    assert all(np.isfinite(losses)), losses
    moved = [n for n, p in pm.dense.named_parameters() if p.requires_grad
             and not torch.equal(p.detach().float(), before[n])]
    assert len(moved) == len(before), set(before) - set(moved)
    opt = pm.engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    assert inner.defaults.get("fused") is True  # torch's fused CUDA AdamW
    if precision == "bf16":
        assert next(pm.dense.parameters()).dtype == torch.bfloat16


def test_checkpoint_round_trip_on_cuda_continues_exactly(ctx, tmp_path):
    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.parallel.checkpoint import read_checkpoint, verify_checkpoint, write_checkpoint

    cfg = load_config(TrainJobConfig, None, BASE + ["parallel.precision=bf16"])
    batches, counts = _batches(cfg)
    pm = _model(cfg, counts, ctx)
    _steps(pm, batches[:2])
    write_checkpoint(pm, ctx, str(tmp_path / "ck"), state_json=STATE, config_json="{}", zero_stage=2)
    verify_checkpoint(str(tmp_path / "ck"))
    reference = _steps(pm, batches[2:])

    fresh = _model(cfg, counts, ctx)
    read_checkpoint(fresh, ctx, str(tmp_path / "ck"), zero_stage=2)
    resumed = _steps(fresh, batches[2:])
    np.testing.assert_allclose(resumed, reference, rtol=0, atol=1e-6)
