"""The `featstore` command: one click group, a subcommand per stage, each calling a function in
``pipelines/`` (the CLI mirrors the Python API).

Each subcommand lives in a module of this package by concern (:mod:`~featstore.cli.manage`: the
store; :mod:`~featstore.cli.verify`; :mod:`~featstore.cli.extract`, :mod:`~featstore.cli.embed`,
:mod:`~featstore.cli.train`: the batch stages and Phase I training; :mod:`~featstore.cli.phase2`:
fusion and reports; :mod:`~featstore.cli.system`: exported systems; :mod:`~featstore.cli.demo`) and
is imported only when it is run or listed: ``featstore init`` does not load the stages, dask or the
trainers, ``extract-audio`` not the trainers, and ``featstore --version`` answers at Python's
start-up cost.

Exit codes: 0 all requested clips done, 1 usage or store error, 3 some clips failed (the others are
done and recorded; re-run the same command to retry only the failed ones).
"""

from __future__ import annotations

import click

import featstore

# TensorFlow's start-up notices (absl, oneDNN) drown the CLI's output: filtered at its first import
# (featstore.tflog; a command's --verbose shows them).
from featstore import tflog  # noqa: E402

tflog.install()

from featstore.cli.common import FeatstoreGroup, install_warning_format  # noqa: E402

#: Subcommand name -> ``module:attribute`` of its click command, imported on first use.
COMMANDS = {
    "init": "featstore.cli.manage:init",
    "ingest": "featstore.cli.manage:ingest",
    "remove-clips": "featstore.cli.manage:remove_clips_cmd",
    "unlock": "featstore.cli.manage:unlock",
    "info": "featstore.cli.manage:info",
    "verify": "featstore.cli.verify:verify",
    "export": "featstore.cli.manage:export",
    "import-h5": "featstore.cli.manage:import_h5_cmd",
    "extract-audio": "featstore.cli.extract:extract_audio_cmd",
    "extract-frames": "featstore.cli.extract:extract_frames_cmd",
    "embed": "featstore.cli.embed:embed_cmd",
    "train-backbone": "featstore.cli.train:train_backbone_cmd",
    "fuse": "featstore.cli.phase2:fuse",
    "ensemble": "featstore.cli.phase2:ensemble",
    "report": "featstore.cli.phase2:report",
    "train-joint": "featstore.cli.phase2:train_joint",
    "export-system": "featstore.cli.system:export_system",
    "predict": "featstore.cli.system:predict_cmd",
    "demo-data": "featstore.cli.demo:demo_data",
    "demo": "featstore.cli.demo:demo",
}


@click.group(cls=FeatstoreGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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


if __name__ == "__main__":  # pragma: no cover
    main()
