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

Several processes or replicas (training ranks, DataLoader workers, ``tf.distribute`` replicas): the epoch's clip permutation is cut
disjointly by rank (clip ``i`` of the permutation goes to rank ``i % world_size``), every rank
getting the same number of clips (``balance="pad"`` repeats clips from the start of the
permutation, as PyTorch's DistributedSampler pads; ``"drop"`` leaves the remainder out), hence the
same number of batches. A rank's blocks are then dealt to its workers (block ``b`` to worker ``b %
parts``, :meth:`TrainingBatches.epoch`); each batch is a pure function of (seed, epoch, rank,
batch number), the same whatever the number of workers.

The same plan can be served from arrays held in memory (:class:`MemorySource`): identical batches,
the baseline of ``benchmarks/bench_loader.py``. Arrays written before this module read unchanged:
it needs nothing but the one-chunk-per-clip layout every store has.

Framework-neutral: :class:`TrainingBatches` yields numpy ``(x, y)``; :func:`tf_dataset` adapts it to
``tf.data`` (:func:`tf_distributed_dataset` for ``tf.distribute``), :class:`featstore.torch.StoreDataset`
to PyTorch's DataLoader.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from featstore.augment import augment_images, mixup, with_deltas
from featstore.chunks import ClipReader
from featstore.errors import ConfigError
from featstore.store import Store

#: Clips read per shuffle block: the shuffle buffer holds about this many clips' units
#: (64 x 20 frames of 224x224x3 uint8 = 193 MB; 64 MEL clips in float16 = 24 MB).
DEFAULT_BLOCK_CLIPS = 64

#: How ranks get equal shares of an epoch's clips: repeat clips from the start, or drop the remainder
BALANCE = ("pad", "drop")


class Units:
    """How the per-clip array ``path`` splits into training units.

    Visual (``.../rgb``): unit = one frame, (size, size, 3) uint8. Audio: unit = a window of ``k``
    grid segments (``window_s``), (bin, k * frames_per_segment, channel) static channels, channels
    last. ``deltas``: the loader appends delta and delta-delta channels per batch, (bin, frame,
    3 * channel), for models without a :class:`~featstore.models.deltas.SpectrogramDeltas` layer
    (and for frameworks that want them precomputed); without, the model derives them.
    ``count`` units per clip.
    """

    def __init__(self, store: Store, path: str, window_s: float | None = None, *, deltas: bool = True):
        prov = store.provenance(path)
        params, shape = prov.params, store.array(path).shape
        self.path, self.visual, self.deltas = path, prov.modality == "visual", False
        if self.visual:
            self.count, self.width, self.example_shape = shape[1], None, tuple(shape[2:])
            return
        if params["store_deltas"]:
            raise ConfigError(f"{path} stores deltas; train from an array of static channels")
        window_s = store.segment_s if window_s is None else window_s
        k = int(round(window_s / store.segment_s))
        if k < 1 or abs(k * store.segment_s - window_s) > 1e-9 or k > store.n_segments:
            raise ConfigError(f"window_s={window_s} must be a whole number of {store.segment_s} s segments, at most the clip")
        self.deltas = deltas
        self.frames_per_segment = int(params["frames_per_segment"])
        self.delta_width = int(params["audio"]["delta_width"])
        self.count, self.width = store.n_segments // k, k * self.frames_per_segment
        #: shape of one ``x`` example: (bin, frame, channel), 3x the stored channels with ``deltas``
        self.example_shape = (shape[2], self.width, (3 if deltas else 1) * shape[1])

    def of_clips(self, values: np.ndarray) -> np.ndarray:
        """(clip, ...) array -> (clip, unit, ...) view: frames as they are, audio cut into windows
        ((clip, unit, channel, bin, frame) with ``deltas``, which wants channels first; else
        (clip, unit, bin, frame, channel))."""
        if self.visual:
            return values
        n, c, b = values.shape[:3]
        windows = np.moveaxis(values[..., : self.count * self.width].reshape(n, c, b, self.count, self.width), 3, 1)
        return windows if self.deltas else np.moveaxis(windows, 2, -1)

    def index(self, rows: np.ndarray, units_per_clip: int | None = None) -> np.ndarray:
        """The units of ``rows`` used per epoch, (n, 2) int64 (row, unit): all, or ``units_per_clip`` evenly spaced."""
        units = np.arange(self.count) if not units_per_clip else np.unique(np.linspace(0, self.count - 1, units_per_clip).round().astype(int))
        return np.stack(np.meshgrid(np.asarray(rows, np.int64), units, indexing="ij"), axis=-1).reshape(-1, 2)


