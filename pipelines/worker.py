"""What one dask task of a batch stage does, in the worker: compute its clips (one at a time, or
in batches through a stage's ``compute_batch``), write whole shards of every output, and return
only checksums and notes, never the arrays. The driver side is :mod:`featstore.pipelines.runner`.
"""

from __future__ import annotations

import itertools
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from featstore.errors import MediaError
from featstore.pipelines.stage import ClipResult, ClipTask
from featstore.shards import unit_clips, write_clips
from featstore.handles import open_array

#: The writing handle a worker process has open for each (store URL, array path), with the run and
#: array fingerprint it was opened for.
_OPEN_ARRAYS: dict[tuple[str, str], tuple[tuple[str, str], Any]] = {}
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
    """The array's writing handle, opened once per worker process, run and array version (again
    when the array grew since, clips having been appended). One handle per array is kept: a new run
    replaces the last one's, so an array made again at the same path (another shard layout) is
    opened again."""
    cached = _OPEN_ARRAYS.get((task.store_url, path))
    if cached is None or cached[0] != (task.run, fingerprint) or task.clip_index >= cached[1].shape[0]:
        cached = _OPEN_ARRAYS[(task.store_url, path)] = ((task.run, fingerprint), open_array(task.store_url, path, task.storage_options))
    return cached[1]


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
