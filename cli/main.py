"""The `featstore` command: one click group, a subcommand per stage, each calling a function in
``pipelines/`` (the CLI mirrors the Python API).

Exit codes: 0 all requested clips done, 1 usage or store error, 3 some clips failed (the others are
done and recorded; re-run the same command to retry only the failed ones).
"""

from __future__ import annotations

import json
import sys

import click

import featstore
from featstore.constants import SHARD_MB
from featstore.info import format_info, store_info

# TensorFlow's start-up notices (absl, oneDNN) drown the CLI's output: filtered at its first import
# (featstore.tflog; a command's --verbose shows them).
from featstore import tflog  # noqa: E402

tflog.install()

from featstore.cli.common import EXIT_DAMAGED, EXIT_PARTIAL, FeatstoreGroup, config_options, install_warning_format, open_store  # noqa: E402
from featstore.cli.phase2 import ensemble, fuse, report, train_joint  # noqa: E402
from featstore.cli.system import export_system, predict_cmd  # noqa: E402
from featstore.pipelines.extract_audio import AudioConfig  # noqa: E402
from featstore.pipelines.config import RunOptions  # noqa: E402
from featstore.pipelines.embed import EmbedOptions  # noqa: E402
from featstore.pipelines.extract_frames import FramesConfig  # noqa: E402
from featstore.pipelines.train_backbone import TrainConfig  # noqa: E402
from featstore.pipelines.verify import VerifyOptions  # noqa: E402
from featstore.pipelines.ingest import FORMATS as INGEST_FORMATS  # noqa: E402
from featstore.constants import CLIP_DURATION_S, SEGMENT_S  # noqa: E402
from featstore.cli.watch import start_watching, watch_options  # noqa: E402


