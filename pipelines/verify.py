"""`featstore verify --repair`: recompute exactly the damaged clips with the stage that made them."""

from __future__ import annotations

from collections import defaultdict

from featstore.store import Store, StoreError
from featstore.verify import VerifyReport
from featstore.pipelines import extract_audio, extract_frames
from featstore.pipelines.runner import StageReport, run_stage

#: Stage name (as recorded in provenance) -> module with ``stage_for_array(store, path)``.
STAGE_MODULES = {extract_audio.STAGE: extract_audio, extract_frames.STAGE: extract_frames}


def repair(store: Store, report: VerifyReport, *, workers: int | None = 0, scheduler: str | None = None) -> list[StageReport]:
    """Forget the damaged clips' done-marks, then re-run each array's stage on exactly those clips.

    The stage is rebuilt from the array's provenance, so it has the same fingerprint (the runner
    would refuse otherwise) and writes the same bytes an undamaged run wrote.
    """
    damaged: dict[str, set[str]] = defaultdict(set)
    for d in report.damaged:
        damaged[d.array].add(d.clip_id)
    runs = []
    for path, clip_ids in sorted(damaged.items()):
        stage_name = store.provenance(path)["stage"]
        module = STAGE_MODULES.get(stage_name)
        if module is None:
            raise StoreError(f"{path}: made by {stage_name!r}, which featstore cannot re-run; re-import or recompute it")
        ledger = store.ledger(path)
        for clip_id in clip_ids:
            ledger.unmark(clip_id)
        ledger.flush(store.side)
        runs.append(run_stage(store, module.stage_for_array(store, path), clips=sorted(clip_ids), workers=workers, scheduler=scheduler, progress=False))
    return runs
