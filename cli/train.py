"""`featstore train-backbone`: train a Phase I backbone off the store and register it."""

from __future__ import annotations

import click

from featstore.cli.common import config_options, open_store
from featstore.cli.watch import start_watching, watch_options
from featstore.pipelines.train_backbone import TrainConfig


@click.command("train-backbone")
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
