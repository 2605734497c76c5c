"""`demo-data` (a generated dataset in the TAU 2021 layout) and `demo` (the main job end to end on it)."""

from __future__ import annotations

import sys

import click

from featstore.constants import CLIP_DURATION_S


@click.command("demo-data")
@click.argument("out")
@click.option("--clips-per-class", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--duration-s", type=click.FloatRange(min=0, min_open=True), default=CLIP_DURATION_S, show_default=True, help="Clip length (seconds).")
def demo_data(out: str, clips_per_class: int, seed: int, duration_s: float) -> None:
    """Write a small synthetic dataset in the TAU 2021 layout to OUT (wav 48 kHz 24-bit, H.264 mp4):
    audio alone confuses bus / metro / tram and the two streets, video alone the indoor halls and
    park / public_square (Getting started: the demo data); 30% of each class's clips, whole recording
    locations, form the evaluate split.

    \b
    Example:
      featstore demo-data data/ --clips-per-class 4 --seed 0
    """
    from featstore.demo import make_demo_dataset

    root = make_demo_dataset(out, clips_per_class=clips_per_class, seed=seed, duration_s=duration_s)
    click.echo(f"demo dataset: {root} ({10 * clips_per_class} clips)")


@click.command()
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