@click.group(cls=FeatstoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(featstore.__version__, prog_name="featstore")
def main() -> None:
    """featstore: cache audio-visual features (spectrograms, frames, embeddings) in a Zarr store.

    \b
    Example, end to end on generated data:
      featstore demo-data data/ --clips-per-class 4
      featstore init store.zarr
      featstore ingest store.zarr --format tau2021 data/
      featstore extract-audio store.zarr --features mel,gam,cqt
      featstore info store.zarr
    """
    install_warning_format()


@main.command()
@click.argument("store")
@click.option("--segment-s", type=float, default=SEGMENT_S, show_default=True, help="Segment grid step (seconds).")
@click.option("--clip-duration-s", type=float, default=CLIP_DURATION_S, show_default=True, help="Nominal clip length (seconds).")
@click.option("--classes", default=None, help="Comma-separated class names, the label map (default: TAU's ten scenes, or the labels of the first CSV manifest ingested when it has others).")
@click.option("--shard-mb", type=float, default=SHARD_MB, show_default=True, help="Uncompressed MiB of clips per stored object of each array (0: one object per clip).")
def init(store: str, segment_s: float, clip_duration_s: float, classes: str | None, shard_mb: float) -> None:
    """Create a store at STORE (a directory, or an fsspec URL such as memory://x or s3://bucket/x).

    \b
    Example:
      featstore init store.zarr --segment-s 1.0
    """
    names = [c.strip() for c in classes.split(",")] if classes is not None else None
    s = featstore.init_store(store, segment_s=segment_s, clip_duration_s=clip_duration_s, classes=names, shard_mb=shard_mb)
    click.echo(f"store ready at {s.url}")


@main.command()
@click.argument("store")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(list(INGEST_FORMATS)), default="tau2021", show_default=True, help="tau2021: the development layout, or the evaluation layout when detected; tau2021-eval: the evaluation layout; csv: a generic manifest.")
@click.option("--fold", type=int, default=1, show_default=True, help="Evaluation-setup fold (tau2021).")
@click.option("--replace", is_flag=True, help="Correct clips already in the store whose row in SOURCE differs (paths, label, split, location, file contents), in place; their stages recompute them. Also restores removed clips.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def ingest(store: str, source: str, fmt: str, fold: int, replace: bool, as_json: bool) -> None:
    """Read a dataset (SOURCE: TAU 2021 root, or a CSV file) into STORE's clips table.

    Re-ingesting the same dataset is a no-op; new clips are appended. A clip whose path, label or
    split differs is refused unless --replace is given. Clips whose files are missing are ingested
    and recorded as failures (exit code 3).

    \b
    Examples:
      featstore ingest store.zarr TAU-urban-audio-visual-scenes-2021-development/
      featstore ingest store.zarr --format csv clips.csv
      featstore ingest store.zarr --format csv corrected.csv --replace
    """
    from featstore.pipelines.ingest import ingest as run_ingest

    s = open_store(store)
    summary = run_ingest(s, source, fmt=fmt, fold=fold, replace=replace)
    if as_json:
        click.echo(json.dumps({"added": summary.added, "replaced": summary.replaced, "total": summary.total,
                               "missing": [{"clip_id": c, "error": m} for c, m in summary.missing]}))
    else:
        replaced = f", replaced {len(summary.replaced)}" if replace else ""
        click.echo(f"added {summary.added} clips{replaced} ({summary.total} in store)")
        for clip_id, message in summary.missing:
            click.echo(f"  missing: {clip_id}: {message}", err=True)
    if summary.missing:
        sys.exit(EXIT_PARTIAL)


@main.command("remove-clips")
@click.argument("store")
@click.option("--clips", "clip_ids", required=True, help="Comma-separated clip ids to remove.")
def remove_clips_cmd(store: str, clip_ids: str) -> None:
    """Remove clips from STORE: every stage, training, prediction and `info` skip them from now on.

    Their rows stay (rows of every array are clip positions) and their done-marks are cleared;
    `ingest --replace` of a source listing them restores them.

    \b
    Example:
      featstore remove-clips store.zarr --clips airport-lisbon-1000-40000-a,bus-lyon-1001-40001-a
    """
    from featstore.clip_edits import remove_clips

    s = open_store(store)
    removed = remove_clips(s, [c.strip() for c in clip_ids.split(",") if c.strip()])
    click.echo(f"removed {len(removed)} clip(s) ({int((~s.removed).sum())} left in store)")


@main.command()
@click.argument("store")
@click.option("--array", "arrays", multiple=True, help="Only this array's lock (repeatable; default: every lock of the store).")
def unlock(store: str, arrays: tuple[str, ...]) -> None:
    """Break the locks of STORE left by a process that no longer writes it (another program reusing its pid).

    Only when no featstore command is writing the store: a live writer's lock keeps it safe.

    \b
    Example:
      featstore unlock store.zarr --array audio/mel
    """
    from featstore.lock import break_locks

    removed = break_locks(open_store(store).side, list(arrays) or None)
    click.echo(f"removed {len(removed)} lock(s)" + "".join(f"\n  {path}" for path in removed))


@main.command("demo-data")
@click.argument("out")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration-s", type=float, default=CLIP_DURATION_S, show_default=True, help="Clip length (seconds).")
def demo_data(out: str, clips_per_class: int, seed: int, duration_s: float) -> None:
    """Write a small synthetic dataset in the TAU 2021 layout to OUT (wav 48 kHz 24-bit, H.264 mp4):
    audio alone confuses bus / metro / tram and the two streets, video alone the indoor halls and
    park / public_square (README: The demo data); 30% of each class's clips, whole recording
    locations, form the evaluate split.

    \b
    Example:
      featstore demo-data data/ --clips-per-class 4 --seed 0
    """
    from featstore.demo import make_demo_dataset

    root = make_demo_dataset(out, clips_per_class=clips_per_class, seed=seed, duration_s=duration_s)
    click.echo(f"demo dataset: {root} ({10 * clips_per_class} clips)")


def stage_options(func):
    """The options every batch stage shares: how it runs (:class:`~featstore.pipelines.config.RunOptions`)
    and how the command prints (``--json``, ``--quiet``)."""
    return config_options(RunOptions)(output_options(func))


def output_options(func):
    """``--json`` and ``--quiet`` of a batch stage."""
    func = click.option("--quiet", is_flag=True, help="No progress bar.")(func)
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")(func)


def _run_stage(run, as_json: bool, quiet: bool) -> None:
    """Call ``run(progress)``, print its StageReport, exit 0 (all done) or 3 (some clips failed)."""
    report = run(None if not quiet else False)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(
            f"{report.stage}: {report.done} done, {report.skipped} already done, {report.failed} failed "
            f"in {report.seconds:.1f} s -> {', '.join(report.arrays)}"
        )
    if not report.ok:
        sys.exit(EXIT_PARTIAL)


@main.command("extract-audio")
@click.argument("store")
@config_options(AudioConfig)
@stage_options
def extract_audio_cmd(store, workers, scheduler, clips, overwrite, as_json, quiet, **config_fields):
    """Log spectrograms (MEL, Gammatone, CQT, MFCC...) of every clip, (clip, 2, bins, frames), on dask.

    Resumable: a re-run does no work for clips already done; changed parameters are refused
    unless --overwrite or --name NEW. Exit code 3 when some clips failed (they are recorded).

    \b
    Example:
      featstore extract-audio store.zarr --features mel,gam,cqt --workers 2
    """
    from featstore.pipelines.extract_audio import extract_audio

    config, s = AudioConfig(**config_fields), open_store(store)
    _run_stage(lambda progress: extract_audio(s, config, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress), as_json, quiet)


@main.command("extract-frames")
@click.argument("store")
@config_options(FramesConfig)
@stage_options
def extract_frames_cmd(store, workers, scheduler, clips, overwrite, as_json, quiet, **config_fields):
    """Video frames nearest to k/FPS seconds, SIZE x SIZE RGB uint8, (clip, frame, SIZE, SIZE, 3), on dask.

    Resumable and failure-tolerant like extract-audio; frame times go to NAME/time_s.

    \b
    Example:
      featstore extract-frames store.zarr --fps 2 --size 224 --workers 2
    """
    from featstore.pipelines.extract_frames import extract_frames

    config, s = FramesConfig(**config_fields), open_store(store)
    _run_stage(lambda progress: extract_frames(s, config, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress), as_json, quiet)


@main.command()
@click.argument("store")
@click.option("--to", "target", required=True, help="The .h5 file to write.")
@click.option("--arrays", default=None, help="Comma-separated array paths (default: all).")
def export(store: str, target: str, arrays: str | None) -> None:
    """Write arrays and the clips table of STORE to one HDF5 file (same names, provenance as attributes).

    \b
    Example:
      featstore export store.zarr --to features.h5 --arrays audio/mel,frames/rgb
    """
    from featstore.hdf5 import export_h5

    s = open_store(store)
    written = export_h5(s, target, [a.strip() for a in arrays.split(",")] if arrays else None)
    click.echo(f"exported {', '.join(written)} and the clips table to {target}")


@main.command("import-h5")
@click.argument("store")
@click.argument("source")
def import_h5_cmd(store: str, source: str) -> None:
    """Register the arrays of an HDF5 file (from `featstore export` or another tool) in STORE.

    Their provenance is marked external (stage import-h5) and keeps the original.

    \b
    Example:
      featstore import-h5 store.zarr features.h5
    """
    from featstore.hdf5 import import_h5

    s = open_store(store)
    imported = import_h5(s, source)
    click.echo(f"imported {', '.join(imported)}")


@main.command("train-backbone")
@click.argument("store")
@config_options(TrainConfig)
@watch_options
def train_backbone_cmd(store, quiet, verbose, **options):
    """Train a Phase I backbone on the train split (validation carved by location), register it.

    \b
    Example:
      featstore train-backbone store.zarr --model aud-mel --epochs 20 --batch-size 64
    """
    from featstore.pipelines.train_backbone import train_backbone

    progress = start_watching(quiet, verbose)
    config = TrainConfig(**options)
    entry = train_backbone(open_store(store), config, progress=progress)
    m = entry["config"]["metrics"]
    click.echo(f"{config.model}: best epoch {m['best_epoch']}, val_loss {m['val_loss']:.4f}, val_accuracy {m['val_accuracy']:.3f}; registered (fingerprint {entry['fingerprint'][:12]})")


@main.command("embed")
@click.argument("store")
@config_options(EmbedOptions)
@output_options
@click.option("--verbose", is_flag=True, help="Show TensorFlow's start-up messages.")
def embed_cmd(store, as_json, quiet, verbose, **options):
    """Cache a backbone's FC(1024) / FC(10) embeddings and softmax predictions for every clip.

    Forward passes over the units of many clips at once (--batch-units) write
    embeddings/MODEL/fc1024, embeddings/MODEL/fc10 (pre-softmax) and predictions/MODEL. A re-run with the same model and inputs does no inference; a new model
    file or re-made input invalidates and recomputes, saying so.

    \b
    Examples:
      featstore embed store.zarr --model aud-mel --model-file aud-mel.keras --layer all
      featstore embed store.zarr --model keras:ResNet50 --weights resnet50.h5 --layer avg_pool
    """
    from featstore.pipelines.embed import embed

    tflog.set_verbose(verbose)
    keywords, s = EmbedOptions(**options).keywords(), open_store(store)

    def run(progress):
        report, note = embed(s, **keywords, progress=progress)
        if note:
            click.echo(f"featstore: {note}", err=True)
        return report

    _run_stage(run, as_json, quiet)


@main.command()
@click.argument("store")
@config_options(VerifyOptions)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def verify(store: str, arrays: tuple[str, ...] | None, repair: bool, workers: int, as_json: bool) -> None:
    """Check every done chunk of STORE (checksums), done-marks, tables and shapes; clean temp files.

    Exit code 0 when all is well, 4 when damage or inconsistencies remain.

    \b
    Examples:
      featstore verify store.zarr
      featstore verify store.zarr --arrays audio/mel --repair
    """
    from featstore.verify import verify_store
    from featstore.pipelines.verify import repair as run_repair

    s = open_store(store)
    selected = list(arrays) if arrays else None
    report = verify_store(s, selected)
    if repair and report.damaged:
        for run in run_repair(s, report, workers=workers, on_unrepairable=lambda line: click.echo(line, err=True)):
            click.echo(f"repaired {run.done} clip(s) of {', '.join(run.arrays)}", err=True)
        report = verify_store(s, selected)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(f"checked {report.clips_checked} clip chunks in {len(report.arrays)} arrays; removed {report.partial_files_removed} temp files")
        for d in report.damaged:
            click.echo(f"DAMAGED {d.array} clip {d.clip_id}: {d.reason}")
        for problem in report.problems:
            click.echo(f"PROBLEM {problem}")
        click.echo("ok" if report.ok else "damage found (featstore verify --repair recomputes damaged clips)")
    if not report.ok:
        sys.exit(EXIT_DAMAGED)


@main.command()
@click.argument("workdir", default="demo-out")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=None, help="Clips per class (default: 12; 30% of them, whole locations, are evaluated).")
@click.option("--paper-visual", is_flag=True, help="Train the papers' InceptionV3 and ConvNeXtTiny (random weights, 75 px) instead of the tiny visual CNNs: much slower on a CPU.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Local dask worker processes (default: cores).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of the generated data and of every training run (default: 0).")
def demo(workdir: str, clips_per_class: int | None, paper_visual: bool, workers: int | None, seed: int | None) -> None:
    """The main job end to end on generated demo data, in WORKDIR: demo-data, init, ingest, every
    stage (five backbones, fuse f1..f6 and late fusion per modality), report, info, and a summary in
    the layout of the two-phase paper's Table II.

    \b
    Example:
      featstore demo demo-out
    """
    from dataclasses import replace

    from featstore.pipelines.demo import DemoSettings, run_demo

    settings = replace(DemoSettings(), visual_arch="paper" if paper_visual else "tiny")
    if clips_per_class is not None:
        settings = replace(settings, clips_per_class=clips_per_class)
    if seed is not None:
        settings = replace(settings, seed=seed)
    sys.exit(run_demo(workdir, settings, workers=workers, echo=click.echo))


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def info(store: str, as_json: bool) -> None:
    """What STORE holds: clips per split and label, arrays (shape, dtype, chunks, done, size), failures.

    \b
    Example:
      featstore info store.zarr --json
    """
    summary = store_info(open_store(store))
    click.echo(json.dumps(summary, indent=2) if as_json else format_info(summary))


for command in (fuse, ensemble, report, train_joint, export_system, predict_cmd):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
