"""The stage runner: maps a stage's per-clip work over the clips not yet done, on dask.

Every batch stage (extract-audio, extract-frames, embed) is a :class:`Stage`: its parameters, its
output arrays and one module-level function ``compute(task, params) -> ClipResult``. The runner does
the rest, once for all stages:

* creates the output arrays at their final shape from the driver (DESIGN 7.2), refusing when they
  exist with other parameters (:class:`featstore.ParamsMismatch`) unless ``overwrite``;
* takes the arrays' writer lock (a second writer is refused, naming the holder);
* skips clips whose ledger entry matches the clip's input fingerprint (resume, skip-if-done);
* runs ``compute`` on dask workers (a local cluster of ``workers`` processes, an existing cluster at
  ``scheduler``, or in-process with ``workers=0``, and by default when the work is small: see
  :func:`local_workers`), at most a few tasks per worker in flight so memory stays bounded whatever
  the clip count; tasks are planned by shard (:func:`plan_tasks`), so each task owns whole shards
  of every output and writes them itself, once each, returning only checksums and notes, never the
  arrays; a task larger than a worker's share of the run is computed in parts by several workers
  and written by one (:func:`split_task`);
* marks a clip done in the ledger only after its task reports every chunk written; records a clip
  whose task raised as a failure (stage, clip_id, exception type, message) and goes on;
* flushes ledgers and the failures record atomically every couple of seconds and at the end.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore.errors import ConfigError, MediaError
from featstore.clips import resolve_source
from featstore.coords import Coordinate
from featstore.lock import WriterLock
from featstore.shards import clips_per_shard, group_rows, unit_clips, write_clips
from featstore.store import Store, open_array

#: Environment of local dask workers: one thread per BLAS / FFT / numba pool, since the cluster
#: already runs one process per core; zarr settings reach workers only this way (DESIGN 7.7).
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "ZARR_ASYNC__CONCURRENCY": "4",
}
#: Dask configuration of the local clusters the runner starts: the nanny's default
#: ``MALLOC_TRIM_THRESHOLD_=65536`` is unset for their workers. Setting any malloc threshold turns off
#: glibc's adaptive mmap threshold, so every array over 128 KiB (a block of STFT frames, a decoded
#: clip) becomes a fresh mmap whose pages fault in on first touch and go back to the system when it is
#: freed: 12,000 page faults and 1.7x the CPU per MEL clip on a worker. glibc's adaptive thresholds
#: keep those buffers in the heap, as in-process.
LOCAL_CLUSTER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
#: Tasks in flight per worker: enough to hide scheduling latency, small enough to bound memory.
IN_FLIGHT_PER_WORKER = 3
#: Seconds of clips to do at most for a run with the default workers to stay in-process: starting
#: a local cluster costs each worker process its imports (seconds), more than it saves on less work
#: (extract-audio and extract-frames of 1 s evaluation clips: about 5 ms each per clip on one core).
IN_PROCESS_CLIP_S = 600.0
#: Least seconds between ledger flushes (env FEATSTORE_FLUSH_S; longer when a flush is slow, see
#: _execute): a crash loses at most that much work.
FLUSH_EVERY_S = float(os.environ.get("FEATSTORE_FLUSH_S", "2.0"))
#: A flush slower than FLUSH_EVERY_S / FLUSH_SPACING is followed by FLUSH_SPACING times its own cost
#: without one, so flushes stay under 1 / FLUSH_SPACING of a run at any store size.
FLUSH_SPACING = 20
#: Seconds a run waits with tasks pending and no dask worker alive before it stops with an error
#: naming the scheduler (env FEATSTORE_LOST_CLUSTER_S).
LOST_CLUSTER_S = float(os.environ.get("FEATSTORE_LOST_CLUSTER_S", "60"))


@dataclass(frozen=True)
class OutputSpec:
    """One array a stage writes: ``compute`` returns its per-clip value under ``name``."""

    name: str
    path: str
    per_clip_shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    #: Parameters of this array only (e.g. which feature); fingerprinted with the stage's params.
    params: dict[str, Any] = field(default_factory=dict)
    #: The stage config that makes exactly this array (``StageConfig.to_dict``), recorded in its
    #: provenance outside the fingerprint, so the array can be rebuilt.
    config: dict[str, Any] | None = None
    #: Values along per-clip axes, by dimension name (:mod:`featstore.coords`; the store adds the
    #: clip ids, segment times and class names itself).
    coords: dict[str, Coordinate] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipTask:
    """What a worker gets for one clip: its index, id, clips-table row, the dataset root, and the
    store's URL and fsspec options (where the worker writes, and reads upstream arrays)."""

    clip_index: int
    clip_id: str
    row: dict[str, Any]
    dataset_root: str
    store_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def open_store(self) -> Store:
        """The task's store, opened once per worker process (again when clips were appended since)."""
        store = _OPEN_STORES.get(self.store_url)
        if store is None or self.clip_index >= store.n_clips:
            store = _OPEN_STORES[self.store_url] = Store(self.store_url, self.storage_options)
        return store

    def source(self, column: str) -> str:
        """Real absolute path of the clip's ``audio_path`` or ``video_path`` ("" when it has none).

        Checked again here, as the stage opens it: a symlink swapped in after ingest that leads out
        of the dataset root is refused (:class:`~featstore.errors.UnsafePath`, the clip's failure).
        """
        rel = self.row.get(column) or ""
        return resolve_source(self.dataset_root, rel, f"clip {self.clip_id} {column}") if rel else ""


