"""The one training loop: epochs of steps, validation, early stopping, checkpoints, the final test.

Everything distributed is behind ``ParallelModel`` (``mvrec_dist.parallel``); what is learnt and how
it is scored is the ``Task`` (``mvrec_dist.tasks``); data comes from the task's ``TaskData``, whose
stream state the checkpoint holds as one opaque entry; checkpoints from ``Checkpointer``.
Differences between runs are config, never copies of this loop.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.tasks import Task, build_task
from mvrec_dist.train.metrics_log import MetricsLog, format_eta
from mvrec_dist.train.state import TrainState

__all__ = ["Trainer", "FitResult", "peak_memory"]


def peak_memory(model: Any) -> dict[str, float]:
    """Peak resident memory of every rank so far, in MiB (collective: one tiny all-gather).

    Args:
        model: The ``ParallelModel`` (its ``ctx`` and ``gather_rows``).

    Returns:
        ``peak_rss_mib_rank<r>`` per rank and ``peak_rss_mib_max``; on CUDA also
        ``peak_gpu_mib_rank<r>`` / ``peak_gpu_mib_max`` (``torch.cuda.max_memory_allocated``).
    """
    import resource

    import torch

    row = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024]  # Linux reports KiB
    cuda = model.ctx.is_cuda
    if cuda:
        row.append(torch.cuda.max_memory_allocated(model.ctx.device) >> 20)
    peaks = model.gather_rows(torch.tensor([row], dtype=torch.long)).tolist()
    out = {f"peak_rss_mib_rank{r}": float(p[0]) for r, p in enumerate(peaks)}
    out["peak_rss_mib_max"] = max(out.values())
    if cuda:
        gpu = {f"peak_gpu_mib_rank{r}": float(p[1]) for r, p in enumerate(peaks)}
        out.update(gpu, peak_gpu_mib_max=max(gpu.values()))
    return out


@dataclass(frozen=True)
class FitResult:
    """What a finished run reports."""

    state: TrainState
    """Final training state."""
    valid: dict[str, float]
    """Best validation metrics."""
    test: dict[str, float] | None
    """Test metrics of the best-validation weights (None when not requested)."""
    throughput: dict[str, float]
    """Training sequences/s and targets/s (whole run, all ranks)."""
    memory: dict[str, float]
    """Peak resident memory per rank in MiB (``peak_rss_mib_rank<r>``) and their maximum."""
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    """Test metrics of the task's reference rankers by name (``Task.baselines``; empty without a test)."""


