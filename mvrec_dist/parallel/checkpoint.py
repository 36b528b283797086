"""Checkpoint I/O of a ``ParallelModel``: sharded embeddings, dense ZeRO state, RNG; world-size independent.

Layout of one checkpoint directory (every rank writes its own files into its own local directory;
Ray Train merges the ranks' directories into one in storage):

```
sparse/                 torch.distributed.checkpoint of the DMP state and its fused optimizer state
                        (__<rank>_0.distcp from every rank, .metadata from rank 0)
dense.pt                rank 0: full fp32 parameters and AdamW moments of the dense tower, by name
rng-rank<r>.pt          rank r: torch / numpy / python RNG states
state.json              rank 0: TrainState (counters, best metric, data cursors)
config.json             rank 0: the resolved job config
COMMIT.json             rank 0, last: every file of every rank with its size and sha256
```

Why these formats: DCP reshards the row/column/table-wise embedding shards onto any new plan
and world size; the dense tower is stored as *full* tensors (assembled with DeepSpeed's
tensor-fragment API for ZeRO 1/2/3 and bf16) so it loads onto any world size too. Nothing is
unpickled: tensors load with ``torch.load(weights_only=True)``, and DCP's pickled ``.metadata``
is read with an allow-list unpickler that resolves only DCP's metadata classes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mvrec_dist.parallel.process_groups import DistContext, barrier

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "write_checkpoint", "read_checkpoint", "read_sparse",
           "verify_checkpoint", "commit_record", "SafeDCPReader", "load_full_state"]

CHECKPOINT_FORMAT = 1
COMMIT_NAME = "COMMIT.json"


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, corrupt, or does not fit the model."""


# ---------------------------------------------------------------------- safe DCP metadata
# Every global a DCP ``.metadata`` pickle of this project's checkpoints refers to. Anything else
# (``os.system``, ``builtins.eval``, ...) is refused, so a tampered file cannot run code.
_DCP_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
} | {("torch", name) for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8",
                                 "bool")}


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals DCP metadata needs."""

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in _DCP_METADATA_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in checkpoint metadata")
        return super().find_class(module, name)


def _dcp_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import metadata as dcp_meta

    class _SafeDCPReader(FileSystemReader):
        """DCP reader whose ``.metadata`` is read with an allow-list unpickler."""

        def read_metadata(self, *args: Any, **kwargs: Any):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
                except Exception as exc:
                    raise CheckpointError(f"{path}: refused to load checkpoint metadata ({exc})") from None
            if not isinstance(metadata, dcp_meta.Metadata):
                raise CheckpointError(f"{path}: not DCP metadata ({type(metadata).__name__})")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = dcp_meta.StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeDCPReader


def SafeDCPReader(path: str):  # noqa: N802 (a factory standing in for a class)
    """A ``FileSystemReader`` for ``path`` that never unpickles arbitrary objects."""
    return _dcp_reader_class()(path)


# ---------------------------------------------------------------------- dense state
def _dense_full_state(engine) -> dict[str, Any]:
    """Full fp32 params and AdamW moments of every trainable dense parameter, by name (collective on ZeRO-3)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    params, exp_avg, exp_avg_sq = {}, {}, {}
    plain_state = _plain_optimizer_state(engine)
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        full = safe_get_full_fp32_param(p)
        if full is None:  # ZeRO stage 0 without a partitioned optimizer: the parameter is the master copy
            full = p.detach()
            st = plain_state.get(p, {})
            m, v = st.get("exp_avg"), st.get("exp_avg_sq")
        else:
            m = safe_get_full_optimizer_state(p, "exp_avg")
            v = safe_get_full_optimizer_state(p, "exp_avg_sq")
        params[name] = full.detach().float().cpu().clone()
        if m is not None:
            exp_avg[name] = m.detach().float().cpu().clone()
            exp_avg_sq[name] = v.detach().float().cpu().clone()
    return {"params": params, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
            "buffers": {n: b.detach().cpu().clone() for n, b in persistent_buffers(engine.module).items()},
            "optimizer_step": _optimizer_step(engine),
            "lr_scheduler": _scheduler_state(engine)}


def persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a module's state dict holds (BatchNorm running statistics of video encoders), by name.

    They are part of the model: a BatchNorm that trains moves its running statistics, which
    evaluation uses; ID-only towers have none.
    """
    params = {n for n, _ in module.named_parameters()}
    return {n: b for n, b in module.state_dict(keep_vars=True).items() if n not in params}


def _plain_optimizer_state(engine) -> dict:
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    return inner.state if isinstance(inner, torch.optim.Optimizer) else {}


def _inner_torch_optimizer(engine) -> torch.optim.Optimizer:
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def _optimizer_step(engine) -> int:
    for st in _inner_torch_optimizer(engine).state.values():
        if "step" in st:
            return int(st["step"])
    return 0


def _scheduler_state(engine) -> dict[str, Any]:
    sched = engine.lr_scheduler
    return {"last_epoch": int(sched.last_epoch)} if sched is not None else {}


def _ensure_optimizer_state(engine) -> None:
    """Create AdamW's lazily-initialised state (zeros) so full moments can be written into it."""
    opt = _inner_torch_optimizer(engine)
    # ZeRO-3 keys the state by its flat fp32 partitions, which it swaps into the param groups only
    # during a step; the other stages keep them in the groups.
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    keys = list(flat) if flat is not None else [p for group in opt.param_groups for p in group["params"]]
    # As torch's AdamW does: fused (CUDA) and capturable steps live on the parameter's device.
    on_device = bool(opt.defaults.get("fused") or opt.defaults.get("capturable"))
    for p in keys:
        st = opt.state[p]
        if "exp_avg" not in st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device) if on_device else torch.tensor(0.0)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    # ZeRO 1/2 and the bf16 optimizer link parameter fragments to the optimizer state only after their
    # first step; link them now so the full moments can be written.
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


@torch.no_grad()
def _load_dense_full_state(engine, blob: dict[str, Any], zero_stage: int) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    _ensure_optimizer_state(engine)
    named = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
    missing = sorted(set(named) - set(blob["params"]))
    unexpected = sorted(set(blob["params"]) - set(named))
    if missing or unexpected:
        raise CheckpointError(f"dense state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    own = persistent_buffers(engine.module)
    saved = blob.get("buffers", {})
    if set(own) != set(saved):
        raise CheckpointError(f"dense buffers do not fit the model: missing {sorted(set(own) - set(saved))[:5]}, "
                              f"unexpected {sorted(set(saved) - set(own))[:5]}")
    for name, b in own.items():
        b.copy_(saved[name].to(device=b.device, dtype=b.dtype))
    plain_state = _plain_optimizer_state(engine)
    gather = _gathered(engine, zero_stage)
    with gather:
        for name, p in named.items():
            value = blob["params"][name]
            if tuple(value.shape) != tuple(p.ds_shape if hasattr(p, "ds_shape") else p.shape):
                raise CheckpointError(f"dense parameter {name}: checkpoint shape {tuple(value.shape)} "
                                      f"!= model shape {tuple(p.shape)}")
            dev = p.device
            if hasattr(p, "_hp_mapping") or hasattr(p, "ds_id"):
                safe_set_full_fp32_param(p, value.to(dev))
                if name in blob["exp_avg"]:
                    safe_set_full_optimizer_state(p, blob["exp_avg"][name].to(dev), "exp_avg")
                    safe_set_full_optimizer_state(p, blob["exp_avg_sq"][name].to(dev), "exp_avg_sq")
            elif name in blob["exp_avg"] and p in plain_state:
                plain_state[p]["exp_avg"].copy_(blob["exp_avg"][name])
                plain_state[p]["exp_avg_sq"].copy_(blob["exp_avg_sq"][name])
            # The working (possibly bf16) copy the forward uses; under ZeRO-3 it is gathered here and
            # re-partitioned on leaving the context.
            p.data.copy_(value.to(dev, p.dtype).reshape(p.data.shape))
    step = int(blob.get("optimizer_step", 0))
    for st in _inner_torch_optimizer(engine).state.values():
        if "step" in st:
            st["step"] = torch.full_like(st["step"], float(step)) if torch.is_tensor(st["step"]) else step
    sched = engine.lr_scheduler
    if sched is not None and blob.get("lr_scheduler"):
        last = int(blob["lr_scheduler"]["last_epoch"])
        sched.last_epoch = last
        for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * factor(last)


def _gathered(engine, zero_stage: int):
    import contextlib

    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p for p in engine.module.parameters()], modifier_rank=0)


