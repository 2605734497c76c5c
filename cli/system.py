"""Applying a trained system: `export-system` (freeze a run into a checksummed directory) and
`predict` (a system, or a run of the same store, on a store's clips or on one video file)."""

from __future__ import annotations

import json
import sys

import click

from featstore.cli.common import EXIT_PARTIAL, config_options, open_store
from featstore.pipelines.predict import PredictOptions


@click.command("export-system")
@click.argument("store")
@click.option("--run", "run", required=True, help="A fusion run, or an ensemble of backbones and fusion runs.")
@click.option("--to", "target", required=True, help="New directory to write the system to.")
def export_system(store: str, run: str, target: str) -> None:
    """Freeze RUN of STORE into a directory: manifest.json, the .keras files, SHA256SUMS.

    \b
    Example:
      featstore export-system store.zarr --run fuse-f4-av --to systems/f4
    """
    from featstore.pipelines.stages import system_from_run

    system = system_from_run(open_store(store), run)
    system.export(target)
    click.echo(f"exported system {system.name} ({len(system.backbones)} backbones, {system.decision['kind']}) to {target} (digest {system.digest[:12]})")


@click.command("predict")
@click.argument("store", required=False)
@config_options(PredictOptions)
@click.option("--per-segment", is_flag=True, help="With --file: print every segment's probabilities, not only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def predict_cmd(store, per_segment, as_json, **fields):
    """Apply a trained system to the clips of STORE, recomputing only what is missing.

    Extraction with the system's parameters, embedding with its backbones (same cache keys as
    embed), then its fusion head or ensemble rule. Nothing is retrained; a re-run is a no-op.
    Exit code 3 when some clips failed (named on stderr).

    \b
    Examples:
      featstore predict eval.zarr --system systems/f4 --submission submission.tsv
      featstore predict store.zarr --run fuse-f4-av
      featstore predict --system systems/f4 --file my_video.mp4
      featstore predict --system systems/f4 --file my_video.mp4 --audio my_audio.wav
    """
    from featstore.errors import ConfigError
    from featstore.pipelines.predict import predict, predict_file, write_predict_submission
    from featstore.pipelines.stages import system_from_run
    from featstore.system import System

    options = PredictOptions(**fields)
    if options.video is not None:
        result = predict_file(System.load(options.system_dir), options.video, options.audio)
        click.echo(json.dumps(result) if as_json else _format_file_result(result, per_segment))
        return
    if store is None:
        raise ConfigError("STORE is required (or --file VIDEO)")
    s = open_store(store)
    system = System.load(options.system_dir) if options.system_dir else system_from_run(s, options.run)
    report = predict(s, system, name=options.name, clips=options.clips, workers=options.workers, scheduler=options.scheduler, progress=None, batch_units=options.batch_units)
    for failure in report.failures:
        click.echo(f"featstore: clip {failure['clip_id']} failed: {failure['error']}", err=True)
    if options.submission:
        rows = write_predict_submission(s, report.name, options.clips, options.submission)
        if not as_json:
            click.echo(f"submission: {options.submission} ({rows} clips)")
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(f"predict {report.name}: {report.done} predicted, {report.skipped} already predicted, {report.failed} failed in {report.seconds:.1f} s -> predictions/{report.name}")
    if not report.ok:
        sys.exit(EXIT_PARTIAL)


def _format_file_result(result: dict, per_segment: bool = False) -> str:
    """The clip's label and probabilities; each segment's row only with ``per_segment`` (a summary of
    the segments' labels otherwise: a 10-minute file has 600)."""
    lines = [f"{result['file']}: {result['label']} ({result['probability']:.3f})"]
    classes = result["classes"]
    lines.append("second  " + "  ".join(f"{c[:8]:>8}" for c in classes))
    if per_segment:
        for k, probs in enumerate(result["per_segment"]):
            lines.append(f"{k:>6}  " + "  ".join(f"{p:8.3f}" for p in probs))
    lines.append("clip    " + "  ".join(f"{p:8.3f}" for p in result["clip"]))
    if not per_segment:
        winners = [classes[max(range(len(p)), key=p.__getitem__)] for p in result["per_segment"]]
        counts = sorted(((winners.count(c), c) for c in set(winners)), reverse=True)
        lines.append(f"{len(winners)} segments, labelled " + ", ".join(f"{c} {n}" for n, c in counts) + " (--per-segment prints each)")
    return "\n".join(lines)
