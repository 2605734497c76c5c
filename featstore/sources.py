"""What the training loader reads: an array's training units, from the store or from memory.

:class:`Units` says how a per-clip array splits into units (frames, or audio windows of whole grid
segments). :class:`StoreSource` reads them one whole clip chunk at a time and holds a block's clips
while their units are served; :class:`MemorySource` gathers them from arrays held in memory, the
same units, the baseline of ``benchmarks/bench_loader.py``. :mod:`featstore.loader` plans the
epochs over either.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from featstore.chunks import ClipReader
from featstore.errors import ConfigError
from featstore.store import Store


class Units:
    """How the per-clip array ``path`` splits into training units.

    Visual (``.../rgb``): unit = one frame, (size, size, 3) uint8. Audio: unit = a window of ``k``
    grid segments (``window_s``), (bin, k * frames_per_segment, channel) static channels, channels
    last. ``deltas``: the loader appends delta and delta-delta channels per batch, (bin, frame,
    3 * channel), for models without a :class:`~featstore.models.deltas.SpectrogramDeltas` layer
    (and for frameworks that want them precomputed); without, the model derives them.
    ``count`` units per clip; ``dtype``: the stored dtype.
    """

    def __init__(self, store: Store, path: str, window_s: float | None = None, *, deltas: bool = True):
        prov, array = store.provenance(path), store.array(path)
        params, shape = prov.params, array.shape
        self.path, self.visual, self.deltas = path, prov.modality == "visual", False
        self.dtype = np.dtype(array.dtype)
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

    def gather(self, values: np.ndarray, clips: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Units ``units[i]`` of clips ``clips[i]`` of ``values`` (clip, ...): (n, ...) in the stored
        dtype, :meth:`of_clips`' units, copied once. C-contiguous, except windows with ``deltas``
        (channels first, which :func:`~featstore.augment.with_deltas` reads as they come).

        Stereo windows without deltas (every spectrogram the stages write) are gathered by a
        compiled loop that reads both channels' rows of each bin in step and writes them
        interleaved, channels last, in one pass: numpy's gather keeps the clips' layout (channels
        outermost), and its copy to channels last after it is a second pass over the batch (2.7
        against 1.3 ms for 64 float16 windows of 128 x 72 x 2 on this project's CPU, ad-hoc probe).
        """
        clips, units = np.asarray(clips, np.int64), np.asarray(units, np.int64)
        if self.visual or self.deltas:
            return self.of_clips(values)[clips, units]
        n, c, b, t = values.shape
        if c != 2 or not values.flags.c_contiguous:
            return np.ascontiguousarray(self.of_clips(values)[clips, units])
        bits = f"u{values.dtype.itemsize}"  # numba has no float16: the bits are copied
        out = np.empty((len(clips), b, self.width, c), bits)
        _stereo_gather_kernel()(values.reshape(-1).view(bits), t, b, clips, units * self.width, self.width, out.reshape(-1))
        return out.view(values.dtype)

    def index(self, rows: np.ndarray, units_per_clip: int | None = None) -> np.ndarray:
        """The units of ``rows`` used per epoch, (n, 2) int64 (row, unit): all, or ``units_per_clip`` evenly spaced."""
        units = np.arange(self.count) if not units_per_clip else np.unique(np.linspace(0, self.count - 1, units_per_clip).round().astype(int))
        return np.stack(np.meshgrid(np.asarray(rows, np.int64), units, indexing="ij"), axis=-1).reshape(-1, 2)


