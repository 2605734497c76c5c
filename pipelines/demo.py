"""The main job end to end on generated demo data: what `featstore demo` (and the README) runs."""

from __future__ import annotations

import os
from collections.abc import Callable

import featstore
from featstore.demo import make_demo_dataset
from featstore.info import format_info, store_info
from pipelines.extract_audio import extract_audio
from pipelines.extract_frames import extract_frames
from pipelines.ingest import ingest


def run_demo(workdir: str, *, clips_per_class: int = 4, workers: int | None = None, echo: Callable[[str], None] = print) -> int:
    """Generate the demo dataset, build a store from it with every stage; return the exit code.

    Idempotent: a second run reuses the dataset and does no work for clips already done.
    """
    data = os.path.join(workdir, "TAU-urban-audio-visual-scenes-2021-development")
    if not os.path.isfile(os.path.join(data, "meta.csv")):
        echo(f"[demo] generating {10 * clips_per_class} clips in {data}")
        make_demo_dataset(data, clips_per_class=clips_per_class)
    store = featstore.init_store(os.path.join(workdir, "store.zarr"))
    summary = ingest(store, data)
    echo(f"[demo] ingest: added {summary.added}, {summary.total} clips in the store")
    exit_code = 0
    for run in (extract_audio, extract_frames):
        report = run(store, workers=workers)
        echo(f"[demo] {report.stage}: {report.done} done, {report.skipped} already done, {report.failed} failed, {report.seconds:.1f} s")
        exit_code = exit_code or (0 if report.ok else 3)
    echo(format_info(store_info(store)))
    return exit_code
