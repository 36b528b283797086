"""The training loop's metrics: loss, HR/NDCG, throughput and memory reach metrics.jsonl, TensorBoard and
the reports Ray Train gets; the progress lines carry rates and ETAs.

The loop runs on duck-typed stand-ins for ``ParallelModel``, ``TrainData`` and ``Checkpointer`` (one
process, no process group), so this checks the loop's bookkeeping in a second; the real pieces
under Ray Train are covered end to end by tests/jobs/test_train_job.py.
"""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from mvrec_dist.config import TrainJobConfig, load_config
from mvrec_dist.parallel.facade import StepStats
from mvrec_dist.train.loop import Trainer
from mvrec_dist.train.metrics_log import MetricsLog
from mvrec_dist.train.state import TrainState

N, D = 20, 4


class FakeModel:
    """One rank that 'learns': the loss halves every step; item i's representation is one-hot-ish."""

    ctx = SimpleNamespace(rank=0, is_cuda=False)

    def __init__(self):
        self.steps = 0
        self.items = torch.randn(N + 1, D, generator=torch.Generator().manual_seed(0))

    def train_steps(self, batches, dummy_batch, count):
        for batch in batches:
            self.steps += 1
            targets, sequences = count(batch)
            yield batch, StepStats(loss=4.0 / self.steps, num_targets=targets, sequences=sequences)

    def gather_rows(self, rows):
        return rows

    @contextlib.contextmanager
    def evaluating(self):
        yield

    def item_representations(self, num_items):
        return self.items

    def user_states(self, history, lengths, item_repr):
        return item_repr[history[:, 0]]

    def sum_over_ranks(self, values):
        return values


class FakeData:
    rank, world_size, loader_workers, consumers_per_rank, num_items = 0, 1, 0, 1, N

    def __init__(self):
        self.recorded, self.loaded = 0, None

    def load_state_dict(self, state):
        self.loaded = state

    def state_dict(self):
        return {"recorded": self.recorded}

    def record(self, batch):
        self.recorded += 1

    def end_epoch(self):
        pass

    def train_batches(self, epoch):
        for _ in range(3):
            yield SimpleNamespace(lengths=torch.tensor([3, 4]), cursor=None)

    def dummy_batch(self):
        return SimpleNamespace(lengths=torch.tensor([0]), cursor=None)

    def estimated_steps_per_epoch(self):
        return 3

    def eval_batches(self, split):
        return [SimpleNamespace(history=torch.tensor([[1], [2]]), lengths=torch.tensor([1, 1]),
                                targets=torch.tensor([3, 4]), history_values=torch.tensor([1, 2]),
                                history_offsets=torch.tensor([0, 1, 2]))]


class FakeCheckpointer:
    def save(self, model, state):
        return f"checkpoint-step{state.step:09d}"

    def load_best(self, model, state):
        pass


@pytest.fixture
def fitted(tmp_path):
    cfg = load_config(TrainJobConfig, None, ["train.epochs=2", "train.log_every_steps=1", "train.patience=0"])
    events = []  # what the driver's console would draw
    log = MetricsLog(str(tmp_path / "logs"), quiet=False, enabled=True, sink=events.append)
    checkpointer, reports = FakeCheckpointer(), []
    result = Trainer(cfg, FakeModel(), FakeData(), checkpointer, log, TrainState(), reports.append).fit()
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    out = "\n".join(e[1] for e in events if e[0] == "line")
    return SimpleNamespace(result=result, rows=rows, reports=reports, events=events, out=out, logs=tmp_path / "logs")


def test_metrics_jsonl_has_loss_ranking_throughput_and_memory(fitted):
    kinds = {}
    for row in fitted.rows:
        kinds.setdefault(row["kind"], []).append(row)
    assert [r["loss"] for r in kinds["train"]] == pytest.approx([4.0 / s for s in range(1, 7)])
    assert all(r["sequences_per_s"] > 0 and r["targets_per_s"] > 0 for r in kinds["train"])
    assert [r["epoch"] for r in kinds["valid"]] == [0, 1] and all("hr@10" in r and "ndcg@10" in r
                                                                  for r in kinds["valid"])
    assert "ndcg@20" in kinds["test"][0]
    assert [r["loss"] for r in kinds["epoch"]] == pytest.approx([(4 + 2 + 4 / 3) / 3, (1 + 0.8 + 4 / 6) / 3])
    # Each step: 2 sequences of lengths 3 and 4, so 2 + 3 targets: the two rates stand in that ratio.
    assert all(r["targets_per_s"] == pytest.approx(2.5 * r["sequences_per_s"]) and r["steps"] == 3
               for r in kinds["epoch"])
    # One memory record per epoch and one at the end, all with the per-rank and the max peak RSS.
    assert len(kinds["memory"]) == 3
    assert all(r["peak_rss_mib_max"] == r["peak_rss_mib_rank0"] > 0 for r in kinds["memory"])


