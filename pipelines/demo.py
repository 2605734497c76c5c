"""The main job end to end on generated demo data: what `featstore demo` (and the README) runs.

The demo data (:mod:`featstore.demo`) is built so that audio alone confuses the transport classes and
the two streets, video alone confuses the indoor halls and the open spaces, and each is learnable
otherwise; the demo trains the five backbones, fuses their embeddings per modality and both, and
ends with a summary in the layout of the two-phase paper's Table II. Then it exports the
audio-visual f4 run as a system and applies it to 1 s clips cut from evaluate clips in the
challenge's evaluation layout, writing the submission file (:func:`to_submission`).

Settings (:class:`DemoSettings`) are sized for 2 CPU cores and 4 to 6 minutes: the visual backbones
are the *tiny* InceptionV3-like and ConvNeXt-like networks of :mod:`featstore.models.visual` on 64 px
frames (``visual_arch="paper"``, ``featstore demo --paper-visual``, trains the papers' InceptionV3 and
ConvNeXtTiny from random weights instead, at 75 px, InceptionV3's smallest input: far slower on a CPU).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import featstore
from featstore.demo import make_demo_dataset
from featstore.info import format_info, store_info
from featstore.runs import class_table, markdown_table
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest

#: The five backbones and their inputs.
DEMO_MODELS = (
    ("aud-mel", "audio/mel"), ("aud-gam", "audio/gam"), ("aud-cqt", "audio/cqt"),
    ("vis-inc", "frames/rgb"), ("vis-conv", "frames/rgb"),
)
#: Modality sets fused and ensembled, with the tag in their run names.
MODALITY_SETS = ((("audio",), "audio"), (("visual",), "visual"), (("audio", "visual"), "av"))
LATE_RULES = ("mean", "prod", "max")
#: Evaluate clips the demo cuts into 1 s files to show the exported system at work: one of each
#: class (the first in the store's order), so the share it decides right is not one class's.
EVAL_CLIPS_PER_CLASS = 1


@dataclass(frozen=True)
class DemoSettings:
    """Every choice of a demo run: data size, frame size, Phase I and Phase II training."""

    clips_per_class: int = 12
    duration_s: float = 10.0
    seed: int = 0
    #: "tiny" (demo default) or "paper" (InceptionV3 / ConvNeXtTiny), see featstore.models.visual
    visual_arch: str = "tiny"
    #: Phase I, every model: a 64-unit head, so every fc1024-layer embedding has one width; small
    #: batches, a high learning rate and no mixup, so that a few hundred steps suffice
    training: dict[str, Any] = field(default_factory=lambda: {"head_units": 64, "epochs": 8, "batch_size": 16, "lr": 3e-3, "mixup_alpha": 0.0})
    audio_training: dict[str, Any] = field(default_factory=lambda: {"widths": (16, 32)})
    #: visual models train on 10 of each clip's 20 frames per epoch
    visual_training: dict[str, Any] = field(default_factory=lambda: {"units_per_clip": 10})
    tiny_widths: tuple[int, ...] = (16, 32)
    fuse: dict[str, Any] = field(default_factory=lambda: {"epochs": 40, "batch_size": 64, "lr": 3e-3})

    @property
    def frame_size(self) -> int:
        """64 px for the tiny visual models; 75 px (InceptionV3's smallest input) for the papers'."""
        return 64 if self.visual_arch == "tiny" else 75

    def train_config(self, store, model: str, input_array: str):
        """The :class:`TrainConfig` of one backbone."""
        from featstore.pipelines.train_backbone import TrainConfig

        if input_array.endswith("rgb"):
            extra = {"arch": "tiny", "widths": list(self.tiny_widths)} if self.visual_arch == "tiny" else {}
            settings = {**self.training, **self.visual_training, "extra": extra}
        else:
            settings = {**self.training, **self.audio_training}
        return TrainConfig(model=model, input_array=input_array, window_s=store.segment_s, seed=self.seed, **settings)


def _log_stage(report, echo) -> int:
    """One log line for a stage report, printed when the stage ends; returns its exit code."""
    echo(f"[demo] {report.stage} {', '.join(report.arrays)}: {report.done} done, {report.skipped} already done, {report.failed} failed, {report.seconds:.1f} s")
    return 0 if report.ok else 3


def _train_and_embed(store, settings: DemoSettings, echo) -> list:
    """Train (unless registered already) and embed the five backbones, logging each as it ends;
    return the embed reports."""
    from featstore.pipelines.embed import embed
    from featstore.pipelines.train_backbone import train_backbone
    from featstore.registry import registered_models

    reports = []
    for name, input_array in DEMO_MODELS:
        if name not in registered_models(store):
            start = time.perf_counter()
            metrics = train_backbone(store, settings.train_config(store, name, input_array))["config"]["metrics"]
            echo(f"[demo] train-backbone {name}: val_accuracy {metrics['val_accuracy']:.2f} (best epoch {metrics['best_epoch']}, {time.perf_counter() - start:.0f} s)")
        reports.append(embed(store, name, workers=0)[0])
        _log_stage(reports[-1], echo)
    return reports


def _phase_two(store, settings: DemoSettings, echo) -> dict[str, dict[str, list[dict]]]:
    """fuse f1..f6 and ensemble MEAN / PROD / MAX for audio, visual and both; return the records,
    {tag: {"fuse": [...], "late": [...]}}."""
    from featstore.models import MODELS
    from featstore.pipelines.ensemble import ensemble
    from featstore.pipelines.fuse import ALL_METHODS, FuseConfig, fuse_methods

    records = {}
    for modalities, tag in MODALITY_SETS:
        start = time.perf_counter()
        config = FuseConfig(method=ALL_METHODS, modalities=modalities, name=f"demo-{tag}", seed=settings.seed, **settings.fuse)
        fused = fuse_methods(store, config.methods(), config)
        table = class_table(fused, store.classes).rename(columns={r["name"]: r["method"] for r in fused})
        echo(f"[demo] fuse f1..f6 on {tag} embeddings ({time.perf_counter() - start:.0f} s), evaluate clip accuracy (%):")
        echo(markdown_table(table.loc[["overall"]]))
        inputs = [name for name, _ in DEMO_MODELS if MODELS[name][0] in modalities]
        late = [ensemble(store, inputs, rule=rule, name=f"late-{tag}-{rule}") for rule in LATE_RULES]
        records[tag] = {"fuse": fused, "late": late}
    return records


def table_two(records: dict[str, dict[str, list[dict]]]) -> str:
    """The summary in the layout of the two-phase paper's Table II, as Markdown: per modality set,
    early fusion f4 and the best late-fusion rule (by accuracy on the split), clip-level accuracy
    (%) and log-loss."""
    lines = [
        "| modality | f4 accuracy (%) | f4 log-loss | late fusion | accuracy (%) | log-loss |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for tag, label in (("audio", "audio only"), ("visual", "visual only"), ("av", "audio-visual")):
        f4 = next(r for r in records[tag]["fuse"] if r["method"] == "f4")["metrics"]["clip"]
        best = max(records[tag]["late"], key=lambda r: (r["metrics"]["clip"]["accuracy"], -r["metrics"]["clip"]["log_loss"]))
        m = best["metrics"]["clip"]
        lines.append(f"| {label} | {100 * f4['accuracy']:.1f} | {f4['log_loss']:.3f} | {best['rule'].upper()} | {100 * m['accuracy']:.1f} | {m['log_loss']:.3f} |")
    return "\n".join(lines)


@dataclass
class DemoResult:
    """What a demo run gives back: its exit code, the store, the Phase II records (as
    :func:`_phase_two` returns them) and the report's HTML path."""

    exit_code: int
    store: Any
    records: dict[str, dict[str, list[dict]]]
    report_html: str


def run_pipeline(workdir: str, settings: DemoSettings, *, workers: int | None = None, echo: Callable[[str], None] = print) -> DemoResult:
    """Generate the dataset in ``workdir`` (unless present) and run every stage on it.

    Stages: ingest, extract-audio, extract-frames, train-backbone (the five models), embed (fc1024,
    fc10, predictions), fuse f1..f6 and ensemble MEAN / PROD / MAX for audio, visual and both, and
    report. Idempotent: a second run reuses the dataset, does no work for clips already done and keeps
    already registered models (fusion runs are retrained).
    """
    from featstore.pipelines.report import build_report

    data = os.path.join(workdir, "TAU-urban-audio-visual-scenes-2021-development")
    if not os.path.isfile(os.path.join(data, "meta.csv")):
        echo(f"[demo] generating {10 * settings.clips_per_class} clips of {settings.duration_s:g} s in {data}")
        make_demo_dataset(data, clips_per_class=settings.clips_per_class, seed=settings.seed, duration_s=settings.duration_s)
    store = featstore.init_store(os.path.join(workdir, "store.zarr"), clip_duration_s=settings.duration_s)
    summary = ingest(store, data)
    echo(f"[demo] ingest: added {summary.added}, {summary.total} clips in the store")
    reports = []
    for stage in (lambda: extract_audio(store, workers=workers), lambda: extract_frames(store, workers=workers, size=settings.frame_size)):
        reports.append(stage())
        _log_stage(reports[-1], echo)
    reports += _train_and_embed(store, settings, echo)
    exit_code = max((0 if r.ok else 3) for r in reports)
    records = _phase_two(store, settings, echo)
    paths = build_report(store, os.path.join(workdir, "report"), submission_split="evaluate")
    echo(f"[demo] report: {paths['html']}")
    return DemoResult(exit_code, store, records, paths["html"])


def run_demo(workdir: str, settings: DemoSettings | None = None, *, workers: int | None = None, echo: Callable[[str], None] = print) -> int:
    """Run :func:`run_pipeline` at ``settings`` (default :class:`DemoSettings`), print ``featstore
    info``, Table II and where the report is; return the exit code."""
    settings = settings or DemoSettings()
    start = time.perf_counter()
    visual = "tiny InceptionV3-like and ConvNeXt-like CNNs" if settings.visual_arch == "tiny" else "InceptionV3 and ConvNeXtTiny from random weights"
    echo(f"[demo] visual backbones: {visual}, on {settings.frame_size} px frames; seed {settings.seed}")
    result = run_pipeline(workdir, settings, workers=workers, echo=echo)
    applied = None if result.exit_code else to_submission(result.store, workdir, echo=echo)
    n_clips = int((result.store.clips["split"] == "evaluate").sum())
    rule = "=" * 100
    echo(f"\n{rule}\nfeatstore demo: summary ({time.perf_counter() - start:.0f} s, seed {settings.seed})\n{rule}")
    echo(format_info(store_info(result.store)))
    echo(f"\nTable II: evaluate split, {n_clips} clips from locations not seen in training, clip level.")
    echo("Late fusion is the best of MEAN / PROD / MAX chosen on the evaluate split itself (optimistic); f4 validates on train.")
    echo(table_two(result.records))
    if applied is not None:
        echo(f"\nSystem {applied['system']}: {applied['right']:.1f}% of {applied['files']} one-second files right "
             f"(cut from {applied['sources']} evaluate clips, the challenge's layout: {applied['eval_root']})")
        echo(f"Submission file: {applied['submission']}")
    echo(f"Report: {result.report_html}\n{rule}")
    return result.exit_code or (0 if applied and applied["ok"] else 3)


def to_submission(store, workdir: str, *, run: str = "demo-av-f4", clips_per_class: int = EVAL_CLIPS_PER_CLASS, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """From development to submission: export ``run`` as a system, cut ``clips_per_class`` evaluate
    clips of each class into the challenge's evaluation layout (1 s files), ingest them into a 1 s
    store, predict, and write the submission file. Made anew on every run (the fusion runs are retrained).

    Returns {system, eval_root, submission, files, sources, right (% of files decided right), ok}."""
    import csv
    import shutil

    from featstore.evalset import write_eval_layout
    from featstore.pipelines.predict import predict, write_predict_submission
    from featstore.pipelines.stages import system_from_run
    from featstore.system import System

    system_dir = os.path.join(workdir, f"system-{run}")
    eval_root = os.path.join(workdir, "TAU-urban-audio-visual-scenes-2021-evaluation")
    eval_store = os.path.join(workdir, "eval.zarr")
    for path in (system_dir, eval_root, eval_store):
        shutil.rmtree(path, ignore_errors=True)
    system_from_run(store, run).export(system_dir)
    evaluate = store.clips[store.clips["split"] == "evaluate"]
    sources = list(evaluate.groupby("label", sort=False).head(clips_per_class)["clip_id"])
    write_eval_layout(store, sources, eval_root)
    evaluation = featstore.init_store(eval_store, segment_s=store.segment_s, clip_duration_s=store.segment_s)
    ingest(evaluation, eval_root)
    report = predict(evaluation, System.load(system_dir))
    submission = os.path.join(workdir, "submission-eval.tsv")
    rows = write_predict_submission(evaluation, report.name, None, submission)
    with open(submission) as f, open(os.path.join(eval_root, "truth.csv")) as g:
        decided = {r["filename_audio"]: r["scene_label"] for r in csv.DictReader(f, delimiter="\t")}
        truth = {r["filename_audio"]: r["scene_label"] for r in csv.DictReader(g, delimiter="\t")}
    right = sum(decided.get(name) == label for name, label in truth.items())
    echo(f"[demo] export-system {run} -> {system_dir}; predict on {rows} one-second files -> {submission}")
    return {"system": system_dir, "eval_root": eval_root, "submission": submission, "files": rows, "sources": len(sources),
            "right": 100 * right / max(len(truth), 1), "ok": report.ok}
