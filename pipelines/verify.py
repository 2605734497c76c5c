"""`featstore verify --repair`: recompute exactly the damaged clips with the stage that made them."""

from __future__ import annotations

from collections import defaultdict

from featstore.pipelines.runner import StageReport, run_stage
from featstore.pipelines.stages import config_for_array
from featstore.store import Store
from featstore.verify import VerifyReport


def repair(store: Store, report: VerifyReport, *, workers: int | None = 0, scheduler: str | None = None) -> list[StageReport]:
    """Re-run each damaged array's stage on exactly its damaged clips.

    The stage is rebuilt from the array's provenance (:func:`~featstore.pipelines.stages.config_for_array`),
    so it has the same fingerprint (the runner would refuse otherwise) and writes the same bytes an
    undamaged run wrote. Any batch stage's array can be repaired: spectrograms, frames, embeddings
    and a backbone's predictions. The damaged clips keep their done-marks (and old checksums) until
    recomputed, so a repair killed half-way leaves the rest still reported as damaged.
    """
    damaged: dict[str, set[str]] = defaultdict(set)
    for d in report.damaged:
        damaged[d.array].add(d.clip_id)
    stages = {path: config_for_array(store, path).build(store) for path in damaged}  # refuse before touching anything
    return [
        run_stage(store, stages[path], clips=sorted(clip_ids), redo=True, workers=workers, scheduler=scheduler, progress=False)
        for path, clip_ids in sorted(damaged.items())
    ]
