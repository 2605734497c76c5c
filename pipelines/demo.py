"""The main job end to end on generated demo data: what `featstore demo` (and the README) runs."""

from __future__ import annotations

import os
from collections.abc import Callable

import featstore
from featstore.demo import make_demo_dataset
from featstore.info import format_info, store_info
from featstore.store import StoreError
from pipelines.extract_audio import extract_audio
from pipelines.extract_frames import extract_frames
from pipelines.ingest import ingest

#: Audio backbones the demo trains, at tiny settings (CPU, a few seconds each).
DEMO_MODELS = (("aud-mel", "audio/mel"), ("aud-gam", "audio/gam"), ("aud-cqt", "audio/cqt"))


def run_demo(workdir: str, *, clips_per_class: int = 4, workers: int | None = None, echo: Callable[[str], None] = print) -> int:
    """Generate the demo dataset and build a store from it with every stage; return the exit code.

    Stages: ingest, extract-audio, extract-frames, train-backbone (the three audio models, tiny
    widths, 2 epochs), embed (fc1024 + fc10 + predictions) and ensemble (MEAN / PROD / MAX of
    the three). Idempotent: a second run reuses the
    dataset, does no work for clips already done and keeps already registered models.
    """
    from featstore.registry import model_entry
    from pipelines.embed import embed
    from pipelines.train_backbone import TrainConfig, train_backbone

    data = os.path.join(workdir, "TAU-urban-audio-visual-scenes-2021-development")
    if not os.path.isfile(os.path.join(data, "meta.csv")):
        echo(f"[demo] generating {10 * clips_per_class} clips in {data}")
        make_demo_dataset(data, clips_per_class=clips_per_class)
    store = featstore.init_store(os.path.join(workdir, "store.zarr"))
    summary = ingest(store, data)
    echo(f"[demo] ingest: added {summary.added}, {summary.total} clips in the store")
    exit_code = 0
    reports = [run(store, workers=workers) for run in (extract_audio, extract_frames)]
    for name, input_array in DEMO_MODELS:
        try:
            model_entry(store, name)
        except StoreError:
            config = TrainConfig(model=name, input_array=input_array, window_s=store.segment_s, widths=(8, 16), head_units=64, epochs=2, batch_size=32)
            metrics = train_backbone(store, config)["config"]["metrics"]
            echo(f"[demo] train-backbone {name}: val_accuracy {metrics['val_accuracy']:.2f} (best epoch {metrics['best_epoch']})")
        reports.append(embed(store, name)[0])
    for report in reports:
        echo(f"[demo] {report.stage} {', '.join(report.arrays)}: {report.done} done, {report.skipped} already done, {report.failed} failed, {report.seconds:.1f} s")
        exit_code = exit_code or (0 if report.ok else 3)
    from pipelines.ensemble import ensemble

    for rule in ("mean", "prod", "max"):
        record = ensemble(store, [name for name, _ in DEMO_MODELS], rule=rule, name=f"audio-{rule}")
        m = record["metrics"].get("clip")
        echo(f"[demo] ensemble {rule.upper()} of the audio models on evaluate: accuracy {m['accuracy']:.2f}, log-loss {m['log_loss']:.2f}")
    echo(format_info(store_info(store)))
    return exit_code