class StoreSource:
    """Units read from the store, one whole clip chunk at a time, held while a block needs them.

    Clips are read by a :class:`~featstore.chunks.ClipReader` (array opened once; featstore's layout
    decoded without zarr's per-read overhead) into clip buffers that are reused once released, so
    steady-state reading touches no fresh memory. ``workers`` threads decompress clips in parallel
    (numcodecs releases the GIL); they start on the first read, in the process that reads (a thread
    pool does not survive a fork). ``bytes_decoded`` counts the decompressed bytes.

    On a remote store a block's clips are fetched first, all requests at once
    (:meth:`ClipReader.fetch`), then decoded by those threads; :meth:`prefetch` starts the next
    block's fetch while the current one is served.
    """

    def __init__(self, store: Store, units: Units, workers: int = 0):
        self.reader, self.units = ClipReader(store.array(units.path)), units
        self.clip_ids = store.clips["clip_id"].to_numpy()
        self.workers, self._pool, self._pid = workers, None, None
        self.cache: dict[int, np.ndarray] = {}  # row -> its clip's buffer
        self.units_of: dict[int, np.ndarray] = {}  # row -> (unit, ...) view of that buffer
        self.free: list[np.ndarray] = []  # released clip buffers, reused by the next reads
        self.bytes_decoded = 0
        #: whether clips' bytes are fetched first (a remote store, featstore's layout), then decoded
        self.fetches = self.reader.direct and not self.reader.local
        self._fetcher: tuple[int, ThreadPoolExecutor] | None = None  # (pid, thread) of prefetch
        self._prefetched: tuple[list[int], object] | None = None  # (rows, future of their bytes)

    def _read(self, row: int, buffer: np.ndarray, data: bytes | None = None) -> np.ndarray:
        """Clip ``row`` decoded into ``buffer``: read here, or from its fetched bytes ``data``."""
        values = self.reader.decode(row, data, buffer) if self.fetches else self.reader.read(row, out=buffer)
        # an unwritten clip reads as all fill value (NaN): a sparse sample of the values finds it
        if values.dtype.kind == "f" and np.isnan(values.reshape(-1)[:: max(1, values.size // 4096)]).any():
            raise ConfigError(f"clip {self.clip_ids[row]!r} is not written in {self.units.path!r} (run the stage that makes it)")
        return values

    @property
    def pool(self) -> ThreadPoolExecutor | None:
        """The decompression threads of this process (None with ``workers`` <= 1)."""
        if self.workers > 1 and self._pid != os.getpid():
            self._pool, self._pid = ThreadPoolExecutor(self.workers), os.getpid()
        return self._pool

    def prefetch(self, rows: np.ndarray) -> None:
        """On a remote store, start fetching the bytes of ``rows`` (the next block's) in the
        background; :meth:`load` of the same rows then waits only for what is still in flight."""
        if not self.fetches:
            return
        if self._fetcher is None or self._fetcher[0] != os.getpid():
            self._fetcher = (os.getpid(), ThreadPoolExecutor(1))
        rows = list(dict.fromkeys(int(r) for r in rows))
        self._prefetched = (rows, self._fetcher[1].submit(self.reader.fetch, rows))

    def load(self, rows: np.ndarray) -> None:
        """Decompress the chunks of ``rows`` into the cache (one thread loads at a time).

        On a remote store the bytes of every clip are fetched at once (:meth:`ClipReader.fetch`:
        one request per run of neighbouring clips of a shard), or were by :meth:`prefetch`."""
        rows = list(dict.fromkeys(int(r) for r in rows if int(r) not in self.cache))
        data = [None] * len(rows)
        if self.fetches:
            prefetched, self._prefetched = self._prefetched, None
            got = dict(zip(prefetched[0], prefetched[1].result())) if prefetched is not None else {}
            rest = [row for row in rows if row not in got]
            got.update(zip(rest, self.reader.fetch(rest) if rest else []))
            data = [got[row] for row in rows]
        buffers = [self.free.pop() if self.free else np.empty(self.reader.shape, self.reader.dtype) for _ in rows]
        pool = self.pool
        for row, values in zip(rows, pool.map(self._read, rows, buffers, data) if pool else map(self._read, rows, buffers, data)):
            self.bytes_decoded += values.nbytes
            self.units_of[row] = self.units.of_clips(values[None])[0]
            self.cache[row] = values

    def view(self) -> StoreSource:
        """A source with its own held clips over the same reader, threads and spare buffers: for
        iterations that overlap in one process (replicas' pipelines; tf.data starts an epoch's
        iterator before the last one is dropped), so one releasing its clips takes none from another."""
        other = copy.copy(self)
        other._pool, other._pid = self.pool, self._pid  # one set of decompression threads for all views
        other.cache, other.units_of, other.bytes_decoded = {}, {}, 0
        other._prefetched = None  # a fetch started for another view's next block stays its own
        return other

    def release(self, rows: np.ndarray) -> None:
        """Drop ``rows`` (their units were all taken, as copies) and keep their buffers for reuse."""
        for row in rows:
            self.units_of.pop(int(row), None)
            buffer = self.cache.pop(int(row), None)
            if buffer is not None:
                self.free.append(buffer)

    def take(self, pairs: np.ndarray) -> np.ndarray:
        """(n, 2) (row, unit) of loaded rows -> (n, ...) units in the stored dtype (a copy)."""
        return np.stack([self.units_of[row][unit] for row, unit in pairs.tolist()])


class MemorySource:
    """Units gathered directly from ``values`` (clip, ...) held in memory: the benchmark's baseline."""

    def __init__(self, values: np.ndarray, units: Units):
        self.values = units.of_clips(values)

    def prefetch(self, rows: np.ndarray) -> None:
        pass

    def load(self, rows: np.ndarray) -> None:
        pass

    def view(self) -> MemorySource:
        return self

    def release(self, rows: np.ndarray) -> None:
        pass

    def take(self, pairs: np.ndarray) -> np.ndarray:
        return self.values[pairs[:, 0], pairs[:, 1]]


@dataclass
class Block:
    """One step of an epoch's plan: read ``rows``, serve ``batches`` ((n, 2) pairs each, numbered
    from ``first`` within the rank's epoch), then drop ``rows``."""

    rows: np.ndarray
    batches: list[np.ndarray]
    first: int


def epoch_plan(pairs: np.ndarray, *, batch_size: int, block_clips: int, rng: np.random.Generator | None,
               rank: int = 0, world_size: int = 1, balance: str = "pad", drop_last: bool = False) -> list[Block]:
    """Rank ``rank``'s clip-block shuffle of ``pairs`` (n, 2) (row, unit); ``rng=None``: row order.

    Every row of ``pairs`` has the same number of units (what :meth:`Units.index` makes). The
    clip order (a permutation drawn first from ``rng``, so the same for every rank) is dealt to
    ``world_size`` ranks, each getting the same number of clips (``balance``); ``drop_last`` leaves
    out the rank's last batch when it is short.
    """
    grouped = pairs[np.argsort(pairs[:, 0], kind="stable")]
    rows, starts, counts = np.unique(grouped[:, 0], return_index=True, return_counts=True)
    by_row = {int(r): grouped[i : i + n] for r, i, n in zip(rows, starts, counts)}
    order = rng.permutation(rows) if rng is not None else rows
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

    ``workers``: 0 = everything in the calling thread; N >= 1 = N threads assemble batches and N
    threads decompress clips, the next block is read while the current one is served.
    ``rank`` of ``world_size`` training processes: this one's share of every epoch (module
    docstring), equal in batches on every rank (``balance``: "pad" or "drop"); ``drop_last``: leave
    out a short last batch.
    """

    def __init__(self, units: Units, source, labels: np.ndarray, n_classes: int, pairs: np.ndarray, *,
                 batch_size: int = 64, shuffle: bool = True, block_clips: int = DEFAULT_BLOCK_CLIPS, seed: int = 0,
                 mixup_alpha: float = 0.0, augment: bool = False, workers: int = 0,
                 rank: int = 0, world_size: int = 1, balance: str = "pad", drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size - 1, got rank={rank} of world_size={world_size}")
        if balance not in BALANCE:
            raise ConfigError(f"balance must be one of {', '.join(BALANCE)}, got {balance!r}")
        self.units, self.source, self.pairs = units, source, pairs
        self.onehot = np.eye(n_classes, dtype=np.float32)[labels]
        self.batch_size, self.shuffle, self.block_clips, self.seed = batch_size, shuffle, block_clips, seed
        self.mixup_alpha, self.augment, self.workers = mixup_alpha, augment, workers
        self.rank, self.world_size, self.balance, self.drop_last = rank, world_size, balance, drop_last
        self._epochs = itertools.count()

    @property
    def n_classes(self) -> int:
        return self.onehot.shape[1]

    def plan(self, epoch: int) -> list[Block]:
        """This rank's blocks of epoch number ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        return epoch_plan(self.pairs, batch_size=self.batch_size, block_clips=self.block_clips, rng=rng, rank=self.rank,
                          world_size=self.world_size, balance=self.balance, drop_last=self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank and in every epoch)."""
        return sum(len(block.batches) for block in self.plan(0))

    def batch(self, pairs: np.ndarray, epoch: int, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``number`` of ``epoch`` from the units ``pairs`` (their rows loaded)."""
        # numbered across ranks (rank 0 of 1: the batch number itself), so no two ranks mix alike
        rng = np.random.default_rng([self.seed, epoch, number * self.world_size + self.rank])
        raw = self.source.take(pairs)
        if self.units.visual and self.augment:
            raw = augment_images(raw, rng)
        # mixup before deltas: deltas are linear, so mixing the 2 static channels gives the same
        # windows as mixing all 6, for a third of the work
        x, y = mixup(raw, self.onehot[pairs[:, 0]], self.mixup_alpha, rng)
        if self.units.deltas:
            x = with_deltas(x, self.units.frames_per_segment, self.units.delta_width, channels_last=True)
        return x, y

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
            self.source.load(block.rows)
            if b + 1 < len(plan):  # a remote store's next block arrives while this one is served
                self.source.prefetch(plan[b + 1].rows)
            for number, pairs in enumerate(block.batches, block.first):
                yield self.batch(pairs, epoch, number)
            self.source.release(block.rows)

    def _threaded(self, plan: list[Block], epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(self.workers) as assemble:
            loading = reader.submit(self.source.load, plan[0].rows)
            pending: deque = deque()
            releases: deque = deque()  # (batches issued when the block ended, rows to drop)
            served = issued = 0
            for b, block in enumerate(plan):
                loading.result()
                if b + 1 < len(plan):
                    loading = reader.submit(self.source.load, plan[b + 1].rows)
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
        """These batches over a :meth:`StoreSource.view` of the source, sharing the epoch count:
        iterating it serves the next epoch, safely while another iteration is still open."""
        other = copy.copy(self)
        other.source = self.source.view()
        return other

    def shard(self, rank: int, world_size: int, *, batch_size: int | None = None) -> TrainingBatches:
        """The same batches' share of process (or replica) ``rank`` of ``world_size`` (same options,
        ``batch_size`` per rank when given, a :meth:`StoreSource.view` of the source); its epochs
        count from 0."""
        shard = self.detached()
        shard.rank, shard.world_size, shard.batch_size = rank, world_size, batch_size or self.batch_size
        shard._epochs = itertools.count()
        return shard


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
    mixup_alpha, augment, workers, and for several training processes rank, world_size, balance,
    drop_last).
    """
    clips = store.clips
    if rows is None:
        rows = np.flatnonzero(np.ones(len(clips), bool) if split is None else clips["split"].to_numpy() == split)
    done = clips["clip_id"].isin(list(store.ledger(input_array).entries)).to_numpy()
    rows = np.asarray(rows, np.int64)[done[rows]]
    labels = store.label_indices(clips["label"])
    unlabelled = [str(c) for c in clips["clip_id"].to_numpy()[rows[labels[rows] < 0]]]
    if unlabelled:
        raise ConfigError(f"clips without a known label cannot be trained on: {unlabelled[:5]}")
    if len(rows) == 0:
        raise ConfigError(f"no clips done in {input_array!r} to read")
    units = Units(store, input_array, window_s, deltas=deltas)
    source = StoreSource(store, units, options.get("workers", 0))
    return TrainingBatches(units, source, labels, len(store.classes), units.index(rows, units_per_clip), **options)


def tf_dataset(batches: TrainingBatches):
    """A ``tf.data.Dataset`` of ``batches``: each pass over it (each Keras epoch) serves the next epoch
    (through :meth:`TrainingBatches.detached`: Keras opens the next pass before dropping the last)."""
    import tensorflow as tf

    signature = (
        tf.TensorSpec((None, *batches.units.example_shape), tf.float32),
        tf.TensorSpec((None, batches.n_classes), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(lambda: iter(batches.detached()), output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(2)


def tf_distributed_dataset(strategy, batches: TrainingBatches):
    """``batches`` (``batch_size`` = the global batch) for the replicas of a ``tf.distribute`` ``strategy``.

    One input pipeline per replica (``InputReplicationMode.PER_REPLICA``, which ``MirroredStrategy``
    supports): pipeline ``i`` of ``n`` serves the share of rank ``i`` of ``n`` (:meth:`shard`) in
    batches of ``batch_size / n``, which must divide evenly. Every replica gets the same number of
    batches (``balance``), so the dataset's cardinality is the steps per epoch Keras counts, and the
    replicas read their clips in parallel.
    """
    import tensorflow as tf

    def make(context):
        per_replica = context.get_per_replica_batch_size(batches.batch_size)
        return tf_dataset(batches.shard(context.input_pipeline_id, context.num_input_pipelines, batch_size=per_replica))

    options = tf.distribute.InputOptions(experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return strategy.distribute_datasets_from_function(make, options)
