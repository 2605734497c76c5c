"""A batch stage's data model: what the runner (:mod:`featstore.pipelines.runner`) maps over clips.

A :class:`Stage` holds its parameters, its :class:`OutputSpec` arrays and one module-level
``compute(task, params, names) -> ClipResult`` (or a batched ``compute_batch``); a :class:`ClipTask`
is what a worker gets for one clip, and a :class:`StageReport` what a run returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore.clips import resolve_source
from featstore.coords import Coordinate
from featstore.store import Store

#: The store a worker process has open for each URL, with the run it was opened for
#: (:meth:`ClipTask.open_store`).
_OPEN_STORES: dict[str, tuple[str, Store]] = {}

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
    """What a worker gets for one clip: its index, id, clips-table row, the dataset root, the
    store's URL and fsspec options (where the worker writes, and reads upstream arrays), and the
    run it belongs to (``run``: a worker opens the store and its arrays again for each run, so a store
    or array made again at the same URL is never written through an old handle)."""

    clip_index: int
    clip_id: str
    row: dict[str, Any]
    dataset_root: str
    store_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    run: str = ""

    def open_store(self) -> Store:
        """The task's store, opened once per worker process and run (again when clips were appended since)."""
        cached = _OPEN_STORES.get(self.store_url)
        if cached is None or cached[0] != self.run or self.clip_index >= cached[1].n_clips:
            cached = _OPEN_STORES[self.store_url] = (self.run, Store(self.store_url, self.storage_options))
        return cached[1]

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
