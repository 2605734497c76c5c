"""`extract-audio` and `extract-frames`: the extraction stages' commands."""

from __future__ import annotations

import click

from featstore.cli.common import config_options, open_store, run_and_report, stage_options
from featstore.pipelines.extract_audio import AudioConfig
from featstore.pipelines.extract_frames import FramesConfig


@click.command("extract-audio")
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
    run_and_report(lambda progress: extract_audio(s, config, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress), as_json, quiet)


@click.command("extract-frames")
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
    run_and_report(lambda progress: extract_frames(s, config, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress), as_json, quiet)