class Trainer:
    """Runs a job's training loop on one rank (every rank runs the same loop in lock step).

    Args:
        cfg: The job config.
        model: The ``ParallelModel``.
        data: The ``TrainData`` of this rank.
        checkpointer: Saves/loads checkpoints (collective).
        log: Metrics and progress sink.
        state: Starting state (fresh, or restored from a checkpoint).
        report: Called with metrics at every report point (Ray Train's ``report``); at a checkpoint
            they name it (the checkpointer writes it; Ray Train is never handed checkpoints).
        task: The run's ``Task`` (built from ``cfg`` when None).
        after_checkpoint: Called on every rank once a checkpoint is committed and recorded (the run's logs are
            copied to remote storage then: ``train.run_logs``).
    """

    def __init__(self, cfg: TrainJobConfig, model: Any, data: Any, checkpointer: Any, log: MetricsLog,
                 state: TrainState, report: Callable[[dict], None], task: Task | None = None,
                 after_checkpoint: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.model = model
        self.data = data
        self.task = task if task is not None else build_task(cfg)
        data.load_state_dict(state.data)
        self.checkpointer = checkpointer
        self.log = log
        self.state = state
        self.report = report
        self.after_checkpoint = after_checkpoint
        self._epoch_summary: dict[str, float] = {}  # the last finished epoch's loss, rate and memory
        self._audit = None
        if cfg.data.audit_dir:
            os.makedirs(cfg.data.audit_dir, exist_ok=True)
            # Line-buffered: after a crash the file holds every step it reported.
            self._audit = open(os.path.join(cfg.data.audit_dir, f"consumed-rank{model.ctx.rank}.jsonl"), "a",
                               buffering=1, encoding="utf-8")

    def _hold_if_asked(self, step: int) -> None:
        """Fault tests put a failure at an exact step: while ``<audit_dir>/hold-after-step-<step>`` exists, every
        rank waits after that step (and its checkpoint, when one is due), having left ``...-<step>.rank<r>``
        beside it. Without it a kill aimed at step N of a fast run lands wherever the run has got to by then."""
        if self._audit is None:
            return
        hold = os.path.join(self.cfg.data.audit_dir, f"hold-after-step-{step}")
        if not os.path.exists(hold):
            return
        with open(f"{hold}.rank{self.model.ctx.rank}", "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        while os.path.exists(hold):
            time.sleep(0.05)

    def _patience_spent(self) -> bool:
        """Early stopping: ``train.patience`` validations in a row without a new best."""
        return self.cfg.train.patience > 0 and self.state.evals_since_best >= self.cfg.train.patience

    # ------------------------------------------------------------------ public
    def fit(self) -> FitResult:
        """Train until ``train.epochs``, early stopping or ``train.max_steps``; then test once."""
        cfg, st = self.cfg, self.state
        run_start = time.perf_counter() - st.elapsed_seconds
        # A run resumed after it had decided to stop (its test crashed, say) goes straight to the test:
        # the decision is in the state, and another epoch would be work the uninterrupted run never did.
        stop = self._patience_spent() or bool(cfg.train.max_steps and st.step >= cfg.train.max_steps)
        self.task.refresh(self.model, self.data, st.step)  # at the start and at a resume (Task.refresh)
        while st.epoch < cfg.train.epochs and not stop:
            if self._train_epoch(run_start):
                break  # max_steps, mid-epoch
            if (st.epoch + 1) % cfg.eval.every_epochs == 0 or st.epoch + 1 == cfg.train.epochs:
                improved = self._validate(run_start)
                stop = stop or self._patience_spent()
            else:
                improved = False
            st.epoch += 1
            st.epoch_step = 0
            st.epoch_loss_sum = 0.0
            self.data.end_epoch()
            st.elapsed_seconds = time.perf_counter() - run_start
            if cfg.train.checkpoint_at_epoch_end or improved:
                self._checkpoint(is_best=improved)
            else:
                self.report(self._report_metrics())
            if cfg.train.max_steps and st.step >= cfg.train.max_steps:
                stop = True
        st.elapsed_seconds = time.perf_counter() - run_start
        if self._audit is not None:
            self._audit.close()
        test, baselines = self._test() if cfg.train.test_after_training else (None, {})
        best_valid = next((h["metrics"] for h in st.history if h["step"] == st.best_step), {})
        seconds = max(st.train_seconds, 1e-9)
        throughput = {"sequences_per_s": st.sequences / seconds, "targets_per_s": st.targets / seconds}
        memory = peak_memory(self.model)
        self.log.record("memory", st.step, memory)
        return FitResult(state=st, valid=best_valid, test=test, throughput=throughput, memory=memory,
                         baselines=baselines)

    # ------------------------------------------------------------------ epochs
    def _train_epoch(self, run_start: float) -> bool:
        """Run (the rest of) the current epoch. Returns True when ``max_steps`` stopped it early."""
        cfg, st = self.cfg, self.state
        batches = self.data.train_batches(st.epoch)
        expected = max(1, self.data.estimated_steps_per_epoch())
        epoch_start, seq0, tgt0 = time.perf_counter(), st.sequences, st.targets
        # Steps go on while any rank has data (ranks out of it train on dummy batches); each is yielded
        # after its update, so a batch's cursor is recorded only once its step ran.
        steps = self.model.train_steps(batches, self.data.dummy_batch, self.task.count)
        # A failure mid-epoch leaves the bar open: MetricsLog.close() closes it.
        bar = self.log.bar(f"epoch {st.epoch}", expected, unit="step", initial=st.epoch_step)
        t0 = time.perf_counter()
        for batch, stats in steps:
            targets, sequences = stats.num_targets, stats.sequences
            self.data.record(batch)
            if self._audit is not None and getattr(batch, "provenance", None) is not None:
                self._audit.write(json.dumps({"epoch": st.epoch, "step": st.step + 1,
                                              "rows": batch.provenance.tolist()}) + "\n")
            st.step += 1
            st.epoch_step += 1
            st.epoch_loss_sum += stats.loss  # in the state: a resumed epoch's mean covers its steps before the resume
            st.train_seconds += time.perf_counter() - t0
            st.sequences += sequences
            st.targets += targets
            now = time.perf_counter()
            rate = (st.sequences - seq0) / max(now - epoch_start, 1e-9)
            bar.update(st.epoch_step, f"loss {stats.loss:.4f}, {rate:,.0f} seq/s")
            if st.step % cfg.train.log_every_steps == 0:
                target_rate = (st.targets - tgt0) / max(now - epoch_start, 1e-9)
                self.log.record("train", st.step, {"loss": stats.loss, "epoch": st.epoch, "sequences_per_s": rate,
                                                   "targets_per_s": target_rate, "sequences": st.sequences,
                                                   "targets": st.targets, "train_seconds": st.train_seconds})
            self.task.refresh(self.model, self.data, st.step)
            if cfg.train.checkpoint_every_steps and st.step % cfg.train.checkpoint_every_steps == 0:
                st.elapsed_seconds = time.perf_counter() - run_start
                self._checkpoint(is_best=False)
            self._hold_if_asked(st.step)
            if cfg.train.max_steps and st.step >= cfg.train.max_steps:
                st.data = self.data.state_dict()
                steps.close()  # batches a pipeline fetched ahead are not run (their cursors were not recorded)
                bar.close()
                return True
            t0 = time.perf_counter()
        bar.close()  # before the epoch's line: the line replaces the bar
        seconds = time.perf_counter() - epoch_start
        rate = (st.sequences - seq0) / max(seconds, 1e-9)
        target_rate = (st.targets - tgt0) / max(seconds, 1e-9)
        memory = peak_memory(self.model)
        self._epoch_summary = {"loss": st.epoch_loss_sum / max(st.epoch_step, 1), "sequences_per_s": rate,
                               "targets_per_s": target_rate,
                               **{k: v for k, v in memory.items() if k in ("peak_rss_mib_max", "peak_gpu_mib_max")}}
        self.log.record("epoch", st.step, {"epoch": st.epoch, "loss": self._epoch_summary["loss"],
                                           "sequences_per_s": rate, "targets_per_s": target_rate, "seconds": seconds,
                                           "steps": st.epoch_step})
        self.log.record("memory", st.step, {"epoch": st.epoch, **memory})
        gpu = f", peak GPU {memory['peak_gpu_mib_max']:,.0f} MiB" if "peak_gpu_mib_max" in memory else ""
        self.log.progress(f"epoch {st.epoch} done: {st.epoch_step} steps in {seconds:.1f}s ({rate:,.0f} seq/s, "
                          f"{target_rate:,.0f} targets/s, mean loss {self._epoch_summary['loss']:.4f}, peak RSS "
                          f"{memory['peak_rss_mib_max']:,.0f} MiB{gpu})", always=True)
        return False

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, split: str) -> dict[str, float]:
        return self.task.evaluate(self.model, self.data, split, self.log)

    def _shown(self, metrics: dict[str, float]) -> str:
        return " ".join(f"{k} {v:.4f}" for k, v in self.task.metric_values(metrics).items())

    def _validate(self, run_start: float) -> bool:
        cfg, st = self.cfg, self.state
        metrics = self._evaluate("valid")
        select = self.task.select_metric
        value = metrics[select.name]
        # best_step < 0: nothing validated yet (best_metric's start value says nothing about direction).
        improved = not math.isnan(value) and (st.best_step < 0 or select.better(value, st.best_metric))
        elapsed = time.perf_counter() - run_start
        if improved:
            st.best_metric, st.best_epoch, st.best_step = value, st.epoch, st.step
            st.evals_since_best = 0
            st.seconds_to_best = elapsed
        else:
            st.evals_since_best += 1
        st.history.append({"epoch": st.epoch, "step": st.step, "metrics": metrics, "elapsed_s": elapsed})
        self.log.record("valid", st.step, {**metrics, "epoch": st.epoch})
        shown = self._shown(metrics)
        # Epoch time so far (training and validation, over resumes too) times the epochs left: an upper
        # bound, since early stopping may end the run sooner.
        left = cfg.train.epochs - st.epoch - 1
        eta = f", run eta <= {format_eta(elapsed / (st.epoch + 1) * left)}" if left > 0 else ""
        noun = self.task.examples_key
        self.log.progress(f"valid epoch {st.epoch}: {shown} ({metrics[noun]:,} {noun} in {metrics['seconds']:.1f}s"
                          f"{eta}){' *best*' if improved else ''}", always=True)
        return improved

    def _test(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """The test metrics of the best weights, and the task's baselines on the same users."""
        st = self.state
        if st.best_step >= 0 and st.best_step != st.step:
            self.checkpointer.load_best(self.model, st)
        metrics = self._evaluate("test")
        self.log.record("test", st.step, {**metrics, "best_epoch": st.best_epoch})
        baselines = self.task.baselines(self.model, self.data, "test")
        for name, values in baselines.items():
            self.log.record(f"baseline/{name}/test", st.step, values)
        self.log.progress(f"test (weights of epoch {st.best_epoch}): {self._shown(metrics)}", always=True)
        return metrics, baselines

    # ------------------------------------------------------------------ checkpoints
    def _report_metrics(self) -> dict:
        st = self.state
        last = st.history[-1]["metrics"] if st.history else {}
        return {"step": st.step, "epoch": st.epoch, "best_metric": st.best_metric,
                **{f"valid/{k}": v for k, v in self.task.metric_values(last).items()},
                **{f"train/{k}": v for k, v in self._epoch_summary.items()}}

    def _checkpoint(self, *, is_best: bool) -> None:
        st = self.state
        st.data = self.data.state_dict()  # collective mid-epoch: every rank is here
        name = self.checkpointer.save(self.model, st)
        self.report({**self._report_metrics(), "checkpoint": name, "is_best": is_best})
        self.log.record("checkpoint", st.step, {"epoch": st.epoch, "best": is_best})
        self.after_checkpoint()
        self.log.progress(f"checkpoint {name}{' (best)' if is_best else ''}")
