"""The training read path: shuffled batches of windows (audio) or frames (visual) from the store.

Why a clip-block shuffle: each clip is one Zarr chunk. Reading one window or frame at random
decompresses the whole chunk for it (10-20x the bytes used). Instead each epoch reads the clips in
a random order, a block of clips at a time (one decompression per clip and epoch), shuffles all
units (windows or frames) of the block together and serves them as batches: a bounded shuffle
buffer, as WebDataset and Mosaic Streaming use. A block holds a whole number of batches: its
``block_clips`` clips are rounded up to a multiple of ``batch_size / gcd(units per clip,
batch_size)`` (64 stays 64 for 10 windows or 20 frames per clip in batches of 64), so no batch
spans two blocks and blocks can be served by different processes. Randomness, stated exactly: the
clip order is a fresh permutation each epoch; a batch draws from the clips of its block; within the
block the order is uniform. Every unit of the selected clips is served exactly once per epoch;
with ``shuffle=False`` clips and units come in row order.

On an object store each clip read is a request, and a request costs a fixed client time (signing,
HTTP parsing: about 4 ms per request for s3fs on this project's 2-core machine) besides its
latency. ``run_clips`` > 1 trades some randomness for fewer, larger requests: the epoch's
permutation is then of runs of ``run_clips`` neighbouring clips (of the selected rows, in row
order), so a block of 64 clips is 64 / ``run_clips`` runs, each one ranged request to its shard
(``benchmarks/bench_s3.py``: ``run_clips=16`` more than doubles the windows per second from an S3
server). A batch then draws from the block's runs, and neighbouring clips often share a recording
and scene, so raise ``block_clips`` with it (128-256) to keep a block's scenes mixed. Several
ranks deal a run's clips among them, so each rank's request for a run also spans the others'
clips. ``run_clips=1`` (the default) is the clip shuffle above, with the same draws as without the option.

Several processes or replicas (training ranks, DataLoader workers, ``tf.distribute`` replicas): the epoch's clip permutation is cut
disjointly by rank (clip ``i`` of the permutation goes to rank ``i % world_size``), every rank
getting the same number of clips (``balance="pad"`` repeats clips from the start of the
permutation, as PyTorch's DistributedSampler pads; ``"drop"`` leaves the remainder out), hence the
same number of batches. A rank's blocks are then dealt to its workers (block ``b`` to worker ``b %
parts``, :meth:`TrainingBatches.epoch`); each batch is a pure function of (seed, epoch, rank,
batch number), the same whatever the number of workers.

The same plan can be served from arrays held in memory (:class:`~featstore.sources.MemorySource`): identical batches,
the baseline of ``benchmarks/bench_loader.py``. Arrays written before this module read unchanged:
it needs nothing but the one-chunk-per-clip layout every store has.

What is read (an array's units, from the store or from memory) is :mod:`featstore.sources`.
Framework-neutral: :class:`TrainingBatches` yields numpy ``(x, y)``; :func:`featstore.tfdata.tf_dataset`
adapts it to ``tf.data`` (:func:`featstore.tfdata.tf_distributed_dataset` for ``tf.distribute``),
:class:`featstore.torch.StoreDataset` to PyTorch's DataLoader.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from featstore.augment import augment_draws, augment_images, mix, mix_labels, mixup_draws, with_deltas
from featstore.errors import ConfigError
from featstore.sources import StoreSource, Units
from featstore.store import Store

#: Clips read per shuffle block: the shuffle buffer holds about this many clips' units
#: (64 x 20 frames of 224x224x3 uint8 = 193 MB; 64 MEL clips in float16 = 24 MB).
DEFAULT_BLOCK_CLIPS = 64

#: How ranks get equal shares of an epoch's clips: repeat clips from the start, or drop the remainder
BALANCE = ("pad", "drop")

#: Where a batch's augmentation and mixup are applied: by the loader, or on the accelerator from
#: the draws the loader serves (:class:`TrainingBatches`)
AUGMENT_ON = ("host", "device")


def draw_specs(visual: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape of one example's value, dtype) of each draw ``augment_on="device"`` serves:
    the mixup weight and partner, and for frames the crop box and the flip."""
    specs = {"mix_weight": ((), np.dtype(np.float32)), "mix_partner": ((), np.dtype(np.int32))}
    if visual:
        specs.update(crop_box=((4,), np.dtype(np.float32)), flip=((), np.dtype(bool)))
    return specs


