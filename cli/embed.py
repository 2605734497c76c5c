"""`featstore embed`: cache a backbone's embeddings and predictions."""

from __future__ import annotations

import click

from featstore import tflog
from featstore.cli.common import config_options, open_store, output_options, run_and_report
from featstore.pipelines.embed import EmbedOptions


@click.command("embed")
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

    run_and_report(run, as_json, quiet)
