"""Phase II subcommands: `fuse` (heads on cached embeddings), `ensemble` (late fusion), `report`, and
`train-joint` (an audio encoder trained against cached visual embeddings)."""

from __future__ import annotations

import json

import click

from featstore.cli.common import Choice, config_options, open_store
from featstore.constants import SPLITS
from featstore.pipelines.ensemble import EnsembleConfig
from featstore.cli.watch import start_watching, watch_options
from featstore.pipelines.fuse import FuseConfig
from featstore.pipelines.train_joint import JointConfig


def _summary(record: dict) -> str:
    m = record["metrics"]
    if not m:
        return f"{record['name']}: no labelled {record['split']!r} clips to measure"
    seg, clip = m["segment"], m["clip"]
    return (
        f"{record['name']} ({record['method']} on {'+'.join(record['models'])}): {record['split']} "
        f"segment accuracy {seg['accuracy']:.3f}, clip accuracy {clip['accuracy']:.3f}, "
        f"class-wise {clip['class_wise_accuracy']:.3f}, log-loss {clip['log_loss']:.3f}  "
        f"[best epoch {record['best_epoch']}, {record['trainable_params']} params, {record['seconds']['total']:.1f} s]"
    )


@click.command()
@click.argument("store")
@config_options(FuseConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the run record(s).")
@watch_options
def fuse(store, as_json, quiet, verbose, **options):
    """Phase II: train a head on cached embeddings, evaluate, save the run.

    Backbones are not run: only embeddings/MODEL/fc1024 (f1-f3), fc10 (f4-f6) or --layer (mlp,
    concat) are read, once, into memory (the GPU's when there is one). --method all prints the
    paper's Table I layout.

    \b
    Examples:
      featstore fuse store.zarr --method f4
      featstore fuse store.zarr --method all --modalities audio --epochs 50 --joint-mixup 0.3
      featstore fuse store.zarr --method mlp --models ResNet50 --layer avg_pool
      featstore fuse store.zarr --method concat --models aud-mel,ResNet50/avg_pool --joint-mixup 0.5
    """
    from featstore.pipelines.fuse import fuse_methods
    from featstore.runs import class_table, markdown_table

    start_watching(quiet, verbose)
    config = FuseConfig(**options)
    s = open_store(store)
    several = len(config.methods()) > 1
    records = fuse_methods(s, config.methods(), config)
    if as_json:
        click.echo(json.dumps(records if several else records[0]))
        return
    for record in records:
        click.echo(_summary(record))
    overlap = {m: f for m, f in records[0]["backbone_trained_on_fuse_train_clips"].items() if f}
    if overlap:
        shares = ", ".join(f"{m} {100 * f:.0f}%" for m, f in overlap.items())
        click.echo(f"note: the backbones were trained on these shares of the fuse training clips: {shares} (as in the papers)")
    if several and all(r["metrics"] for r in records):
        table = class_table(records, s.classes).rename(columns={r["name"]: r["method"] for r in records})
        click.echo(f"\nclip accuracy (%) on {config.split}, Table I layout:\n{markdown_table(table)}")


@click.command()
@click.argument("store")
@config_options(EnsembleConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the run record.")
def ensemble(store, rule, inputs, name, split, as_json):
    """Late fusion (MEAN / PROD / MAX) of stored predictions, each input's clip probability being the
    mean over its segments or frames; saved as a run with its metrics.

    \b
    Example:
      featstore ensemble store.zarr --rule prod --inputs aud-mel,aud-gam,aud-cqt
    """
    from featstore.pipelines.ensemble import ensemble as run_ensemble

    s = open_store(store)
    record = run_ensemble(s, list(inputs), rule=rule, name=name, split=split)
    if as_json:
        click.echo(json.dumps(record))
        return
    m = record["metrics"].get("clip")
    click.echo(f"run {record['name']}: {record['clips']} clips combined with {rule.upper()}")
    if m:
        click.echo(f"  {split}: accuracy {m['accuracy']:.3f}  class-wise accuracy {m['class_wise_accuracy']:.3f}  log-loss {m['log_loss']:.3f}  ({m['n']} clips)")


@click.command()
@click.argument("store")
@click.option("--out", "out_dir", required=True, help="Directory for report.html, report.md, the PNGs and submissions.")
@click.option("--split", type=Choice(SPLITS), default="evaluate", show_default=True, help="Split the metrics are computed on.")
@click.option("--submission-split", type=Choice(SPLITS), default="test", show_default=True, help="Clips written to the DCASE submission files.")
def report(store, out_dir, split, submission_split):
    """An HTML and Markdown report of every run and model: a leaderboard (best per modality marked),
    per-class bars and Table I, meta-class accuracy, confusion matrices with counts, learning curves,
    accuracy over seconds seen, DCASE submission files.

    \b
    Example:
      featstore report store.zarr --out report/
    """
    from featstore.pipelines.report import build_report

    paths = build_report(open_store(store), out_dir, split=split, submission_split=submission_split)
    click.echo(f"report: {paths['html']} (and {paths['markdown']})")


@click.command("train-joint")
@click.argument("store")
@config_options(JointConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the registry entry.")
@watch_options
def train_joint(store, as_json, quiet, verbose, **options):
    """Train an acoustic encoder jointly with a classifier that also sees the cached visual embedding
    of the same window (Chen et al. 2022); the visual encoder never runs. Registers the model.

    \b
    Examples:
      featstore train-joint store.zarr --name joint-mel --visual-model vis-inc --epochs 20
      featstore train-joint store.zarr --name audio-mel --epochs 20     # its audio-only baseline
    """
    from featstore.pipelines.train_joint import train_joint as run_train_joint

    progress = start_watching(quiet, verbose)
    config = JointConfig(**options)
    entry = run_train_joint(open_store(store), config, progress=progress)
    if as_json:
        click.echo(json.dumps(entry))
        return
    m = entry["config"]["metrics"]
    split = entry["config"]["split"]
    measured = f"; {split} clip accuracy {m[split]['clip']['accuracy']:.3f}" if m.get(split) else ""
    click.echo(f"{config.name}: best epoch {m['best_epoch']}, val_loss {m['val_loss']:.4f}, val_accuracy {m['val_accuracy']:.3f}{measured}; registered (fingerprint {entry['fingerprint'][:12]})")
