"""The main job end to end on generated demo data: what `featstore demo` (and the README) runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import featstore
from featstore.demo import make_demo_dataset
from featstore.info import format_info, store_info
from featstore.runs import class_table, markdown_table
from featstore.store import StoreError
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest

#: The five backbones and their inputs, trained at tiny settings (CPU, seconds to a minute each).
DEMO_MODELS = (
    ("aud-mel", "audio/mel"), ("aud-gam", "audio/gam"), ("aud-cqt", "audio/cqt"),
    ("vis-inc", "frames/rgb"), ("vis-conv", "frames/rgb"),
)
#: Frame side for the demo: 75 px (InceptionV3's smallest) instead of 224, and 6 of the 20 frames
#: per clip in training, so that InceptionV3 and ConvNeXtTiny train on 2 CPU cores in under a minute.
DEMO_FRAME_SIZE = 75
DEMO_VISUAL_TRAINING = {"epochs": 1, "units_per_clip": 6}
#: The tiny Phase I settings: every head has 64 units, so fc1024-layer embeddings share one width.
DEMO_TRAINING = {"widths": (8, 16), "head_units": 64, "epochs": 2, "batch_size": 16}
DEMO_FUSE = {"epochs": 40, "batch_size": 64, "lr": 3e-3}


def _train_and_embed(store, workers, echo) -> list:
    """Train (unless registered already) and embed the five backbones; return the embed reports."""
    from featstore.registry import model_entry
    from featstore.pipelines.embed import embed
    from featstore.pipelines.train_backbone import TrainConfig, train_backbone

    reports = []
    for name, input_array in DEMO_MODELS:
        try:
            model_entry(store, name)
        except StoreError:
            start = time.perf_counter()
            visual = input_array.endswith("rgb")
            settings = {**DEMO_TRAINING, **DEMO_VISUAL_TRAINING} if visual else DEMO_TRAINING
            config = TrainConfig(model=name, input_array=input_array, window_s=store.segment_s, **settings)
            metrics = train_backbone(store, config)["config"]["metrics"]
            echo(f"[demo] train-backbone {name}: val_accuracy {metrics['val_accuracy']:.2f} (best epoch {metrics['best_epoch']}, {time.perf_counter() - start:.0f} s)")
        reports.append(embed(store, name, workers=0)[0])
    return reports


def _phase_two(store, workdir: str, echo) -> None:
    """fuse f1..f6 for audio, visual and both; MEAN / PROD / MAX of the five backbones; the report."""
    from featstore.pipelines.ensemble import ensemble
    from featstore.pipelines.fuse import FuseConfig, fuse_methods
    from featstore.pipelines.report import build_report

    methods = ("f1", "f2", "f3", "f4", "f5", "f6")
    for modalities, tag in ((("audio",), "audio"), (("visual",), "visual"), (("audio", "visual"), "av")):
        start = time.perf_counter()
        records = fuse_methods(store, methods, FuseConfig(method="f1", modalities=modalities, name=f"demo-{tag}", **DEMO_FUSE))
        table = class_table(records, store.classes).rename(columns={r["name"]: r["method"] for r in records})
        echo(f"[demo] fuse f1..f6 on {tag} embeddings ({time.perf_counter() - start:.0f} s), evaluate clip accuracy (%):")
        echo(markdown_table(table.loc[["overall"]]))
    for rule in ("mean", "prod", "max"):
        record = ensemble(store, [name for name, _ in DEMO_MODELS], rule=rule, name=f"late-{rule}")
        m = record["metrics"]["clip"]
        echo(f"[demo] ensemble {rule.upper()} of the five backbones on evaluate: accuracy {m['accuracy']:.2f}, log-loss {m['log_loss']:.2f}")
    paths = build_report(store, os.path.join(workdir, "report"), submission_split="evaluate")
    echo(f"[demo] report: {paths['html']} (Markdown: {paths['markdown']})")


def run_demo(workdir: str, *, clips_per_class: int = 4, workers: int | None = None, echo: Callable[[str], None] = print) -> int:
    """Generate the demo dataset and run every stage on it; return the exit code.

    Stages: ingest, extract-audio, extract-frames (75 px), train-backbone (the five models, tiny
    settings), embed (fc1024, fc10, predictions), fuse f1..f6 for audio, visual and both, ensemble
    (MEAN / PROD / MAX of the five) and report. Idempotent: a second run reuses the dataset, does no
    work for clips already done and keeps already registered models (fusion runs are retrained).
    """
    data = os.path.join(workdir, "TAU-urban-audio-visual-scenes-2021-development")
    if not os.path.isfile(os.path.join(data, "meta.csv")):
        echo(f"[demo] generating {10 * clips_per_class} clips in {data}")
        make_demo_dataset(data, clips_per_class=clips_per_class)
    store = featstore.init_store(os.path.join(workdir, "store.zarr"))
    summary = ingest(store, data)
    echo(f"[demo] ingest: added {summary.added}, {summary.total} clips in the store")
    reports = [extract_audio(store, workers=workers), extract_frames(store, workers=workers, size=DEMO_FRAME_SIZE)]
    reports += _train_and_embed(store, workers, echo)
    exit_code = 0
    for report in reports:
        echo(f"[demo] {report.stage} {', '.join(report.arrays)}: {report.done} done, {report.skipped} already done, {report.failed} failed, {report.seconds:.1f} s")
        exit_code = exit_code or (0 if report.ok else 3)
    _phase_two(store, workdir, echo)
    echo(format_info(store_info(store)))
    return exit_code
