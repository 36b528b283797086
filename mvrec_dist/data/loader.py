"""Per-rank training and evaluation batches from the shards: plans, windows, cursors, loader workers.

One rank owns ``max(loader_workers, 1)`` consumers of the epoch plan (``mvrec_dist.data.plan``).
Each consumer streams its user samples, cuts every training sequence into windows, and emits
batches of ``batch_size_per_worker`` windows; each batch carries the consumer's ``DataCursor``
after it, so a checkpoint records exactly how far every consumer got. Resuming on the same world
size skips exactly that much; on another world size the rest of the epoch is re-planned with
``redistribute`` and a sample cut mid-way keeps its consumed windows skipped.

A task's collate may ask for more than the windows (its ``needs``): ``"times"``, each window's
timestamps (the train ``ts.npy``, cut like the items), and ``"exposures"``, the user's exposure
list (the ``exposures`` split, read alongside with the same chunks: its rows are the train rows), and
``"plays"``, the playing time and duration of each window's interactions and of the user's whole train
sequence (FRAME's input: the train ``play.npy`` / ``duration.npy``). Without needs nothing else is read.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mvrec_dist.config.jobs import TrainJobConfig
from mvrec_dist.data.content_store import ContentStore
from mvrec_dist.data.cursor import DataCursor
from mvrec_dist.data.batch import (EvalBatch, SequenceBatch, collate_eval, collate_train, dummy_batch,
                                   training_windows)
from mvrec_dist.data.manifest import Manifest
from mvrec_dist.data.plan import Chunk, epoch_plan, eval_plan, num_consumers, redistribute, skip_consumed
from mvrec_dist.data.reader import ShardReader

__all__ = ["TrainData", "ConsumerStream", "DataCursor", "load_item_train_counts", "attach_content"]


def load_item_train_counts(manifest: Manifest) -> np.ndarray:
    """``int64 [N+1]`` train-split interactions per item (``stats/item_train_counts.npy``)."""
    from mvrec_dist.data.fs import open_input_file

    with open_input_file(manifest.path(manifest.data["stats"]["item_train_counts"])) as f:
        import io

        counts = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if counts.shape != (manifest.num_items + 1,):
        raise ValueError(f"{manifest.root}: item_train_counts has shape {counts.shape}, expected "
                         f"({manifest.num_items + 1},)")
    return counts.astype(np.int64)


class ConsumerStream:
    """The batches of one consumer: its chunks -> samples -> windows -> ``SequenceBatch``es.

    Args:
        dataset_dir: Dataset directory.
        chunks: The consumer's chunks (already past any consumed prefix).
        consumer: Consumer id (recorded in cursors).
        start: Cursor the stream starts from (samples/windows already consumed are *not* in
            ``chunks`` any more except the partially consumed sample, whose windows are skipped).
        window_skips: Global sample index -> windows to skip (samples cut by a re-plan).
        settings: Batch settings (see ``TrainData._settings``).
    """

    def __init__(self, dataset_dir: str, chunks: Sequence[Chunk], consumer: int, start: DataCursor,
                 window_skips: dict[int, int], settings: dict[str, Any]):
        self.dataset_dir = dataset_dir
        self.chunks = list(chunks)
        self.consumer = consumer
        self.start = start
        self.window_skips = window_skips
        self.s = settings

    def __iter__(self) -> Iterator[SequenceBatch]:
        s = self.s
        needs = s.get("needs") or frozenset()
        members = ({"items.npy", "json"} | ({"ts.npy"} if "times" in needs else set())
                   | ({"play.npy", "duration.npy"} if "plays" in needs else set()))
        reader = ShardReader(self.dataset_dir, "train", members=members)
        exposures = None
        if "exposures" in needs:  # its rows are the train rows: the same chunks read it alongside
            exposures = ShardReader(self.dataset_dir, "exposures", members={"items.npy", "ts.npy"}).iter_chunks(
                self.chunks)
        samples, batches = self.start.samples, self.start.batches
        pending_skip = self.start.windows
        windows: list[np.ndarray] = []
        users: list[int] = []
        origin: list[tuple[int, int]] = []
        sequences: list[np.ndarray] = []  # each window's whole train sequence (a task's collate may read it)
        extras: dict[str, list] = {k: [] for k in needs}
        for g, sample in reader.iter_chunks(self.chunks):
            sequence = sample.members["items.npy"]
            seq_windows = training_windows(sequence, s["max_seq_len"], s["mode"])
            if needs:
                # The same cut of the timestamps gives each window's times.
                seq_times = training_windows(sample.members["ts.npy"], s["max_seq_len"], s["mode"]) \
                    if "times" in needs else None
                seq_plays = None
                if "plays" in needs:  # cut like the items; the collate also reads the whole sequence's
                    play, duration = sample.members["play.npy"], sample.members["duration.npy"]
                    seq_plays = (training_windows(play, s["max_seq_len"], s["mode"]),
                                 training_windows(duration, s["max_seq_len"], s["mode"]), play, duration)
                seen = None
                if exposures is not None:
                    eg, exposed = next(exposures)
                    if eg != g:
                        raise RuntimeError(f"exposures row {eg} read beside train row {g}: the splits disagree")
                    seen = (exposed.members["items.npy"], exposed.members["ts.npy"])
            # Both are absolute counts of this sample's windows already consumed.
            skip = max(pending_skip, self.window_skips.get(g, 0))
            pending_skip = 0
            user = int(sample.members["json"]["user"])
            for w_index in range(skip, len(seq_windows)):
                windows.append(seq_windows[w_index])
                users.append(user)
                origin.append((g, w_index))
                sequences.append(sequence)
                if "times" in needs:
                    extras["times"].append(seq_times[w_index])
                if "exposures" in needs:
                    extras["exposures"].append(seen)
                if "plays" in needs:
                    wp, wd, play, duration = seq_plays
                    extras["plays"].append((wp[w_index], wd[w_index], play, duration))
                if len(windows) == s["batch_size"]:
                    done = w_index + 1 == len(seq_windows)
                    cursor = DataCursor(self.consumer, samples + (1 if done else 0), 0 if done else w_index + 1,
                                        batches + 1)
                    yield self._collate(windows, users, origin, batches, cursor, sequences, extras)
                    windows, users, origin, sequences, batches = [], [], [], [], batches + 1
                    extras = {k: [] for k in needs}
            samples += 1
        if windows:
            yield self._collate(windows, users, origin, batches, DataCursor(self.consumer, samples, 0, batches + 1),
                                sequences, extras)

    def _collate(self, windows: list[np.ndarray], users: list[int], origin: list[tuple[int, int]],
                 batch_index: int, cursor: DataCursor, sequences: list[np.ndarray],
                 extras: dict[str, list] | None = None) -> Any:
        s = self.s
        provenance = np.asarray(origin, dtype=np.int64).reshape(-1, 2)
        if s.get("collate") is not None:  # the task's own batch (TrainData's ``collate``)
            more = {"extras": extras} if s.get("needs") else {}
            batch = s["collate"](windows, users, sequences, provenance, s["epoch"], **more)
            batch.cursor, batch.provenance = cursor, provenance
            return attach_content(batch, s["content"])
        generator = None
        if s["negatives"]:
            # Negatives depend only on (seed, epoch, consumer, batch index): a resume draws the same ones.
            key = f"{s['seed']}/{s['epoch']}/{self.consumer}/{batch_index}".encode()
            generator = torch.Generator().manual_seed(zlib.crc32(key))
        batch = collate_train(windows, users, max_seq_len=s["max_seq_len"], num_items=s["num_items"],
                              negatives=s["negatives"], sampler_probs=s["sampler_probs"], generator=generator,
                              all_items=s["all_items"])
        batch.cursor = cursor
        batch.provenance = provenance
        attach_content(batch, s["content"])
        return batch


def attach_content(batch: SequenceBatch, store: ContentStore | None) -> SequenceBatch:
    """Load the content of ``batch.unique_items`` from ``store`` (each unique item once).

    Sets ``batch.content_mask`` (which unique items have content) and ``batch.content`` (their
    arrays, in order; items without content, the padding id 0 among them, get no row).

    Args:
        batch: A batch on CPU.
        store: The run's content store, or None for an ID-only model (then nothing changes).

    Returns:
        ``batch``.
    """
    if store is None:
        return batch
    ids = batch.unique_items.numpy()
    mask = store.has(ids)
    batch.content_mask = torch.from_numpy(mask)
    batch.content = torch.from_numpy(store.gather(ids[mask]))
    return batch


class _RankDataset(IterableDataset):
    """The consumers of one rank; loader worker ``w`` runs consumer ``w`` of the rank."""

    def __init__(self, streams: list[ConsumerStream]):
        super().__init__()
        self.streams = streams

    def __iter__(self) -> Iterator[SequenceBatch]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        return iter(self.streams[worker])


def _worker_init(_: int) -> None:
    # Loader workers share the rank's cores; one thread each keeps them from oversubscribing.
    torch.set_num_threads(1)


class TrainData:
    """This rank's data: training batches per epoch (resumable), evaluation batches (cached).

    Args:
        cfg: The job config.
        manifest: The dataset manifest.
        rank: This rank.
        world_size: Number of ranks.
        pin_memory: Pin batches for asynchronous host-to-device copies (CUDA).
        content_store: Frames or cached trunk features of the items, for content towers; every
            training batch then carries the content of its unique items (loaded in the loader workers).
        gather: All-gather of a ``[R_r, C]`` tensor over ranks in rank order (``state_dict`` on
            several ranks gathers every consumer's cursor with it).
        collate: A task's own batch from a consumer's windows, run in the loader workers instead of
            ``collate_train`` (picklable): ``collate(windows, users, sequences, provenance, epoch)``
            with each window's whole train sequence and its ``(global sample index, window index)``
            row of ``provenance`` (``int64 [B, 2]``); it returns a ``TensorBatch`` with
            ``unique_items``, whose ``cursor`` and ``provenance`` the stream sets. None: ``SequenceBatch``.
            A collate with a ``needs`` attribute (``{"times", "exposures", "plays"}``) also gets
            ``extras={"times": [each window's timestamps], "exposures": [(items, timestamps) of the
            row's user], "plays": [(window play, window duration, sequence play, sequence duration)]}``
            (module docstring).
    """

    def __init__(self, cfg: TrainJobConfig, manifest: Manifest, *, rank: int, world_size: int,
                 pin_memory: bool = False, content_store: ContentStore | None = None,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 collate: Callable[..., Any] | None = None):
        from mvrec_dist.models.builders import collate_options

        self.cfg = cfg
        self.content_store = content_store
        self.manifest = manifest
        self.rank = rank
        self.world_size = world_size
        self.loader_workers = cfg.data.loader_workers
        self.pin_memory = pin_memory
        self.num_items = manifest.num_items
        self.item_train_counts = load_item_train_counts(manifest)
        self.train_counts = [s.samples for s in manifest.shards("train")]
        # What the loss needs collated (every item, sampled negatives) is decided by the model's config.
        self._collate = collate_options(cfg.model, self.item_train_counts)
        self._task_collate = collate
        self._eval_cache: dict[str, list[EvalBatch]] = {}
        self._gather = gather
        self._loaded: dict[str, Any] | None = None
        self._epoch = 0
        self._cursors: dict[int, DataCursor] = {}
        self._plan: list[list[Chunk]] | None = None
        self._skips: dict[int, int] = {}

    @property
    def consumers_per_rank(self) -> int:
        """Consumers (loader workers, or 1 when reading in-process) of each rank."""
        return max(self.loader_workers, 1)

    def _settings(self, epoch: int) -> dict[str, Any]:
        return {"max_seq_len": self.cfg.data.max_seq_len, "mode": self.cfg.data.train_windows,
                "batch_size": self.cfg.batch_size_per_worker, "num_items": self.num_items,
                "negatives": self._collate["negatives"], "sampler_probs": self._collate["sampler_probs"],
                "all_items": self._collate["all_items"], "seed": self.cfg.train.seed, "epoch": epoch,
                "content": self.content_store, "collate": self._task_collate,
                "needs": frozenset(getattr(self._task_collate, "needs", ()))}

    def canonical_plan(self, epoch: int, world_size: int, loader_workers: int) -> list[list[Chunk]]:
        """The epoch's plan for a run of ``world_size`` ranks with ``loader_workers`` workers each."""
        return epoch_plan(self.train_counts, epoch=epoch, seed=self.cfg.train.seed, shuffle=self.cfg.data.shuffle,
                          shuffle_block=self.cfg.data.shuffle_block,
                          num_consumers=num_consumers(world_size, loader_workers))

    def resume_plan(self, epoch: int, cursors: Sequence[DataCursor], saved_plan: list[list[dict]] | None,
                    saved_world: int, saved_workers: int,
                    window_skips: dict[int, int]) -> tuple[list[list[Chunk]], list[DataCursor], dict[int, int],
                                                            bool]:
        """Every consumer's plan for (the rest of) an epoch, its start cursor, and window skips.

        Args:
            epoch: The epoch.
            cursors: Saved cursors of the epoch (empty at an epoch start).
            saved_plan: The saved plan when it was not canonical (after an earlier re-plan).
            saved_world: World size the cursors refer to.
            saved_workers: Loader workers the cursors refer to.
            window_skips: Saved window skips (global sample index -> windows).

        Returns:
            ``(plans, start cursors, window skips, replanned)``; plans and cursors are for *this* run's
            consumers; ``replanned`` says the plan is not the canonical one (it must be saved).
        """
        mine = num_consumers(self.world_size, self.loader_workers)
        if not cursors:
            plans = self.canonical_plan(epoch, self.world_size, self.loader_workers)
            return plans, [DataCursor(c, 0, 0, 0) for c in range(mine)], {}, False
        old_plans = ([[Chunk.from_dict(d) for d in part] for part in saved_plan] if saved_plan is not None
                     else self.canonical_plan(epoch, saved_world, saved_workers))
        by_consumer = {c.consumer: c for c in cursors}
        if len(old_plans) != len(by_consumer):
            raise ValueError(f"checkpoint has cursors of {len(by_consumer)} consumers for a plan of {len(old_plans)}")
        if len(old_plans) == mine and saved_world == self.world_size:
            return old_plans, [by_consumer[c] for c in range(mine)], dict(window_skips), saved_plan is not None
        # Another world size: the partially consumed sample of each old consumer stays in the stream,
        # with its consumed windows recorded as a skip on its global index.
        skips = dict(window_skips)
        consumed = []
        for c, plan in enumerate(old_plans):
            cur = by_consumer[c]
            consumed.append(cur.samples)
            if cur.windows:
                rest = skip_consumed(plan, cur.samples)
                g = int(rest[0].indices()[0])
                skips[g] = max(skips.get(g, 0), cur.windows)
        plans = redistribute(old_plans, consumed, mine)
        return plans, [DataCursor(c, 0, 0, 0) for c in range(mine)], skips, True

    # ------------------------------------------------------------------ the stream and its state
    def train_batches(self, epoch: int) -> Iterator[SequenceBatch]:
        """This rank's training batches for (the rest of) ``epoch``, in a deterministic order.

        Starts where ``load_state_dict`` left the stream when the loaded state is of this epoch
        (on any world size or loader-worker count), at the epoch's start otherwise. Call
        ``record(batch)`` after each batch's step ran, so ``state_dict`` knows what was consumed.
        """
        saved = self._loaded if self._loaded is not None and self._loaded.get("epoch") == epoch else None
        self._loaded = None
        if saved is None:
            cursors, plan, world, workers, skips = [], None, self.world_size, self.loader_workers, {}
        else:
            cursors = [DataCursor.from_dict(c) for c in saved.get("cursors", [])]
            plan, skips = saved.get("plan"), {int(k): v for k, v in saved.get("window_skips", {}).items()}
            world, workers = int(saved.get("world_size", 1)), int(saved.get("loader_workers", 0))
        plans, starts, skips, replanned = self.resume_plan(epoch, cursors, plan, world, workers, skips)
        per_rank = self.consumers_per_rank
        self._epoch, self._skips = epoch, skips
        self._plan = plans if replanned else None
        self._cursors = {c.consumer: c for c in starts[self.rank * per_rank:(self.rank + 1) * per_rank]}
        return self._stream(epoch, plans, starts, skips)

    def record(self, batch: SequenceBatch | None) -> None:
        """Note that ``batch`` (a batch of ``train_batches``; None for a dummy) was trained on."""
        if batch is not None and batch.cursor is not None:
            self._cursors[batch.cursor.consumer] = batch.cursor

    def end_epoch(self) -> None:
        """The epoch in progress is finished: the stream's state is the start of the next one."""
        self._epoch += 1
        self._cursors, self._plan, self._skips = {}, None, {}

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, as JSON-able data (collective mid-epoch: every rank's cursors are gathered).

        Returns:
            ``epoch``; ``cursors`` of every consumer of every rank (empty at an epoch boundary);
            ``plan`` (the consumers' chunks when not the epoch's canonical plan, after a resume on
            another world size); ``window_skips``; the ``world_size`` and ``loader_workers`` the
            cursors refer to.
        """
        cursors: list[DataCursor] = []
        if self._cursors:
            rows = torch.tensor([[c.consumer, c.samples, c.windows, c.batches] for c in self._cursors.values()],
                                dtype=torch.long).reshape(-1, 4)
            if self.world_size > 1:
                if self._gather is None:
                    raise RuntimeError("TrainData.state_dict on several ranks needs the gather collective")
                rows = self._gather(rows).cpu()
            cursors = sorted((DataCursor(consumer=r[0], samples=r[1], windows=r[2], batches=r[3])
                              for r in rows.tolist()), key=lambda c: c.consumer)
        return {"epoch": self._epoch, "cursors": [c.to_dict() for c in cursors],
                "plan": [[c.to_dict() for c in part] for part in self._plan] if self._plan is not None else None,
                "window_skips": {str(k): v for k, v in self._skips.items()},
                "world_size": self.world_size, "loader_workers": self.loader_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()`` output (of any world size); empty means a fresh start."""
        self._loaded = dict(state) if state else None
        if self._loaded is not None:
            self._epoch = int(self._loaded.get("epoch", 0))

    def describe_state(self) -> str:
        """One phrase about a loaded state, for the resume message."""
        if not self._loaded or not self._loaded.get("cursors"):
            return "at an epoch start"
        return (f"{len(self._loaded['cursors'])} consumer cursors, written by "
                f"{self._loaded.get('world_size', 1)} ranks")

    def _stream(self, epoch: int, plans: list[list[Chunk]], starts: list[DataCursor],
                window_skips: dict[int, int]) -> Iterator[SequenceBatch]:
        """The batches of this rank's consumers from ``starts`` on."""
        per_rank = self.consumers_per_rank
        settings = self._settings(epoch)
        streams = []
        for w in range(per_rank):
            c = self.rank * per_rank + w
            start = starts[c]
            chunks = skip_consumed(plans[c], start.samples) if start.samples else plans[c]
            streams.append(ConsumerStream(self.manifest.root, chunks, c, start, window_skips, settings))
        if self.loader_workers == 0:
            return iter(streams[0])
        loader = DataLoader(_RankDataset(streams), batch_size=None, num_workers=self.loader_workers,
                            prefetch_factor=self.cfg.data.prefetch_batches, pin_memory=self.pin_memory,
                            worker_init_fn=_worker_init, persistent_workers=False)
        return iter(loader)

    def dummy_batch(self) -> SequenceBatch:
        """A batch without targets for a rank whose share of the epoch is used up."""
        batch = dummy_batch(self.cfg.data.max_seq_len, num_items=self.num_items, all_items=self._collate["all_items"])
        return attach_content(batch, self.content_store)

    def estimated_steps_per_epoch(self) -> int:
        """Steps of one epoch, estimated from the manifest's counts (for schedules and ETAs)."""
        users = self.manifest.num_users
        train = int(self.manifest.counts["interactions"]["train"])
        if self.cfg.data.train_windows == "last":
            windows = users
        else:
            windows = (train - users) / self.cfg.data.max_seq_len + users / 2
        return max(1, int(np.ceil(windows / self.cfg.train.batch_size)))

    def eval_batches(self, split: str) -> list[EvalBatch]:
        """This rank's slice of ``split`` (valid or test) as evaluation batches, built once and cached."""
        if split not in self._eval_cache:
            counts = [s.samples for s in self.manifest.shards(split)]
            chunks = eval_plan(counts, num_consumers=self.world_size)[self.rank]
            reader = ShardReader(self.manifest.root, split, members={"history.npy", "target.npy", "json"},
                                  manifest=self.manifest)
            size = self.cfg.eval.batch_size
            histories, targets, users = [], [], []
            for _, sample in reader.iter_chunks(chunks):
                histories.append(sample.members["history.npy"])
                targets.append(int(sample.members["target.npy"][0]))
                users.append(int(sample.members["json"]["user"]))
            # Users sorted by history length, each batch trimmed to its longest history: the user
            # encoders are causal and right-padded, so the state at the last real item is unchanged,
            # and most MicroLens histories are shorter than L (median 5 of 10 on MicroLens-50K).
            max_len = self.cfg.data.max_seq_len
            order = sorted(range(len(users)), key=lambda i: min(len(histories[i]), max_len))
            batches = []
            for lo in range(0, len(order), size):
                idx = order[lo:lo + size]
                batch = collate_eval([histories[i] for i in idx], [targets[i] for i in idx], [users[i] for i in idx],
                                     max_seq_len=max_len)
                width = int(batch.lengths.max())
                batch.history = batch.history[:, :width].contiguous()
                batches.append(batch)
            self._eval_cache[split] = batches
        return self._eval_cache[split]