@dataclass
class ClipResult:
    """What ``compute`` returns: one array per output name, and notes recorded in the ledger."""

    arrays: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A batch stage: parameters, outputs, per-clip work and the per-clip input fingerprint.

    ``compute(task, params, names)`` returns a :class:`ClipResult` holding an array for each output
    name in ``names``; it must be a module-level function (workers import it by name).
    """

    name: str
    params: dict[str, Any]
    outputs: tuple[OutputSpec, ...]
    compute: Callable[[ClipTask, dict[str, Any], tuple[str, ...]], ClipResult]
    input_fingerprint: Callable[[dict[str, Any]], str]
    #: Clips per dask task, at least (a task holds whole shards, so a sharded stage's tasks may be
    #: larger). Batching amortises the few milliseconds each task costs the scheduler and the
    #: client, and lets a clip's write overlap the next clip's compute (see iter_clips). A lost
    #: worker's batch is simply recomputed (tasks are idempotent).
    clips_per_task: int = 1
    #: "audio" or "visual": what the outputs' values come from (recorded in their provenance).
    modality: str = ""
    #: The stage's code version (``StageConfig.code_version``), part of the outputs' fingerprints.
    code_version: int = 1
    #: Optional batched work, used by the workers in place of ``compute`` when set:
    #: ``compute_batch(tasks, params, names)`` takes an iterable of tasks and yields, in any order,
    #: one ``(task, ClipResult | Exception)`` per task (an Exception is that clip's failure alone).
    #: A module-level function, or a ``functools.partial`` of one.
    compute_batch: Callable[[Iterable[ClipTask], dict[str, Any], tuple[str, ...]], Iterator[tuple[ClipTask, ClipResult | Exception]]] | None = None


@dataclass
class StageReport:
    """Summary of a run; ``to_json()`` is what ``--json`` prints."""

    stage: str
    arrays: list[str]
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "array": self.arrays,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------ worker
_OPEN_ARRAYS: dict[tuple[str, str, str], Any] = {}
_OPEN_STORES: dict[str, Store] = {}
_THREADPOOLS: dict[int, Any] = {}  # threadpoolctl controller by len(sys.modules) when it was made


def _single_threaded_blas():
    """Limit BLAS to one thread. Scanning the loaded libraries costs ~5 ms, so the controller is
    kept, and made again only after new modules were imported (they may bring another BLAS)."""
    from threadpoolctl import ThreadpoolController

    n_modules = len(sys.modules)
    if n_modules not in _THREADPOOLS:
        _THREADPOOLS.clear()
        _THREADPOOLS[n_modules] = ThreadpoolController()
    return _THREADPOOLS[n_modules].limit(limits=1, user_api="blas")


def _open_array(task: ClipTask, path: str, fingerprint: str):
    """The array's writing handle, opened once per worker process and array version (again when
    the array grew since, clips having been appended)."""
    key = (task.store_url, path, fingerprint)
    if key not in _OPEN_ARRAYS or task.clip_index >= _OPEN_ARRAYS[key].shape[0]:
        _OPEN_ARRAYS[key] = open_array(task.store_url, path, task.storage_options)
    return _OPEN_ARRAYS[key]


def _failure(task: ClipTask, exc: Exception) -> dict[str, Any]:
    return {"ok": False, "clip_id": task.clip_id, "error_type": type(exc).__name__, "message": str(exc)}


@dataclass(frozen=True)
class Batched:
    """A stage's ``compute_batch``, handed to the workers in place of its per-clip ``compute``."""

    compute_batch: Callable


