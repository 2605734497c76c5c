"""`featstore verify --repair`: recompute exactly the damaged clips with the stage that made them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from featstore.errors import StoreError

from featstore.pipelines.runner import StageReport, run_stage
from featstore.pipelines.stages import config_for_array
from featstore.store import Store
from featstore.verify import VerifyReport


def repair(store: Store, report: VerifyReport, *, workers: int | None = 0, scheduler: str | None = None,
           on_unrepairable: Callable[[str], None] | None = None) -> list[StageReport]:
    """Re-run each damaged array's stage on exactly its damaged clips.

    The stage is rebuilt from the array's provenance (:func:`~featstore.pipelines.stages.config_for_array`),
    so it has the same fingerprint (the runner would refuse otherwise) and writes the same bytes an
    undamaged run wrote. Any batch stage's array can be repaired: spectrograms, frames, embeddings
    and a backbone's predictions. The damaged clips keep their done-marks (and old checksums) until
    recomputed, so a repair killed half-way leaves the rest still reported as damaged. An array no
    batch stage made (a fusion run's or an ensemble's predictions, an import) cannot be rebuilt here:
    ``on_unrepairable`` gets a line naming it, and the rest are repaired.
    """
    damaged: dict[str, set[str]] = defaultdict(set)
    for d in report.damaged:
        damaged[d.array].add(d.clip_id)
    stages = {}
    for path in sorted(damaged):  # every stage built before anything is touched
        try:
            stages[path] = config_for_array(store, path).build(store)
        except StoreError as exc:  # not a batch stage's array: named, the others repaired all the same
            if on_unrepairable is not None:
                on_unrepairable(f"cannot repair {path} ({len(damaged[path])} damaged clip(s)): {exc}")
    return [
        run_stage(store, stage, clips=sorted(damaged[path]), redo=True, workers=workers, scheduler=scheduler, progress=False)
        for path, stage in stages.items()
    ]
