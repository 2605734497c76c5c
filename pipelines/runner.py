"""The stage runner: maps a stage's per-clip work over the clips not yet done, on dask.

Every batch stage (extract-audio, extract-frames, embed) is a :class:`Stage`: its parameters, its
output arrays and one module-level function ``compute(task, params) -> ClipResult``. The runner does
the rest, once for all stages:

* creates the output arrays at their final shape from the driver (docs/explanation/integrity.md), refusing when they
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
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from featstore.errors import ConfigError, first_line
from featstore.pipelines.config import IN_PROCESS_CLIP_S
from featstore.lock import WriterLock
from featstore.shards import clips_per_shard, group_rows, unit_clips
from featstore.pipelines.stage import ClipTask, Stage, StageReport
from featstore.pipelines.worker import Batched, compute_part, iter_clips, run_clips, write_parts
from featstore.store import Store

#: Environment of local dask workers: one thread per BLAS / FFT / numba pool, since the cluster
#: already runs one process per core; zarr settings reach workers only this way.
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
#: keep those buffers in the heap, as in-process. The event loops' health check (``admin.tick``)
#: runs every 1 s instead of every 20 ms, and the workers' statistical profiler (a stack sample every
#: 10 ms, for a dashboard these clusters do not serve) is off: an idle one-worker cluster then costs
#: about 2% of a core in this process and 1% in the worker, against 4-6% and 5% with dask's defaults
#: (``benchmarks/bench_audio.py --mode workers``, this project's 2-core machine): time that was
#: taken from the clips while they ran.
LOCAL_CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.profile.enabled": False,
}
#: Tasks in flight per worker: enough to hide scheduling latency, small enough to bound memory.
IN_FLIGHT_PER_WORKER = 3
#: Least seconds between ledger flushes (env FEATSTORE_FLUSH_S; longer when a flush is slow, see
#: _execute): a crash loses at most that much work.
FLUSH_EVERY_S = float(os.environ.get("FEATSTORE_FLUSH_S", "2.0"))
#: A flush slower than FLUSH_EVERY_S / FLUSH_SPACING is followed by FLUSH_SPACING times its own cost
#: without one, so flushes stay under 1 / FLUSH_SPACING of a run at any store size.
FLUSH_SPACING = 20
#: Seconds a run waits with tasks pending and no dask worker alive before it stops with an error
#: naming the scheduler (env FEATSTORE_LOST_CLUSTER_S).
LOST_CLUSTER_S = float(os.environ.get("FEATSTORE_LOST_CLUSTER_S", "60"))


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
        try:
            client, cluster = Client(scheduler), None
        except OSError as exc:  # dask's "Timed out trying to connect to ... after 30 s"
            raise ConfigError(f"no dask scheduler answers at {scheduler} ({first_line(exc)}): check the address the scheduler printed, "
                              "or leave out --scheduler (and FEATSTORE_SCHEDULER) to run on local workers") from None
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
        store.refresh()  # the clips table as it is now the lock is held (another process may have edited it)
        if store.n_clips == 0:
            raise ConfigError(f"{store.url} has no clips yet: featstore ingest STORE DATA_DIR first")
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
            run = uuid.uuid4().hex
            batches = ([ClipTask(i, str(columns["clip_id"][i]), _row(columns, i), root, store.url, store.storage_options, run) for i in rows] for rows in plan)
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