def _compute_clip(compute, params, outputs, task: ClipTask) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Compute one clip's outputs, cast and checked: ({path: value}, notes). Raises for a bad clip.

    A float output with NaN or Inf is refused, so the store never holds non-finite values. BLAS runs
    single-threaded here, so that results are bitwise the same in-process and on any worker (a
    multi-threaded matrix product sums in another order); parallelism comes from the workers.
    """
    with _single_threaded_blas():
        result = compute(task, params, tuple(spec.name for spec, _ in outputs))
    return _checked(outputs, result)


def _checked(outputs, result: ClipResult) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A clip's result cast to its outputs' dtypes and checked (shape, finite): ({path: value}, notes)."""
    values = {}
    for spec, _ in outputs:
        value = np.ascontiguousarray(result.arrays[spec.name]).astype(spec.dtype, copy=False)
        if value.shape != spec.per_clip_shape:
            raise MediaError(f"{spec.path}: computed shape {value.shape}, expected {spec.per_clip_shape}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise MediaError(f"{spec.path}: non-finite values (NaN or Inf) in the computed features")
        values[spec.path] = value
    return values, result.info


def _write_unit(outputs, computed: list[tuple[ClipTask, dict[str, np.ndarray], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Write the computed clips of one unit (whole shards of every output); return their results.

    A sharded output's shards are each written once, whole, with the rows not computed here read
    back and kept (:func:`featstore.shards.write_clips`).
    """
    if not computed:
        return []
    for spec, fingerprint in outputs:
        array = _open_array(computed[0][0], spec.path, fingerprint)
        write_clips(array, [task.clip_index for task, _, _ in computed], [values[spec.path] for _, values, _ in computed])
    return [
        {"ok": True, "clip_id": task.clip_id, "crc32": {path: zlib.crc32(value.tobytes()) for path, value in values.items()}, "info": info}
        for task, values, info in computed
    ]


def _unit_of(outputs, task: ClipTask) -> int:
    """Clips per unit of work of ``outputs`` (whole shards of each; 1 when none is sharded)."""
    return unit_clips([_open_array(task, spec.path, fingerprint) for spec, fingerprint in outputs])


def iter_clips(compute, params: dict[str, Any], outputs, tasks: Iterable[ClipTask]) -> Iterator[dict[str, Any]]:
    """Compute each clip of ``tasks`` and write its whole chunks; yield each clip's result once written.

    A result holds checksums and notes, or the exception's type and message (a bad clip never
    raises, it becomes a recorded failure). See :func:`write_computed` for how the clips are
    written.
    """
    return write_computed(outputs, _computed(compute, params, outputs, tasks))


def write_computed(outputs, computed: Iterable[tuple[ClipTask, tuple | dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Write computed clips (each ``(task, (values, notes))``, or ``(task, failure)``) a unit at a
    time, yielding each clip's result once written, and each failure as it comes.

    A unit is one clip, or the clips of whole shards when the outputs are sharded (clips come
    ordered by row, grouped so; see :func:`plan_tasks`). Writes are behind by one unit: unit k is
    compressed and written on a background thread while unit k+1 is computed (decoders, FFTs and
    zstd release the GIL), at most one write pending, so at most two units are in memory. A clip's
    result is yielded only after its write finished, so the driver never marks an unwritten clip.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None  # (computed clips, future) of the write in flight
        unit, key, done = None, None, []
        for task, result in computed:
            unit = unit or _unit_of(outputs, task)
            if done and task.clip_index // unit != key:
                if pending is not None:
                    yield from _written(*pending)
                pending = (done, writer.submit(_write_unit, outputs, done))
                done = []
            key = task.clip_index // unit
            if isinstance(result, dict):
                yield result
                continue
            values, info = result
            done.append((task, values, info))
        if pending is not None:
            yield from _written(*pending)
        if done:
            yield from _written(done, writer.submit(_write_unit, outputs, done))


def _computed(compute, params, outputs, tasks: Iterable[ClipTask]) -> Iterator[tuple[ClipTask, tuple | dict[str, Any]]]:
    """Each task with its checked values and notes, or its failure (see :func:`_failure`): one
    clip at a time, or through the stage's batched work (``compute`` a :class:`Batched`)."""
    if isinstance(compute, Batched):
        for task, result in compute.compute_batch(tasks, params, tuple(spec.name for spec, _ in outputs)):
            try:
                if isinstance(result, Exception):
                    raise result
                yield task, _checked(outputs, result)
            except Exception as exc:  # noqa: BLE001
                yield task, _failure(task, exc)
        return
    for task in tasks:
        try:
            yield task, _compute_clip(compute, params, outputs, task)
        except Exception as exc:  # noqa: BLE001 - every per-clip error becomes a recorded failure
            yield task, _failure(task, exc)


def _written(computed, write) -> list[dict[str, Any]]:
    """The results of a unit's finished write (a failed write is each of its clips' failure)."""
    try:
        return write.result()
    except Exception as exc:  # noqa: BLE001
        return [_failure(task, exc) for task, _, _ in computed]


def run_clips(compute, params: dict[str, Any], outputs, tasks: list[ClipTask]) -> list[dict[str, Any]]:
    """Worker side, one dask task: :func:`iter_clips` over a batch, returning after every write."""
    return list(iter_clips(compute, params, outputs, tasks))


def compute_part(compute, params: dict[str, Any], outputs, tasks: list[ClipTask]) -> list[tuple[ClipTask, tuple | dict[str, Any]]]:
    """Worker side, one part of a split task (see :func:`split_task`): its clips computed and
    checked, not written; the task's writer (:func:`write_parts`) writes them."""
    return list(_computed(compute, params, outputs, tasks))


def write_parts(outputs, *parts: list[tuple[ClipTask, tuple | dict[str, Any]]]) -> list[dict[str, Any]]:
    """Worker side, the one writer of a split task: the clips its parts computed, written whole
    shards at a time (:func:`write_computed`)."""
    return list(write_computed(outputs, itertools.chain.from_iterable(parts)))


# ------------------------------------------------------------------------------------------ driver
def select_clips(store: Store, clips: str | list[str] | None) -> list[int]:
    """Clip indices for ``clips``: None = all, a split name, a file of clip_ids, or a list of ids.

    Removed clips (``featstore remove-clips``) are never selected, even by id.
    """
    table = store.clips
    kept = ~store.removed
    if clips is None:
        return list(np.flatnonzero(kept))
    if isinstance(clips, str):
        if clips in ("train", "evaluate", "test"):
            return list(np.flatnonzero((table["split"].to_numpy() == clips) & kept))
        if os.path.isfile(clips):
            with open(clips) as f:
                clips = [line.strip() for line in f if line.strip()]
        else:
            raise ConfigError(f"--clips {clips!r} is neither a split name nor a file of clip_ids")
    row_of = {str(cid): i for i, cid in enumerate(table["clip_id"].to_numpy())}  # one pass: O(clips), not O(clips^2)
    rows = [row_of[cid] if cid in row_of else store.clip_index(cid) for cid in clips]  # clip_index names an unknown id
    return [i for i in rows if kept[i]]


def plan_tasks(rows: Iterable[int], unit: int, clips_per_task: int) -> list[list[int]]:
    """The rows of each task, in order: whole units (``unit`` clips: whole shards of every output),
    consecutive units joined until a task has at least ``clips_per_task`` rows. No unit (so no
    shard) is split between two tasks."""
    tasks, current = [], []
    for _, group in group_rows(rows, unit):
        current.extend(group)
        if len(current) >= clips_per_task:
            tasks.append(current)
            current = []
    if current:
        tasks.append(current)
    return tasks


def stage_clips_per_shard(store: Store, stage: Stage) -> int | None:
    """Clips per shard of the new arrays of ``stage``: the smallest any output's clip size gives
    (see :func:`featstore.shards.clips_per_shard`), so that a task owning whole shards of one
    output owns whole shards of all; None when the store is not sharded."""
    counts = [clips_per_shard(int(np.prod(spec.per_clip_shape)) * np.dtype(spec.dtype).itemsize, store.shard_mb) for spec in stage.outputs]
    return min(counts) if all(counts) else None


def split_task(rows: list, part_clips: int) -> list[list]:
    """``rows`` (one planned task) cut into consecutive parts of nearly equal length, at most
    ``part_clips`` each, so that the workers share a task larger than one worker's fair share. The
    parts only compute; the task keeps one writer (:func:`write_parts`), so a shard is still
    written by one task only."""
    n_parts = max(1, -(-len(rows) // max(1, part_clips)))
    bounds = [len(rows) * k // n_parts for k in range(n_parts + 1)]
    return [rows[start:stop] for start, stop in zip(bounds, bounds[1:])]


def local_workers(workers: int | None, scheduler: str | None, clip_seconds: float) -> int | None:
    """The local workers a run uses: ``workers`` when given; by default (None), 0 (in-process) when
    the clips to do hold at most :data:`IN_PROCESS_CLIP_S` seconds and no scheduler is named, else
    None (a local cluster of one process per core)."""
    if workers is None and not (scheduler or os.environ.get("FEATSTORE_SCHEDULER")) and clip_seconds <= IN_PROCESS_CLIP_S:
        return 0
    return workers


def _executor(
    workers: int | None, scheduler: str | None, in_process_only: bool
) -> tuple[Callable[[tuple, Iterator[list[ClipTask]], int, int], Iterator[dict]], Callable[[], None]]:
    """(run, close): ``run(job, batches, n_clips, clips_per_task)`` yields each clip's result as it lands.

    ``job`` is ``(compute, params, outputs)``; ``batches`` yields each task's list of
    :class:`ClipTask` (from :func:`plan_tasks`), ``n_clips`` in all. In-process, all clips stream
    through one :func:`iter_clips`, so writes overlap computes across the whole run. On dask, each
    task is :func:`run_clips` over one batch, a few tasks in flight per worker; a task larger than
    its fair share (``n_clips`` over the workers, at least ``clips_per_task``: when shards hold
    more clips than that) is
    computed in parts by several workers (:func:`compute_part`) and written by one
    (:func:`write_parts`).
    """
    scheduler = scheduler or os.environ.get("FEATSTORE_SCHEDULER")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 (in-process) or more, got {workers}")
    if workers == 0 and not scheduler:
        return (lambda job, batches, n_clips, clips_per_task: iter_clips(*job, itertools.chain.from_iterable(batches))), (lambda: None)

    import dask.config
    from distributed import Client, LocalCluster, wait

    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        n = workers or os.cpu_count() or 1
        # a memory:// store lives in this process only: thread workers (which take no env)
        options = {"processes": False} if in_process_only else {"processes": True, "env": WORKER_ENV}
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR, **options)
        client = Client(cluster)

    def dask_run(job, batches, n_clips, clips_per_task):
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        fair_share = max(clips_per_task, -(-n_clips // n_workers))

        def submit(batch):
            if len(batch) <= fair_share:
                return client.submit(run_clips, *job, batch, pure=False)
            parts = [client.submit(compute_part, *job, part, pure=False) for part in split_task(batch, fair_share)]
            return client.submit(write_parts, job[2], *parts, pure=False)  # dask frees the parts once written

        pending = iter(batches)
        window = set()
        for batch in pending:
            window.add(submit(batch))
            if len(window) >= IN_FLIGHT_PER_WORKER * n_workers:
                break
        no_workers_since = None
        while window:
            try:
                finished, window = wait(window, timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            if not finished:
                no_workers_since = _check_cluster(client, no_workers_since)
                continue
            no_workers_since = None
            for future in finished:
                yield from future.result()
                future.release()
                nxt = next(pending, None)
                if nxt is not None:
                    window.add(submit(nxt))

    def close():
        client.close()
        if cluster is not None:
            cluster.close()

    return dask_run, close


def _check_cluster(client, no_workers_since: float | None) -> float | None:
    """When the scheduler has had no worker for :data:`LOST_CLUSTER_S`, :class:`ClusterLost` naming it;
    otherwise the time since when it has had none (None while it has workers)."""
    from distributed.utils import TimeoutError as DaskTimeout

    from featstore.errors import ClusterLost

    address = client.scheduler.address
    try:
        n_workers = len(client.nthreads())
    except (OSError, DaskTimeout) as exc:
        raise ClusterLost(f"lost the dask scheduler at {address} ({type(exc).__name__}); start it again and re-run (done clips are kept)") from None
    if n_workers:
        return None
    since = no_workers_since if no_workers_since is not None else time.monotonic()
    if time.monotonic() - since > LOST_CLUSTER_S:
        raise ClusterLost(f"no dask worker at scheduler {address} for {LOST_CLUSTER_S:.0f} s with tasks pending; "
                          "start workers (dask worker ADDRESS) and re-run: done clips are kept")
    return since


def run_stage(
    store: Store,
    stage: Stage,
    *,
    clips: str | list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    redo: bool = False,
    progress: bool | None = None,
) -> StageReport:
    """Run ``stage`` over the selected clips of ``store`` that are not done yet.

    ``workers``: local dask worker processes (default: the machine's cores; 0 = in-process, serial);
    ``scheduler``: address of an existing dask scheduler (default: ``$FEATSTORE_SCHEDULER``);
    ``overwrite``: recompute every clip, replacing arrays made with other parameters;
    ``redo``: recompute the selected clips even when they are done (``verify --repair``): their
    done-marks stay, with the old checksums, until the new values are written, so a run killed
    half-way leaves every clip it did not reach still visible to ``verify`` as damaged;
    ``progress``: show a progress bar (default: when stderr is a terminal).
    """
    started = time.perf_counter()
    paths = [spec.path for spec in stage.outputs]
    report = StageReport(stage=stage.name, arrays=paths)
    # the lock comes first: a refused writer must not touch (or --overwrite) the arrays
    with WriterLock(store.side, paths, stage.name):
        selected = select_clips(store, clips)  # a bad --clips is refused before any array is made
        per_shard = stage_clips_per_shard(store, stage)
        arrays = {
            spec.path: store.create_array(
                spec.path,
                per_clip_shape=spec.per_clip_shape,
                dtype=spec.dtype,
                dims=spec.dims,
                coords=spec.coords,
                stage=stage.name,
                params={**stage.params, **spec.params},
                config=spec.config,
                modality=stage.modality,
                overwrite=overwrite,
                code_version=stage.code_version,
                clips_per_shard=per_shard,
            )
            for spec in stage.outputs
        }
        ledgers = {path: store.ledger(path) for path in arrays}
        failures = store.failures_record(paths)
        columns = {c: store.clips[c].to_numpy() for c in store.clips.columns}
        todo, input_fps = [], {}
        for i in selected:
            clip_id = str(columns["clip_id"][i])
            fp = stage.input_fingerprint(_row(columns, i))
            if not redo and all(ledger.is_done(clip_id, fp) for ledger in ledgers.values()):
                report.skipped += 1
                continue
            input_fps[clip_id] = fp
            todo.append(i)
        if todo:
            outputs = tuple((spec, arrays[spec.path].attrs["featstore"]["fingerprint"]) for spec in stage.outputs)
            root = store.dataset_root or ""
            plan = plan_tasks(todo, unit_clips(list(arrays.values())), stage.clips_per_task)
            batches = ([ClipTask(i, str(columns["clip_id"][i]), _row(columns, i), root, store.url, store.storage_options) for i in rows] for rows in plan)
            _execute(store, stage, batches, len(todo), input_fps, outputs, ledgers, failures, report, workers, scheduler, progress)
    report.seconds = time.perf_counter() - started
    return report


def _row(columns: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """Row ``i`` of the clips table as plain Python values (tasks are built lazily, one at a time)."""
    return {c: (v[i].item() if hasattr(v[i], "item") else v[i]) for c, v in columns.items()}


def _execute(store, stage, batches, n_tasks, input_fps, outputs, ledgers, failures, report, workers, scheduler, progress):
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=n_tasks, desc=stage.name, unit="clip", disable=not show, file=sys.stderr)
    in_process_only = store.url.startswith("memory://")
    run, close = _executor(local_workers(workers, scheduler, n_tasks * store.clip_duration_s), scheduler, in_process_only)
    last_flush, flush_every = time.monotonic(), FLUSH_EVERY_S

    def flush():
        # a flush rewrites every mark (O(clips)): spacing flushes by FLUSH_SPACING x their cost keeps them under
        # ~5% of a run at any size, where a fixed interval would make them O(clips^2) over a run
        nonlocal flush_every
        started = time.monotonic()
        for ledger in ledgers.values():
            ledger.flush(store.side)
        failures.flush()
        flush_every = max(FLUSH_EVERY_S, FLUSH_SPACING * (time.monotonic() - started))

    try:
        job = (Batched(stage.compute_batch) if stage.compute_batch else stage.compute, stage.params, outputs)
        for result in run(job, batches, n_tasks, stage.clips_per_task):
            clip_id = result["clip_id"]
            if result["ok"]:
                for path, crc in result["crc32"].items():
                    ledgers[path].mark_done(clip_id, input_fps[clip_id], crc, result["info"])
                failures.clear(stage.name, clip_id)
                report.done += 1
            else:
                message = f"{result['error_type']}: {result['message']}"
                for path in report.arrays:
                    failures.record(stage.name, path, clip_id, result["error_type"], result["message"])
                report.failed += 1
                report.failures.append({"clip_id": clip_id, "error": message})
                bar.write(f"featstore: clip {clip_id} failed: {message}", file=sys.stderr)
            bar.update(1)
            if time.monotonic() - last_flush > flush_every:
                flush()
                last_flush = time.monotonic()
    finally:
        flush()
        bar.close()
        close()
