"""`featstore verify`: check a store's chunks, done-marks and tables, and repair what a stage can recompute."""

from __future__ import annotations

import json
import sys

import click

from featstore.cli.common import EXIT_DAMAGED, config_options, open_store
from featstore.pipelines.verify import VerifyOptions


@click.command()
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
