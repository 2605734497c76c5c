"""Commands that create, fill and look after a store: `init`, `ingest`, `remove-clips`, `unlock`,
`info`, `export`, `import-h5` (`verify` has its own module: its options import the stages)."""

from __future__ import annotations

import json
import sys

import click

import featstore
from featstore.cli.common import EXIT_PARTIAL, open_store
from featstore.constants import CLIP_DURATION_S, SEGMENT_S, SHARD_MB
from featstore.info import format_info, store_info
from featstore.pipelines.ingest import FORMATS as INGEST_FORMATS


@click.command()
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


@click.command()
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


@click.command("remove-clips")
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
    from featstore.errors import ConfigError

    wanted = [c.strip() for c in clip_ids.split(",") if c.strip()]
    if not wanted:
        raise ConfigError("--clips names no clip: give comma-separated clip ids")
    s = open_store(store)
    removed = remove_clips(s, wanted)
    click.echo(f"removed {len(removed)} clip(s) ({int((~s.removed).sum())} left in store)")


@click.command()
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


@click.command()
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


@click.command()
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


@click.command("import-h5")
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
