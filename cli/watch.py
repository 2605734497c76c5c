"""The training commands' ``--quiet`` and ``--verbose`` (``train-backbone``, ``train-joint``, ``fuse``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import click

from featstore import tflog
from featstore.progress import configure_logging


def watch_options(func: Callable) -> Callable:
    """Add ``--quiet`` (no epoch lines, no bar) and ``--verbose`` (debug logging and TensorFlow's
    own start-up messages) to a training command; it receives ``quiet`` and ``verbose``."""
    func = click.option("--verbose", is_flag=True, help="Also show debug logging and TensorFlow's start-up messages.")(func)
    return click.option("--quiet", is_flag=True, help="No per-epoch lines and no progress bar (the history is still written).")(func)


def start_watching(quiet: bool, verbose: bool) -> bool | None:
    """Set up the ``featstore`` logger and TensorFlow's messages for a command (call it before
    anything imports TensorFlow); returns the trainers' ``progress`` (None: a bar on a terminal,
    False: none)."""
    tflog.set_verbose(verbose)
    configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    return False if quiet else None
