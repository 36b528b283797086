"""The one train step (``mvrec_dist.parallel.step``): its stages in order, and the parallel package's imports.

The numerics of the step on every path are checked elsewhere: 2 sharded ranks against
``PlainTrainer`` (``test_facade.py``), ``sparse_dist`` against ``simple`` (``test_pipeline.py``), the
phase-timed step against ``train_step`` (``tests/benchmarks``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

from mvrec_dist.models.recommender import TaskOutput
from mvrec_dist.parallel.step import StepInput, SyncedStep, loss_scale, run_train_step

PARALLEL = Path(__file__).resolve().parents[2] / "mvrec_dist" / "parallel"


class _Batch:
    def __init__(self, ids: list[int], lengths: list[int]):
        self.unique_items = torch.tensor(ids)
        self.lengths = torch.tensor(lengths)


class _RecordingParts:
    """``TrainStepParts`` over a one-column table whose loss sum is the sum of the looked-up rows."""

    def __init__(self):
        self.table = torch.nn.Parameter(torch.arange(10, dtype=torch.float32).reshape(10, 1))
        self.calls: list[str] = []

    def sparse_inputs(self, batch):
        return {"sequence": batch.unique_items}

    def embed(self, inputs):
        self.calls.append("embed")
        return {"item_id": self.table[inputs["sequence"]]}

    def dense_forward(self, embeddings, batch, scale):
        self.calls.append("dense_forward")
        loss_sum = embeddings["item_id"].sum()
        out = TaskOutput(loss_sum, (batch.lengths - 1).clamp(min=0).sum(), (batch.lengths > 0).sum())
        return loss_sum * scale, out

    def backward(self, loss):
        self.calls.append("backward")
        self.loss = loss.detach()
        loss.backward()

    def update(self):
        self.calls.append("update")


class _RecordingObserver:
    def __init__(self, parts: _RecordingParts):
        self.parts = parts

    def looked_up(self, embeddings):
        self.parts.calls.append(f"looked_up:{tuple(embeddings['item_id'].shape)}")

    def forwarded(self):
        self.parts.calls.append("forwarded")

    def backwarded(self):
        self.parts.calls.append("backwarded")

    def updated(self):
        self.parts.calls.append("updated")


def test_run_train_step_sums_the_inputs_scaled_losses_into_one_backward_and_one_update():
    parts = _RecordingParts()
    batches = [_Batch([1, 2], [3, 2]), _Batch([4], [2, 0])]
    targets = 4  # (3 - 1) + (2 - 1) + (2 - 1)
    steps = [StepInput.of(SyncedStep(b, b, targets, 0), parts, world_size=1) for b in batches]
    outs = run_train_step(parts, steps, _RecordingObserver(parts))
    assert parts.calls == ["embed", "looked_up:(2, 1)", "dense_forward", "forwarded",
                           "embed", "looked_up:(1, 1)", "dense_forward", "forwarded",
                           "backward", "backwarded", "update", "updated"]
    assert [o.loss_sum.item() for o in outs] == [3.0, 4.0]
    assert float(parts.loss) == (3.0 + 4.0) * loss_scale(targets, 1)
    # Every looked-up row gets the gradient of the global mean: 1 / N.
    assert parts.table.grad[[1, 2, 4], 0].tolist() == [0.25] * 3 and float(parts.table.grad.sum()) == 0.75


def test_run_train_step_without_an_observer():
    parts = _RecordingParts()
    batch = _Batch([3], [2])
    [out] = run_train_step(parts, [StepInput.of(SyncedStep(batch, batch, 1, 1), parts, world_size=2)])
    assert parts.calls == ["embed", "dense_forward", "backward", "update"]
    assert float(parts.loss) == 3.0 * 2  # W / N = 2
    assert out.loss_sum.item() == 3.0


def _parallel_imports() -> dict[str, set[str]]:
    """Module -> the ``mvrec_dist.parallel`` modules it imports, anywhere in the file (lazy imports included)."""
    graph = {}
    for path in PARALLEL.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        graph[path.stem] = {n.split(".")[2] for n in names
                            if n.startswith("mvrec_dist.parallel.") and n.split(".")[2] != path.stem}
    return graph


def test_the_parallel_package_has_no_import_cycle():
    graph = _parallel_imports()
    assert "facade" not in graph["pipeline"] and "facade" not in graph["step"]
    assert "pipeline" not in graph["step"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_pipeline_imports_without_the_facade():
    code = ("import sys, mvrec_dist.parallel.pipeline; "
            "assert 'mvrec_dist.parallel.facade' not in sys.modules, 'the pipeline imported the facade'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PARALLEL.parents[1], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
