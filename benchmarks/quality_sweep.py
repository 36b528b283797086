"""Hyper-parameter search on the validation split with the plain single-process trainer.

Each candidate config trains with ``mvrec_dist.train.reference.PlainTrainer`` (the same model and
update rules as the distributed step, shown equal in tests/parallel/test_facade.py), validates every
epoch and stops early on valid NDCG@10. The test split is never read here: a chosen config is then
trained once with the real distributed job, which looks at test once.

    python benchmarks/quality_sweep.py --preset jobs/configs/microlens-50k/sasrec-id.yaml \
        --grid 'model.embedding_dim=64,128' --grid 'train.lr=1e-3,3e-4' --out benchmarks/results/sweep.jsonl

On a machine without torchrec (a GPU box with only torch) the TorchRec classes the model builder
names are replaced by placeholders: the plain trainer uses ``nn.Embedding`` and never calls them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _placeholder_torchrec() -> None:
    try:
        import torchrec  # noqa: F401
        return
    except ImportError:
        pass

    class _Placeholder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    mod = types.ModuleType("torchrec")
    mod.EmbeddingCollection = mod.EmbeddingConfig = mod.KeyedJaggedTensor = _Placeholder
    sparse = types.ModuleType("torchrec.sparse")
    jagged = types.ModuleType("torchrec.sparse.jagged_tensor")
    jagged.KeyedJaggedTensor = _Placeholder
    sys.modules.update({"torchrec": mod, "torchrec.sparse": sparse, "torchrec.sparse.jagged_tensor": jagged})


def run_one(preset: str, overrides: list[str], *, device: str, max_epochs: int) -> dict:
    """Train one config, validating each epoch; returns the curve and the best epoch."""
    import torch

    from mvrec_dist.config import TrainJobConfig, load_config
    from mvrec_dist.data.loader import TrainData, load_item_train_counts
    from mvrec_dist.data.manifest import load_manifest
    from mvrec_dist.eval.runner import evaluate_ranking
    from mvrec_dist.models.builders import build_recommender
    from mvrec_dist.train.reference import PlainTrainer

    cfg = load_config(TrainJobConfig, preset, overrides + ["parallel.num_workers=1", f"train.epochs={max_epochs}"])
    manifest = load_manifest(cfg.data.dataset_dir)
    counts = load_item_train_counts(manifest)
    torch.manual_seed(cfg.train.seed)
    model = build_recommender(cfg.model, num_items=manifest.num_items, item_train_counts=counts,
                              max_seq_len=cfg.data.max_seq_len, seed=cfg.train.seed, device="meta")
    data = TrainData(cfg, manifest, rank=0, world_size=1)
    total = data.estimated_steps_per_epoch() * cfg.train.epochs
    trainer = PlainTrainer(model, cfg, num_items=manifest.num_items, total_steps=total, device=device)
    curve, best, best_epoch, since = [], -1.0, -1, 0
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        losses = [trainer.train_step(batch) for batch in data.train_batches(epoch)]
        with trainer.evaluating():
            metrics = evaluate_ranking(trainer, data.eval_batches("valid"), num_items=manifest.num_items,
                                       ks=cfg.eval.ks)
        value = metrics[cfg.select_metric.name]
        curve.append({"epoch": epoch, "loss": sum(losses) / max(len(losses), 1),
                      "valid": {m.name: round(metrics[m.name], 5) for m in cfg.metrics},
                      "elapsed_s": round(time.perf_counter() - start, 1)})
        if value > best:
            best, best_epoch, since = value, epoch, 0
        else:
            since += 1
            if cfg.train.patience and since >= cfg.train.patience:
                break
    return {"overrides": overrides, "best_valid_" + cfg.select_metric.name: best, "best_epoch": best_epoch,
            "best_valid": curve[best_epoch]["valid"], "curve": curve, "device": device,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help="base training preset (YAML)")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable; full grid)")
    parser.add_argument("--config", action="append", default=[],
                        help="one explicit candidate: space-separated key=value overrides (repeatable)")
    parser.add_argument("--configs-file", default=None,
                        help="file with one candidate per line (space-separated overrides; # comments)")
    parser.add_argument("--part", default="0/1", help="i/n: run every n-th candidate starting at i (parallel runs)")
    parser.add_argument("--set", action="append", default=[], help="key=value applied to every candidate")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--out", required=True, help="JSON-lines file, one line per candidate")
    args = parser.parse_args()
    _placeholder_torchrec()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    axes = [(g.split("=", 1)[0], g.split("=", 1)[1].split(",")) for g in args.grid]
    candidates = [list(c.split()) for c in args.config]
    if args.configs_file:
        with open(args.configs_file, encoding="utf-8") as f:
            candidates += [line.split("#", 1)[0].split() for line in f if line.split("#", 1)[0].strip()]
    candidates += [[f"{k}={v}" for k, v in zip([a for a, _ in axes], values)]
                   for values in itertools.product(*[vs for _, vs in axes])] if axes else []
    index, parts = (int(x) for x in args.part.split("/"))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for overrides in (candidates or [[]])[index::parts]:
        result = run_one(args.preset, list(args.set) + overrides, device=device, max_epochs=args.max_epochs)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result, sort_keys=True) + "\n")
        print(json.dumps({k: result[k] for k in ("overrides", "best_epoch", "best_valid", "seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
