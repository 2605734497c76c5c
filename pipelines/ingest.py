"""`featstore ingest`: read a dataset's metadata into the store's clips table."""

from __future__ import annotations

import os
from dataclasses import dataclass

from featstore.clip_edits import replace_clips
from featstore.clips import relative_source
from featstore.errors import UnsafePath
from featstore.ingest import IngestError, IngestReport, csv_labels, is_tau2021_eval, read_csv_manifest, read_tau2021, read_tau2021_eval
from featstore.store import Store

FORMATS = ("tau2021", "tau2021-eval", "csv")


@dataclass
class IngestSummary:
    added: int
    total: int
    replaced: list[str]  # clip ids whose rows were replaced in place (``replace``)
    missing: list[tuple[str, str]]  # (clip_id, message): ingested, recorded as failures


def _rebase(report: IngestReport, store_root: str) -> None:
    """Make the report's paths relative to the store's dataset root (it must contain them)."""
    for col in ("audio_path", "video_path"):
        rebased = []
        for clip_id, rel in zip(report.clips["clip_id"], report.clips[col]):
            full = os.path.join(report.root, rel) if rel else ""
            try:
                rebased.append(relative_source(store_root, full, f"clip {clip_id!r}"))
            except UnsafePath:
                raise IngestError(
                    f"clip {clip_id!r}: {full} is outside the store's dataset root {store_root} (set by the first ingest)"
                ) from None
        report.clips[col] = rebased


def ingest(store: Store, source: str, *, fmt: str = "tau2021", fold: int = 1, replace: bool = False) -> IngestSummary:
    """Add the clips of ``source`` (a TAU 2021 root, or a CSV file with ``fmt="csv"``) to ``store``.

    ``fmt="tau2021"`` reads the development layout, or the evaluation layout when ``source`` has one
    (a ``fold1_test.csv`` and no train fold file; ``fmt="tau2021-eval"`` asks for it explicitly):
    its clips are ingested as ``test`` clips without labels.

    Labels are checked against the store's class list. The first ingest sets the store's dataset
    root; later ones must lie inside it. Clips already in the store are skipped (a re-ingest is a
    no-op); one whose path, label or split differs is a :class:`~featstore.errors.ClipConflict`.
    With ``replace``, a clip whose source row differs (paths, label, split, location, file
    fingerprints) or that was removed gets the new row in place, its done-marks cleared
    (:func:`featstore.clip_edits.replace_clips`). Clips whose media files are missing are ingested
    and recorded as ``ingest`` failures.
    """
    if fmt == "tau2021-eval" or (fmt == "tau2021" and is_tau2021_eval(source, fold=fold)):
        report = read_tau2021_eval(source, fold=fold)
    elif fmt == "tau2021":
        report = read_tau2021(source, fold=fold, classes=store.classes)
    elif fmt == "csv":
        with store.changing_clips("ingest"):  # a store initialised without classes takes the manifest's
            store.adopt_classes(csv_labels(source))
        report = read_csv_manifest(source, classes=store.classes)
    else:
        raise IngestError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    with store.changing_clips("ingest"):  # another ingest's clips and dataset root are seen, not overwritten
        if store.dataset_root is None:
            store.set_dataset_root(report.root)
        elif os.path.realpath(store.dataset_root) != os.path.realpath(report.root):
            _rebase(report, store.dataset_root)
        if replace:
            merged = replace_clips(store, report.clips)
            added, replaced = merged.added, merged.replaced
        else:
            added, replaced = store.add_clips(report.clips), []
        failures = store.failures_record()
        for clip_id, message in report.missing:
            failures.record("ingest", "", clip_id, "MissingFile", message)
        failures.flush()
    return IngestSummary(added=added, total=store.n_clips, replaced=replaced, missing=report.missing)