def test_tensorboard_has_the_same_scalars(fitted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fitted.logs / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/sequences_per_s", "train/targets_per_s", "valid/hr@10", "valid/ndcg@10",
            "test/ndcg@10", "epoch/loss", "epoch/sequences_per_s", "epoch/targets_per_s", "memory/peak_rss_mib_max",
            "memory/peak_rss_mib_rank0"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_ray_train_reports_carry_loss_ranking_throughput_and_memory(fitted):
    assert len(fitted.reports) == 2  # one per epoch (a checkpoint each)
    assert [r["checkpoint"] for r in fitted.reports] == ["checkpoint-step000000003", "checkpoint-step000000006"]
    for report in fitted.reports:
        assert {"train/loss", "train/sequences_per_s", "train/targets_per_s", "train/peak_rss_mib_max",
                "valid/hr@10", "valid/ndcg@10"} <= set(report)
    assert fitted.reports[1]["train/loss"] == pytest.approx((1 + 0.8 + 4 / 6) / 3)
    result = fitted.result
    assert result.throughput["sequences_per_s"] > 0 and result.memory["peak_rss_mib_rank0"] > 0


def test_each_epoch_has_a_progress_bar_with_the_loss_and_rate_then_a_line(fitted):
    events = fitted.events
    opened = [e for e in events if e[0] == "open"]
    assert [(desc, total, unit, initial) for _, _, desc, total, unit, initial in opened] == [
        ("epoch 0", 3, "step", 0), ("epoch 1", 3, "step", 0)]
    key = opened[0][1]
    updates = [e for e in events if e[0] == "update" and e[1] == key]
    assert [n for _, _, n, _ in updates] == [1, 2, 3]
    assert updates[0][3].startswith("loss 4.0000, ") and updates[0][3].endswith(" seq/s")
    # The bar closes before the epoch's line, which keeps the record.
    closed = events.index(("close", key))
    assert events[closed + 1][0] == "line" and events[closed + 1][1].startswith("epoch 0 done: 3 steps in")
    out = fitted.out
    assert "epoch 0 done: 3 steps in" in out and " targets/s, mean loss 2.4444, peak RSS" in out
    valid = [line for line in out.splitlines() if line.startswith("valid epoch")]
    assert "run eta <= " in valid[0] and "run eta" not in valid[1]  # nothing left after the last epoch
    assert "2 users in" in valid[0]


def test_quiet_mode_prints_only_summaries(tmp_path, capsys):
    cfg = load_config(TrainJobConfig, None, ["train.epochs=1", "train.log_every_steps=1", "train.quiet=true"])
    log = MetricsLog(str(tmp_path), quiet=True, enabled=True)
    Trainer(cfg, FakeModel(), FakeData(), FakeCheckpointer(), log, TrainState(), lambda m: None).fit()
    log.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 0 done", "valid epoch 0", "test (weights of epoch 0)"]


class FourBatches(FakeData):
    def eval_batches(self, split):
        return [SimpleNamespace(history=torch.tensor([[1], [2]]), lengths=torch.tensor([1, 1]),
                                targets=torch.tensor([3, 4]), history_values=torch.tensor([1, 2]),
                                history_offsets=torch.tensor([0, 1, 2]))] * 4


@pytest.mark.parametrize("quiet", [False, True])
def test_an_evaluation_has_a_progress_bar_of_the_users_over_every_rank(quiet):
    from mvrec_dist.tasks.next_item import evaluate_split

    events = []
    metrics = evaluate_split(FakeModel(), FourBatches(), "valid", (10,),
                             MetricsLog(None, quiet=quiet, enabled=True, sink=events.append))
    assert metrics["users"] == 8
    if quiet:
        assert events == []
        return
    # Opened once the first batch is scored (the rate counts scoring only), one update per batch, closed.
    assert events == [("open", 0, "valid", 8, "users", 0), *[("update", 0, n, "") for n in (2, 4, 6, 8)],
                      ("close", 0)]


class FakeCheckpointerKeepingState(FakeCheckpointer):
    def __init__(self):
        self.saved = []

    def save(self, model, state):
        self.saved.append(dict(state.data))
        return super().save(model, state)


def test_the_data_streams_state_is_one_opaque_checkpoint_entry(tmp_path):
    cfg = load_config(TrainJobConfig, None, ["train.epochs=2", "train.checkpoint_every_steps=2", "train.patience=0"])
    data, checkpointer = FakeData(), FakeCheckpointerKeepingState()
    state = TrainState(data={"recorded": -1})
    Trainer(cfg, FakeModel(), data, checkpointer, MetricsLog(None, quiet=True, enabled=True), state, lambda m: None).fit()
    assert data.loaded == {"recorded": -1}  # handed back to the data before training
    # Every 2 steps (2, 4, 6) and at each epoch's end (3, 6): whatever the data said at that moment.
    assert checkpointer.saved == [{"recorded": r} for r in (2, 3, 4, 6, 6)]


class ScriptedTask:
    """A task whose validation metric follows a script; ``higher`` picks its direction."""

    examples_key = "items"

    def __init__(self, values, higher):
        from mvrec_dist.config.task import MetricSpec

        self.values, self.spec = list(values), MetricSpec("err", higher)
        self.metrics, self.select_metric = (self.spec,), self.spec

    def metric_values(self, metrics):
        return {"err": metrics["err"]}

    def refresh(self, model, data, step):  # Task.refresh: nothing to bring up to date
        pass

    def count(self, batch):
        return int((batch.lengths - 1).sum()), len(batch.lengths)

    def evaluate(self, model, data, split, log=None):
        value = self.values.pop(0) if split == "valid" else -1.0
        return {"err": value, "items": 5, "seconds": 0.0}

    def baselines(self, model, data, split):
        return {}


@pytest.mark.parametrize("higher, best_epoch, epochs_run", [(False, 1, 4), (True, 0, 3)])
def test_early_stopping_follows_the_metrics_direction(higher, best_epoch, epochs_run):
    # err by epoch: 3.0, 2.0, 2.5, 2.7, 1.0. Lower is better: best at epoch 1, patience 2 stops after
    # epoch 3 (epoch 4's 1.0 is never reached). Higher is better: best at epoch 0, stops after epoch 2.
    cfg = load_config(TrainJobConfig, None, ["train.epochs=5", "train.patience=2"])
    checkpointer = FakeCheckpointer()
    task = ScriptedTask([3.0, 2.0, 2.5, 2.7, 1.0], higher)
    result = Trainer(cfg, FakeModel(), FakeData(), checkpointer, MetricsLog(None, quiet=True, enabled=True), TrainState(),
                     lambda m: None, task=task).fit()
    assert result.state.best_epoch == best_epoch and result.state.epoch == epochs_run
    assert result.valid["err"] == [3.0, 2.0][best_epoch] and result.state.best_metric == result.valid["err"]


def test_a_nan_first_validation_is_not_a_best():
    cfg = load_config(TrainJobConfig, None, ["train.epochs=2", "train.patience=0"])
    task = ScriptedTask([float("nan"), 4.0], higher=False)
    result = Trainer(cfg, FakeModel(), FakeData(), FakeCheckpointer(), MetricsLog(None, quiet=True, enabled=True), TrainState(),
                     lambda m: None, task=task).fit()
    assert result.state.best_epoch == 1 and result.state.best_metric == 4.0


def test_a_run_resumed_after_it_stopped_early_goes_straight_to_the_test():
    # The last checkpoint of a run that stopped early (here after epoch 3) holds the spent patience; a
    # resume from it (its test crashed, say) must not train another epoch the first run never did.
    cfg = load_config(TrainJobConfig, None, ["train.epochs=5", "train.patience=2"])
    first = Trainer(cfg, FakeModel(), FakeData(), FakeCheckpointer(), MetricsLog(None, quiet=True, enabled=True),
                    TrainState(), lambda m: None, task=ScriptedTask([3.0, 2.0, 2.5, 2.7, 1.0], False)).fit()
    assert first.state.epoch == 4 and first.state.evals_since_best == 2
    resumed_state = TrainState.from_json(first.state.to_json())
    task = ScriptedTask([0.5], False)  # a validation would pop this and make it the best
    again = Trainer(cfg, FakeModel(), FakeData(), FakeCheckpointer(), MetricsLog(None, quiet=True, enabled=True),
                    resumed_state, lambda m: None, task=task).fit()
    assert again.state.epoch == 4 and task.values == [0.5] and again.state.best_epoch == 1
    assert again.test == {"err": -1.0, "items": 5, "seconds": 0.0}
    # The throughput covers the run's whole life, not the resumed attempt's (which trained nothing).
    assert again.throughput == first.throughput and first.throughput["sequences_per_s"] > 0
