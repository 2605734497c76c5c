"""`featstore verify --repair`: recompute exactly the damaged clips with the stage that made them."""

from __future__ import annotations

import dataclasses
import zlib
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from featstore.errors import FeatstoreError, StoreError
from featstore.lock import WriterLock
from featstore.shards import write_clips

from featstore.pipelines.config import check_fields, option, run_option
from featstore.pipelines.stage import StageReport
from featstore.pipelines.runner import run_stage
from featstore.pipelines.stages import config_for_array
from featstore.store import Store
from featstore.verify import VerifyReport


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """Every option of the verify command, with its only default (the command's options come from
    here): the arrays checked (:func:`featstore.verify.verify_store`) and whether and how
    :func:`repair` recomputes the damaged clips."""

    arrays: tuple[str, ...] | None = option(None, "Comma-separated array paths (default: all).", kind=str)
    repair: bool = option(False, "Recompute exactly the damaged clips, then verify again.")
    workers: int | None = run_option("workers", 0, "Workers for --repair (0 = in-process).")

    def __post_init__(self) -> None:
        check_fields(self)


def repair(store: Store, report: VerifyReport, *, workers: int | None = VerifyOptions.workers, scheduler: str | None = None,
           on_unrepairable: Callable[[str], None] | None = None) -> list[StageReport]:
    """Re-run each damaged array's stage on exactly its damaged clips.

    The stage is rebuilt from the array's provenance (:func:`~featstore.pipelines.stages.config_for_array`),
    so it has the same fingerprint (the runner would refuse otherwise) and writes the same bytes an
    undamaged run wrote. Any batch stage's array can be repaired: spectrograms, frames, embeddings
    and a backbone's predictions. The damaged clips keep their done-marks (and old checksums) until
    recomputed, so a repair killed half-way leaves the rest still reported as damaged. A fusion run's
    or an ensemble's predictions are re-made from the saved run (its head or rule, applied to the
    arrays it reads, as ``predict --run`` applies it). Anything else (an import, a run whose record is
    gone): ``on_unrepairable`` gets a line naming it, and the rest are repaired.
    """
    damaged: dict[str, set[str]] = defaultdict(set)
    for d in report.damaged:
        damaged[d.array].add(d.clip_id)
    stages, runs = {}, {}
    for path in sorted(damaged):  # every stage (or saved run) resolved before anything is touched
        try:
            stages[path] = config_for_array(store, path).build(store)
        except StoreError as exc:
            try:
                runs[path] = _saved_run_system(store, path)
            except FeatstoreError:  # neither a batch stage's array nor a saved run's: named, the others repaired
                if on_unrepairable is not None:
                    on_unrepairable(f"cannot repair {path} ({len(damaged[path])} damaged clip(s)): {exc}")
    reports = [
        run_stage(store, stage, clips=sorted(damaged[path]), redo=True, workers=workers, scheduler=scheduler, progress=False)
        for path, stage in stages.items()
    ]
    return reports + [_remake_predictions(store, path, system, sorted(damaged[path])) for path, system in runs.items()]


def _saved_run_system(store: Store, path: str):
    """The system of the fusion or ensemble run whose predictions are ``path`` (``predictions/RUN``)."""
    from featstore.pipelines.stages import system_from_run

    if not path.startswith("predictions/"):
        raise StoreError(f"{path} is not a run's predictions")
    return system_from_run(store, path.split("/", 1)[1])


def _remake_predictions(store: Store, path: str, system, clip_ids: list[str]) -> StageReport:
    """Re-make the damaged clips of a saved run's predictions and re-mark them (same input
    fingerprint, the new checksum): the head or rule applied as ``predict`` applies it."""
    from featstore.pipelines.predict import apply_decision

    rows = np.array([store.clip_index(c) for c in clip_ids], dtype=np.int64)
    probs = apply_decision(store, system, system.decision, rows)
    with WriterLock(store.side, [path], "verify --repair"):
        array, ledger = store.array(path), store.ledger(path)
        probs = np.ascontiguousarray(probs, dtype=array.dtype)
        write_clips(array, rows, probs)  # whole shards, each once
        for clip_id, values in zip(clip_ids, probs):
            entry = ledger.entries.get(clip_id, {})
            ledger.mark_done(clip_id, entry.get("input", system.digest), zlib.crc32(values.tobytes()), entry.get("info"))
        ledger.flush(store.side)
    return StageReport(stage="repair", arrays=[path], done=len(rows))