@dataclass
class Block:
    """One step of an epoch's plan: read ``rows``, serve ``batches`` ((n, 2) pairs each, numbered
    from ``first`` within the rank's epoch), then drop ``rows``."""

    rows: np.ndarray
    batches: list[np.ndarray]
    first: int


def epoch_plan(pairs: np.ndarray, *, batch_size: int, block_clips: int, rng: np.random.Generator | None,
               rank: int = 0, world_size: int = 1, balance: str = "pad", drop_last: bool = False,
               run_clips: int = 1) -> list[Block]:
    """Rank ``rank``'s clip-block shuffle of ``pairs`` (n, 2) (row, unit); ``rng=None``: row order.

    Every row of ``pairs`` has the same number of units (what :meth:`~featstore.sources.Units.index` makes). The
    clip order (a permutation drawn first from ``rng``, so the same for every rank; of runs of
    ``run_clips`` neighbouring rows when > 1) is dealt to
    ``world_size`` ranks, each getting the same number of clips (``balance``); ``drop_last`` leaves
    out the rank's last batch when it is short.
    """
    grouped = pairs[np.argsort(pairs[:, 0], kind="stable")]
    rows, starts, counts = np.unique(grouped[:, 0], return_index=True, return_counts=True)
    by_row = {int(r): grouped[i : i + n] for r, i, n in zip(rows, starts, counts)}
    order = rows if rng is None else rng.permutation(rows) if run_clips <= 1 else _runs_permuted(rows, run_clips, rng)
    share = len(order) // world_size if balance == "drop" else -(-len(order) // world_size)
    order = np.resize(order, share * world_size)[rank::world_size]  # np.resize repeats from the start
    per_clip = int(counts[0]) if len(counts) else 1
    step = batch_size // math.gcd(per_clip, batch_size)  # clips that fill whole batches
    clips_per_block = -(-block_clips // step) * step
    blocks, first = [], 0
    for start in range(0, len(order), clips_per_block):
        block_rows = order[start : start + clips_per_block]
        buffer = np.concatenate([by_row[int(r)] for r in block_rows])
        if rng is not None:
            buffer = buffer[rng.permutation(len(buffer))]
        batches = [buffer[i : i + batch_size] for i in range(0, len(buffer), batch_size)]
        if drop_last and len(batches[-1]) < batch_size:
            batches.pop()
        if batches:
            blocks.append(Block(block_rows, batches, first))
            first += len(batches)
    return blocks


def _rows_of(plan: list[Block], b: int) -> np.ndarray | None:
    """The rows of block ``b`` of ``plan``, None past its end."""
    return plan[b].rows if b < len(plan) else None


def _runs_permuted(rows: np.ndarray, run_clips: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` (sorted) cut into runs of ``run_clips`` neighbours (the last may be short), the runs
    in a random order, each run's rows in row order."""
    starts = np.arange(0, len(rows), run_clips)
    return np.concatenate([rows[start : start + run_clips] for start in rng.permutation(starts)]) if len(rows) else rows


class TrainingBatches:
    """Batches ``(x (batch, ...) float32, y (batch, classes) float32 one-hot or mixed)`` of ``pairs``.

    Audio ``x`` is (batch, bin, frame, 2): the static channels from the store, for a model that
    derives its deltas itself; with ``Units(deltas=True)``, (batch, bin, frame, 6), deltas computed
    here over the whole batch. Visual ``x`` is (batch, size, size, 3), 0-255, after ``augment`` (random
    resized crop and horizontal flip on the uint8 frames). Mixup (``mixup_alpha``; 0 = off) mixes
    the stored values (audio: before deltas, which are linear in them) into float32.
    A batch is a pure function of (``seed``, epoch, ``rank``, batch number): the same from the store
    or from memory, with any ``workers``, served by any process. Iterating the object serves epoch
    0, 1, 2... in turn.

    ``widen=False`` serves ``x`` in the stored dtype (uint8 frames, float16 spectrograms) for a
    model that casts on the accelerator (PyTorch: ``x.to(device).float()``): a quarter (frames) or
    half (MEL) of the bytes through host memory and to the device, and no float32 batch to write.
    The values are those ``widen=True`` serves, before the cast (which is exact). Mixup and the
    loader's deltas make new float values, so they need ``widen=True``.

    ``augment_on="device"`` keeps the stored dtype with mixup and augmentation too: the loader
    draws them (the same draws as ``"host"``) and serves ``((x, draws), y)``, ``x`` the gathered
    stored values, ``y`` already mixed, ``draws`` a dict of numpy arrays for the accelerator to
    apply (:func:`featstore.models.device_augment.device_augment` in Keras,
    :func:`featstore.torch.augment_on_device` in PyTorch): ``mix_weight`` (batch,) float32 and
    ``mix_partner`` (batch,) int32 (all ones and the identity without mixup), and for frames
    ``crop_box`` (batch, 4) float32, (left, top, right, bottom) in pixels (the whole frame without
    ``augment``), and ``flip`` (batch,) bool. Applied there, the batch equals the host's within
    rounding (the host rounds its crops to uint8 before mixing). Not with the loader's deltas
    (``deltas=True``): a model with a deltas layer derives them after the mixing.

    ``paired``: a second input served beside ``x``, ``paired(pairs)`` (n, ...) for the batch's (n, 2)
    (row, unit) pairs (a cached embedding of each window, for a two-input model): ``x`` is then
    ``(x, paired values as float32)``, both mixed with the same draws as the labels. It is called
    from the loader's threads. Not with ``augment_on="device"``.

    ``workers``: 0 = everything in the calling thread; N >= 1 = N threads assemble batches and N
    threads decompress clips, the next block is read while the current one is served.
    ``rank`` of ``world_size`` training processes: this one's share of every epoch (module
    docstring), equal in batches on every rank (``balance``: "pad" or "drop"); ``drop_last``: leave
    out a short last batch. ``run_clips``: clips shuffled as runs of this many neighbours, fewer
    and larger requests on an object store (module docstring; 1 = every clip on its own).
    """

    def __init__(self, units: Units, source, labels: np.ndarray, n_classes: int, pairs: np.ndarray, *,
                 batch_size: int = 64, shuffle: bool = True, block_clips: int = DEFAULT_BLOCK_CLIPS, seed: int = 0,
                 mixup_alpha: float = 0.0, augment: bool = False, workers: int = 0,
                 rank: int = 0, world_size: int = 1, balance: str = "pad", drop_last: bool = False, run_clips: int = 1,
                 widen: bool = True, augment_on: str = "host", paired: Callable[[np.ndarray], np.ndarray] | None = None):
        if augment_on not in AUGMENT_ON:
            raise ConfigError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}")
        if augment_on == "device" and paired is not None:
            raise ConfigError("a paired input is mixed by the loader: keep augment_on='host'")
        if augment_on == "device" and units.deltas:
            raise ConfigError("augment_on='device' mixes on the accelerator, after which the model derives the deltas: "
                              "set deltas=False (a model with a deltas layer), or keep augment_on='host'")
        if augment_on == "host" and not widen and (mixup_alpha > 0 or units.deltas):
            raise ConfigError("widen=False serves the stored values: mixup and the loader's deltas make float32 ones; "
                              "set mixup_alpha=0 and deltas=False, or keep widen=True")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size - 1, got rank={rank} of world_size={world_size}")
        if balance not in BALANCE:
            raise ConfigError(f"balance must be one of {', '.join(BALANCE)}, got {balance!r}")
        if run_clips < 1:
            raise ConfigError(f"run_clips must be >= 1, got {run_clips}")
        unlabelled = np.unique(pairs[np.asarray(labels)[pairs[:, 0]] < 0, 0])
        if len(unlabelled):  # np.eye(...)[-1] would train them as the last class
            raise ConfigError(f"rows {unlabelled[:5].tolist()} of the clips table have no known label (-1): they cannot be trained on")
        self.units, self.source, self.pairs = units, source, pairs
        self.onehot = np.eye(n_classes, dtype=np.float32)[labels]
        self.batch_size, self.shuffle, self.block_clips, self.seed = batch_size, shuffle, block_clips, seed
        self.mixup_alpha, self.augment, self.workers = mixup_alpha, augment, workers
        self.rank, self.world_size, self.balance, self.drop_last = rank, world_size, balance, drop_last
        self.run_clips, self.widen, self.augment_on, self.paired = run_clips, widen and augment_on == "host", augment_on, paired
        self._epochs = itertools.count()

    @property
    def n_classes(self) -> int:
        return self.onehot.shape[1]

    @property
    def paired_shape(self) -> tuple[int, ...] | None:
        """The shape of one example of the ``paired`` input (None without one); reads one unit."""
        return None if self.paired is None else tuple(np.shape(self.paired(self.pairs[:1]))[1:])

    @property
    def x_dtype(self) -> np.dtype:
        """The dtype of the batches' ``x``: float32, or the stored dtype (``widen=False``, ``augment_on="device"``)."""
        return np.dtype(np.float32) if self.widen else self.units.dtype

    def plan(self, epoch: int) -> list[Block]:
        """This rank's blocks of epoch number ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        return epoch_plan(self.pairs, batch_size=self.batch_size, block_clips=self.block_clips, rng=rng, rank=self.rank,
                          world_size=self.world_size, balance=self.balance, drop_last=self.drop_last, run_clips=self.run_clips)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank and in every epoch)."""
        return sum(len(block.batches) for block in self.plan(0))

    def batch(self, pairs: np.ndarray, epoch: int, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``number`` of ``epoch`` from the units ``pairs`` (their rows loaded)."""
        # numbered across ranks (rank 0 of 1: the batch number itself), so no two ranks mix alike
        rng = np.random.default_rng([self.seed, epoch, number * self.world_size + self.rank])
        raw, y = self.source.take(pairs), self.onehot[pairs[:, 0]]
        if self.augment_on == "device":
            return self._with_draws(raw, y, rng)
        if self.units.visual and self.augment:
            raw = augment_images(raw, rng)
        draws = mixup_draws(len(raw), self.mixup_alpha, rng) if self.mixup_alpha > 0 else None
        if not self.widen:
            x = raw  # C-contiguous as gathered (Units.gather) or augmented
        else:
            # mixup before deltas: deltas are linear, so mixing the 2 static channels gives the same
            # windows as mixing all 6, for a third of the work
            x = mix(raw, draws)
            if self.units.deltas:
                x = with_deltas(x, self.units.frames_per_segment, self.units.delta_width, channels_last=True)
        if self.paired is not None:
            x = (x, mix(self.paired(pairs), draws))
        return x, mix_labels(y, draws)

    def _with_draws(self, raw: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        """``((raw, draws), mixed y)``: the host path's draws, in its order (crops, then mixup)."""
        n, values = len(raw), {}
        if self.units.visual:
            values["crop_box"], values["flip"] = augment_draws(n, *raw.shape[1:3], rng, crop=self.augment, flip=self.augment)
        lam, perm = values["mix_weight"], values["mix_partner"] = mixup_draws(n, self.mixup_alpha, rng)
        draws = {name: np.asarray(values[name], dtype) for name, (_, dtype) in draw_specs(self.units.visual).items()}
        return (raw, draws), mix_labels(y, (lam, perm))

    def epoch(self, epoch: int, part: int = 0, parts: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch number ``epoch``; the shuffle buffer is emptied at its end (or when
        the caller stops early). ``part`` of ``parts``: only blocks ``part``, ``part + parts``, ...
        of the plan (a DataLoader worker's share)."""
        plan = self.plan(epoch)[part::parts]
        try:
            if plan:
                yield from self._threaded(plan, epoch) if self.workers else self._inline(plan, epoch)
        finally:
            for block in plan:
                self.source.release(block.rows)

    def _inline(self, plan: list[Block], epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for b, block in enumerate(plan):
            self.source.load(block.rows, _rows_of(plan, b + 1))  # a remote store's next block arrives meanwhile
            for number, pairs in enumerate(block.batches, block.first):
                yield self.batch(pairs, epoch, number)
            self.source.release(block.rows)

    def _threaded(self, plan: list[Block], epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(self.workers) as assemble:
            loading = reader.submit(self.source.load, plan[0].rows, _rows_of(plan, 1))
            pending: deque = deque()
            releases: deque = deque()  # (batches issued when the block ended, rows to drop)
            served = issued = 0
            for b, block in enumerate(plan):
                loading.result()
                if b + 1 < len(plan):  # read (and on a remote store, the block after it fetched) while b is served
                    loading = reader.submit(self.source.load, plan[b + 1].rows, _rows_of(plan, b + 2))
                for number, pairs in enumerate(block.batches, block.first):
                    pending.append(assemble.submit(self.batch, pairs, epoch, number))
                    issued += 1
                    while len(pending) > 2 * self.workers:
                        yield pending.popleft().result()
                        served += 1
                releases.append((issued, block.rows))
                while releases and releases[0][0] <= served:
                    self.source.release(releases.popleft()[1])
            while pending:
                yield pending.popleft().result()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.epoch(next(self._epochs))

    def detached(self) -> TrainingBatches:
        """These batches over a :meth:`~featstore.sources.StoreSource.view` of the source, sharing the epoch count:
        iterating it serves the next epoch, safely while another iteration is still open."""
        other = copy.copy(self)
        other.source = self.source.view()
        return other

    def shard(self, rank: int, world_size: int, *, batch_size: int | None = None) -> TrainingBatches:
        """The same batches' share of process (or replica) ``rank`` of ``world_size`` (same options,
        ``batch_size`` per rank when given, a :meth:`~featstore.sources.StoreSource.view` of the source); its epochs
        count from 0."""
        shard = self.detached()
        shard.rank, shard.world_size, shard.batch_size = rank, world_size, batch_size or self.batch_size
        shard._epochs = itertools.count()
        return shard


def training_labels(store: Store, rows: np.ndarray) -> np.ndarray:
    """The class index of every clip of the store (-1: no known label), after checking that each
    clip of ``rows`` (the ones to train on) has one: ConfigError naming the first five that have not."""
    labels = store.label_indices(store.clips["label"])
    rows = np.asarray(rows, np.int64)
    unlabelled = [str(c) for c in store.clips["clip_id"].to_numpy()[rows[labels[rows] < 0]]]
    if unlabelled:
        raise ConfigError(f"clips without a known label cannot be trained on: {unlabelled[:5]} "
                          "(give them a label of the store's classes, or a split other than train)")
    return labels


def training_batches(store: Store, input_array: str, *, split: str | None = "train", rows: np.ndarray | None = None,
                     window_s: float | None = None, units_per_clip: int | None = None, deltas: bool = True,
                     **options) -> TrainingBatches:
    """Shuffled training batches of ``input_array`` from the store, numpy out (no TensorFlow needed).

    Clips: ``rows`` of the clips table, or every clip of ``split`` (None: all); only clips done in
    the array are used. ``window_s``: audio window, a whole number of grid segments (default one
    segment). ``deltas`` (audio): append delta and delta-delta channels here (the default, what a
    model without a deltas layer wants); ``False`` serves the static channels only, for models that
    start with :class:`~featstore.models.deltas.SpectrogramDeltas` (what ``train-backbone`` builds).
    ``options``: see :class:`TrainingBatches` (batch_size, shuffle, block_clips, seed,
    mixup_alpha, augment, workers, run_clips, widen, augment_on, and for several training processes rank,
    world_size, balance, drop_last).
    """
    clips = store.clips
    if rows is None:
        rows = np.flatnonzero(np.ones(len(clips), bool) if split is None else clips["split"].to_numpy() == split)
    done = store.done_in(input_array)
    rows = np.asarray(rows, np.int64)[done[rows]]
    labels = training_labels(store, rows)
    if len(rows) == 0:
        raise ConfigError(f"no clips done in {input_array!r} to read")
    units = Units(store, input_array, window_s, deltas=deltas)
    source = StoreSource(store, units, options.get("workers", 0))
    return TrainingBatches(units, source, labels, len(store.classes), units.index(rows, units_per_clip), **options)