@lru_cache(maxsize=1)
def _stereo_gather_kernel():
    """The compiled gather of :meth:`Units.gather` (numba, a librosa dependency; compiled on first
    use for each width of value, cached on disk): windows of ``width`` frames starting at frame
    ``starts[i]`` of clips ``clips[i]`` of ``flat``, (clip, 2, bin, frame) C-ordered and flattened,
    written into ``out``, (n, bin, width, 2) flattened."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def gather(flat, frames, bins, clips, starts, width, out):  # pragma: no cover - compiled
        plane = bins * frames  # one channel of a clip
        o = 0
        for i in range(clips.shape[0]):
            first = clips[i] * 2 * plane + starts[i]
            for b in range(bins):
                row = first + b * frames
                left, right = flat[row : row + width], flat[row + plane : row + plane + width]  # 1-D slices: the loop vectorises
                for f in range(width):
                    out[o] = left[f]
                    out[o + 1] = right[f]
                    o += 2

    return gather


@dataclass
class _Slab:
    """The clips of one :meth:`StoreSource.load`: ``values`` (clip, ...), ``rows_held`` of them not
    yet released."""

    values: np.ndarray
    rows_held: int


class StoreSource:
    """Units read from the store, one whole clip chunk at a time, held while a block needs them.

    Clips are read by a :class:`~featstore.chunks.ClipReader` (array opened once; featstore's layout
    decoded without zarr's per-read overhead) into one buffer per :meth:`load` (a block's clips),
    a *slab* reused once all its clips are released: steady-state reading touches no fresh memory,
    and a batch's units are gathered from their slab by one numpy indexing call, which copies
    outside the GIL (not a Python loop per unit, which holds it). ``workers`` threads decompress
    clips in parallel (numcodecs releases the GIL); they start on the first read, in the process
    that reads (a thread pool does not survive a fork). ``bytes_decoded`` counts the decompressed
    bytes.

    On a remote store a block's clips are fetched first, all requests at once
    (:meth:`ClipReader.fetch`), then decoded by those threads; :meth:`load` starts the next
    block's fetch before decoding the current one.
    """

    def __init__(self, store: Store, units: Units, workers: int = 0):
        self.reader, self.units = ClipReader(store.array(units.path)), units
        self.clip_ids = store.clips["clip_id"].to_numpy()
        self.workers, self._pool, self._pid = workers, None, None
        self.cache: dict[int, np.ndarray] = {}  # row -> its clip's values, a row of a slab
        self.slot_of: dict[int, tuple[int, int]] = {}  # row -> (slab id, its index in the slab)
        self.slabs: dict[int, _Slab] = {}  # slab id -> the slab, while any of its rows is held
        self.free: list[np.ndarray] = []  # slabs whose rows were all released, reused by the next loads
        self.bytes_decoded = 0
        #: whether clips' bytes are fetched first (a remote store, featstore's layout), then decoded
        self.fetches = self.reader.direct and not self.reader.local
        self._fetcher: tuple[int, ThreadPoolExecutor] | None = None  # (pid, thread) of prefetch
        self._prefetched: tuple[int, list[int], object] | None = None  # (pid, rows, future of their bytes)

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

    def _prefetch(self, rows: np.ndarray) -> None:
        """Start fetching the bytes of ``rows`` (the next block's) from the remote store in the
        background; :meth:`load` of the same rows then waits only for what is still in flight."""
        if self._fetcher is None or self._fetcher[0] != os.getpid():
            self._fetcher = (os.getpid(), ThreadPoolExecutor(1))
        rows = list(dict.fromkeys(int(r) for r in rows))
        self._prefetched = (os.getpid(), rows, self._fetcher[1].submit(self.reader.fetch, rows))

    def load(self, rows: np.ndarray, next_rows: np.ndarray | None = None) -> None:
        """Decompress the chunks of ``rows`` into the cache (one thread loads at a time).

        On a remote store the bytes of every clip are fetched at once (:meth:`ClipReader.fetch`:
        one request per run of neighbouring clips of a shard), or were in the background; then
        the fetch of ``next_rows`` (the next block's) starts, before these are decompressed, so
        the connection stays busy while this block is decoded and served."""
        rows = list(dict.fromkeys(int(r) for r in rows if int(r) not in self.cache))
        data = [None] * len(rows)
        if self.fetches:
            prefetched, self._prefetched = self._prefetched, None
            # a fetch started before a fork has no thread in this process: fetched again instead
            mine = prefetched is not None and prefetched[0] == os.getpid()
            got = dict(zip(prefetched[1], prefetched[2].result())) if mine else {}
            rest = [row for row in rows if row not in got]
            got.update(zip(rest, self.reader.fetch(rest) if rest else []))
            data = [got[row] for row in rows]
            if next_rows is not None:
                self._prefetch(next_rows)
        if not rows:
            return
        slab = self._spare_slab(len(rows))

        def decode(first: int, step: int) -> None:
            for k in range(first, len(rows), step):
                self._read(rows[k], slab[k], data[k])

        pool = self.pool
        if pool:  # one task per thread (every workers-th clip): a task per clip costs two thread hand-offs a clip
            list(pool.map(decode, range(self.workers), [self.workers] * self.workers))
        else:
            decode(0, 1)
        self.slabs[id(slab)] = _Slab(slab, len(rows))
        for k, row in enumerate(rows):
            self.bytes_decoded += slab[k].nbytes
            self.cache[row], self.slot_of[row] = slab[k], (id(slab), k)

    def _spare_slab(self, n: int) -> np.ndarray:
        """(n, per-clip shape) rows of a released slab (the largest; views share the spare list), or a new slab."""
        free = self.free
        while free:
            slab = free.pop(max(range(len(free)), key=lambda i: len(free[i])))
            if len(slab) >= n:
                return slab[:n]
        return np.empty((n, *self.reader.shape), self.reader.dtype)

    def view(self) -> StoreSource:
        """A source with its own held clips over the same reader, threads and spare buffers: for
        iterations that overlap in one process (replicas' pipelines; tf.data starts an epoch's
        iterator before the last one is dropped), so one releasing its clips takes none from another."""
        other = copy.copy(self)
        other._pool, other._pid = self.pool, self._pid  # one set of decompression threads for all views
        other.cache, other.slot_of, other.slabs, other.bytes_decoded = {}, {}, {}, 0
        other._prefetched = None  # a fetch started for another view's next block stays its own
        return other

    def release(self, rows: np.ndarray) -> None:
        """Drop ``rows`` (their units were all taken, as copies); a slab none of whose rows is held is kept for reuse."""
        for row in rows:
            if self.cache.pop(int(row), None) is None:
                continue
            slab_id, _ = self.slot_of.pop(int(row))
            held = self.slabs[slab_id]
            held.rows_held -= 1
            if held.rows_held == 0:
                del self.slabs[slab_id]
                values = held.values
                self.free.append(values if values.base is None else values.base)  # the whole buffer, when this load used part of it

    def take(self, pairs: np.ndarray) -> np.ndarray:
        """(n, 2) (row, unit) of loaded rows -> (n, ...) units in the stored dtype (a copy, :meth:`Units.gather`)."""
        located = [self.slot_of[row] for row in pairs[:, 0].tolist()]
        slabs = {slab for slab, _ in located}
        if len(slabs) == 1:  # a block's rows: one gather, outside the GIL
            return self.units.gather(self.slabs[slabs.pop()].values, np.array([k for _, k in located]), pairs[:, 1])
        # rows of several loads (a clip repeated in two blocks held at once)
        return np.concatenate([self.units.gather(self.slabs[slab].values, [k], [unit]) for (slab, k), unit in zip(located, pairs[:, 1].tolist())])


class MemorySource:
    """Units gathered directly from ``values`` (clip, ...) held in memory: the benchmark's baseline."""

    def __init__(self, values: np.ndarray, units: Units):
        self.values, self.units = values, units

    def load(self, rows: np.ndarray, next_rows: np.ndarray | None = None) -> None:
        pass

    def view(self) -> MemorySource:
        return self

    def release(self, rows: np.ndarray) -> None:
        pass

    def take(self, pairs: np.ndarray) -> np.ndarray:
        return self.units.gather(self.values, pairs[:, 0], pairs[:, 1])
