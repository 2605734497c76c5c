"""The `featstore` command: one click group, a subcommand per stage, each calling a function in
``pipelines/`` (the CLI mirrors the Python API).

Exit codes: 0 all requested clips done, 1 usage or store error, 3 some clips failed (the others are
done and recorded; re-run the same command to retry only the failed ones).
"""

from __future__ import annotations

import json
import os
import sys

import click

import featstore
from featstore.info import format_info, store_info

EXIT_PARTIAL = 3


def _fail(message: str) -> None:
    click.echo(f"featstore: error: {message}", err=True)
    sys.exit(1)


def _open(store_url: str) -> featstore.Store:
    try:
        return featstore.open_store(store_url)
    except featstore.StoreError as exc:
        _fail(str(exc))
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@click.argument("store")
@click.option("--segment-s", type=float, default=1.0, show_default=True, help="Segment grid step (seconds).")
@click.option("--clip-duration-s", type=float, default=10.0, show_default=True, help="Nominal clip length (seconds).")
def init(store: str, segment_s: float, clip_duration_s: float) -> None:
    """Create a store at STORE (a directory, or an fsspec URL such as memory://x or s3://bucket/x).

    \b
    Example:
      featstore init store.zarr --segment-s 1.0
    """
    try:
        s = featstore.init_store(store, segment_s=segment_s, clip_duration_s=clip_duration_s)
    except featstore.StoreError as exc:
        _fail(str(exc))
    click.echo(f"store ready at {s.url}")


@main.command()
@click.argument("store")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["tau2021", "csv"]), default="tau2021", show_default=True)
@click.option("--fold", type=int, default=1, show_default=True, help="Evaluation-setup fold (tau2021).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def ingest(store: str, source: str, fmt: str, fold: int, as_json: bool) -> None:
    """Read a dataset (SOURCE: TAU 2021 root, or a CSV file) into STORE's clips table.

    Re-ingesting the same dataset is a no-op; new clips are appended. Clips whose files are missing
    are ingested and recorded as failures (exit code 3).

    \b
    Examples:
      featstore ingest store.zarr TAU-urban-audio-visual-scenes-2021-development/
      featstore ingest store.zarr --format csv clips.csv
    """
    from featstore.ingest import IngestError
    from featstore.clips import ClipConflict
    from pipelines.ingest import ingest as run_ingest

    s = _open(store)
    try:
        summary = run_ingest(s, source, fmt=fmt, fold=fold)
    except (IngestError, ClipConflict, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps({"added": summary.added, "total": summary.total,
                               "missing": [{"clip_id": c, "error": m} for c, m in summary.missing]}))
    else:
        click.echo(f"added {summary.added} clips ({summary.total} in store)")
        for clip_id, message in summary.missing:
            click.echo(f"  missing: {clip_id}: {message}", err=True)
    if summary.missing:
        sys.exit(EXIT_PARTIAL)


@main.command("demo-data")
@click.argument("out")
@click.option("--clips-per-class", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration-s", type=float, default=10.0, show_default=True, help="Clip length (seconds).")
def demo_data(out: str, clips_per_class: int, seed: int, duration_s: float) -> None:
    """Write a small synthetic dataset in the TAU 2021 layout to OUT (wav 48 kHz 24-bit, H.264 mp4).

    \b
    Example:
      featstore demo-data data/ --clips-per-class 4 --seed 0
    """
    from featstore.demo import make_demo_dataset

    root = make_demo_dataset(out, clips_per_class=clips_per_class, seed=seed, duration_s=duration_s)
    click.echo(f"demo dataset: {root} ({10 * clips_per_class} clips)")


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def info(store: str, as_json: bool) -> None:
    """What STORE holds: clips per split and label, arrays (shape, dtype, chunks, done, size), failures.

    \b
    Example:
      featstore info store.zarr --json
    """
    summary = store_info(_open(store))
    click.echo(json.dumps(summary, indent=2) if as_json else format_info(summary))


if __name__ == "__main__":  # pragma: no cover
    main()