# ---------------------------------------------------------------------- rng
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "python": {"version": py_state[0], "state": list(py_state[1]),
                        "gauss": py_state[2] if py_state[2] is None else float(py_state[2])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------- files
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _list_files(root: str) -> dict[str, dict[str, Any]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            out[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
    return out


@dataclass(frozen=True)
class commit_record:  # noqa: N801 (a record type named after the file it describes)
    """What ``COMMIT.json`` says about a checkpoint."""

    step: int
    epoch: int
    world_size: int
    files: dict[str, dict[str, Any]]


def write_checkpoint(model: Any, ctx: DistContext, local_dir: str, *, state_json: str, config_json: str,
                     zero_stage: int) -> None:
    """Write this rank's part of a checkpoint into ``local_dir`` (collective; every rank calls it).

    Args:
        model: The ``ParallelModel``.
        ctx: Process group.
        local_dir: An empty local directory of this rank.
        state_json: ``TrainState.to_json()`` (rank 0 writes it).
        config_json: The resolved config as JSON (rank 0 writes it).
        zero_stage: DeepSpeed ZeRO stage of the dense engine.
    """
    import torch.distributed.checkpoint as dcp

    os.makedirs(local_dir, exist_ok=True)
    if model.sparse is not None:
        dmp = model.sparse.module
        dcp.save({"model": dmp.state_dict(), "optim": dmp.fused_optimizer.state_dict()},
                 storage_writer=dcp.FileSystemWriter(os.path.join(local_dir, "sparse")),
                 process_group=ctx.group)
    dense = _dense_full_state(model.engine)  # collective under ZeRO-3: every rank assembles
    torch.save(_rng_state(), os.path.join(local_dir, f"rng-rank{ctx.rank}.pt"))
    if ctx.rank == 0:
        torch.save(dense, os.path.join(local_dir, "dense.pt"))
        with open(os.path.join(local_dir, "state.json"), "w", encoding="utf-8") as f:
            f.write(state_json)
        with open(os.path.join(local_dir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config_json)
    mine = _list_files(local_dir)
    everyone: list[Any] = [None] * ctx.world_size
    if ctx.world_size > 1:
        # Small JSON-able dicts between our own ranks (in memory, never from disk).
        dist.all_gather_object(everyone, mine, group=ctx.group)
    else:
        everyone = [mine]
    if ctx.rank == 0:
        files: dict[str, dict[str, Any]] = {}
        for rank_files in everyone:
            for rel, meta in rank_files.items():
                if rel in files and files[rel] != meta:
                    raise CheckpointError(f"two ranks wrote different {rel}")
                files[rel] = meta
        state = json.loads(state_json)
        commit = {"format": CHECKPOINT_FORMAT, "step": state["step"], "epoch": state["epoch"],
                  "world_size": ctx.world_size, "files": files}
        tmp = os.path.join(local_dir, COMMIT_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(commit, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(local_dir, COMMIT_NAME))
    barrier(ctx)


def verify_checkpoint(path: str, *, checksums: bool = True) -> commit_record:
    """Check a (local) checkpoint directory against its ``COMMIT.json``.

    Args:
        path: Checkpoint directory.
        checksums: Also recompute sha256 of every file (sizes are always checked).

    Returns:
        The commit record.

    Raises:
        CheckpointError: naming the missing marker, file, size or checksum mismatch.
    """
    marker = os.path.join(path, COMMIT_NAME)
    if not os.path.exists(marker):
        raise CheckpointError(f"{path}: no {COMMIT_NAME} (the checkpoint was not finished)")
    try:
        with open(marker, encoding="utf-8") as f:
            commit = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{marker}: unreadable ({exc})") from None
    if commit.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{marker}: format {commit.get('format')} is not {CHECKPOINT_FORMAT}")
    for rel, meta in commit["files"].items():
        full = os.path.join(path, rel)
        if not os.path.exists(full):
            raise CheckpointError(f"{path}: file {rel} listed in {COMMIT_NAME} is missing")
        size = os.path.getsize(full)
        if size != meta["bytes"]:
            raise CheckpointError(f"{path}: {rel} has {size} bytes, {COMMIT_NAME} says {meta['bytes']}")
        if checksums and _sha256(full) != meta["sha256"]:
            raise CheckpointError(f"{path}: {rel} fails its sha256 check")
    return commit_record(step=int(commit["step"]), epoch=int(commit["epoch"]),
                         world_size=int(commit["world_size"]), files=commit["files"])


def read_checkpoint(model: Any, ctx: DistContext, path: str, *, zero_stage: int,
                    restore_rng: bool = True) -> str:
    """Load a verified checkpoint (a local directory every rank can read) into ``model``.

    Embeddings are resharded onto the current plan by DCP; the dense tower loads from full tensors;
    RNG states are restored when the checkpoint has this rank's file (same world size).

    Args:
        model: The ``ParallelModel`` to fill.
        ctx: Process group.
        path: Checkpoint directory.
        zero_stage: ZeRO stage of the dense engine.
        restore_rng: Restore this rank's RNG states when present.

    Returns:
        The checkpoint's ``state.json`` text.
    """
    import torch.distributed.checkpoint as dcp

    if model.sparse is not None:
        if not os.path.isdir(os.path.join(path, "sparse")):
            raise CheckpointError(f"{path}: has no sparse/ state but the model has an ID table")
        read_sparse(model.sparse.module, os.path.join(path, "sparse"), ctx)
    blob = torch.load(os.path.join(path, "dense.pt"), map_location="cpu", weights_only=True)
    _load_dense_full_state(model.engine, blob, zero_stage)
    rng_file = os.path.join(path, f"rng-rank{ctx.rank}.pt")
    if restore_rng and os.path.exists(rng_file):
        _set_rng_state(torch.load(rng_file, weights_only=True))
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        return f.read()


LEGACY_TABLES_PREFIX = "sequence."
"""Checkpoints written before ``EmbeddingTables`` held the item ``EmbeddingCollection`` at the DMP's root:
their keys lack this prefix (``embeddings.item.weight``, not ``sequence.embeddings.item.weight``)."""


def read_sparse(dmp: Any, sparse_dir: str, ctx: DistContext) -> None:
    """Load a checkpoint's ``sparse/`` (DCP) into the DMP of the tables and its fused optimizer (collective).

    A checkpoint of the older layout (the item ``EmbeddingCollection`` at the DMP's root) loads too:
    the same tensors are read under their old names.
    """
    import torch.distributed.checkpoint as dcp

    model_sd = dmp.state_dict()
    optim_sd = dmp.fused_optimizer.state_dict()
    stored = SafeDCPReader(sparse_dir).read_metadata().state_dict_metadata
    target: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    if not any(k.startswith("model." + LEGACY_TABLES_PREFIX) for k in stored) and \
            any(k.startswith(LEGACY_TABLES_PREFIX) for k in model_sd):
        # The tensors are the same objects under the old names: DCP fills them in place.
        def old(key: str) -> str:
            return key[len(LEGACY_TABLES_PREFIX):] if key.startswith(LEGACY_TABLES_PREFIX) else key

        target = {"model": {old(k): v for k, v in model_sd.items()},
                  "optim": {"state": {old(k): v for k, v in optim_sd["state"].items()}}}
    if not target["optim"].get("state"):
        # A rank that holds no shard of any table (a table-wise plan, or a column-wise one that put every
        # column shard elsewhere) has no optimizer state; DCP would look for an ``optim`` key of its own.
        del target["optim"]
    dcp.load(target, storage_reader=SafeDCPReader(sparse_dir), process_group=ctx.group)
    dmp.load_state_dict(model_sd)
    if "optim" in target:
        dmp.fused_optimizer.load_state_dict(optim_sd)


def load_full_state(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as one full (unsharded) tensor, without a process group.

    For tools and tests: compares runs, exports weights. Keys are ``sparse/<DCP key>`` (e.g.
    ``sparse/model.embeddings.item.weight``) and ``dense/<parameter name>`` (plus ``dense/exp_avg/...``).

    Args:
        path: A local checkpoint directory.

    Returns:
        Name -> tensor.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import metadata as dcp_meta

    out: dict[str, torch.Tensor] = {}
    sparse_dir = os.path.join(path, "sparse")
    if os.path.isdir(sparse_dir):
        reader = SafeDCPReader(sparse_dir)
        meta = reader.read_metadata()
        flat = {key: torch.empty(m.size, dtype=m.properties.dtype) for key, m in meta.state_dict_metadata.items()
                if isinstance(m, dcp_meta.TensorStorageMetadata)}
        dcp.load(flat, storage_reader=SafeDCPReader(sparse_dir), no_dist=True)
        out.update({f"sparse/{k}": v for k, v in flat.items()})
    blob = torch.load(os.path.join(path, "dense.pt"), map_location="cpu", weights_only=True)
    for group in ("params", "exp_avg", "exp_avg_sq", "buffers"):
        prefix = "dense/" if group == "params" else f"dense/{group}/"
        out.update({prefix + k: v for k, v in blob.get(group, {}).items()})
    return out
