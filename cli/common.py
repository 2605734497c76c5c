"""What every subcommand shares: exit codes, error reporting, opening the store."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click

import featstore
from featstore import names
from featstore.errors import FeatstoreError, FeatstoreWarning

#: Some clips failed (they are recorded; the others are done). Re-running retries only those.
EXIT_PARTIAL = 3


def fail(message: str) -> None:
    """Print ``featstore: error: MESSAGE`` to stderr and exit with status 1."""
    click.echo(f"featstore: error: {message}", err=True)
    sys.exit(1)


class FeatstoreGroup(click.Group):
    """The command group: a :class:`~featstore.errors.FeatstoreError` (bad input, a refused
    operation) or an ``OSError`` (disk full, permission denied) is printed as one line, exit status
    1. Any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (FeatstoreError, OSError) as exc:
            fail(str(exc))


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    if issubclass(category, FeatstoreWarning):
        click.echo(f"featstore: warning: {message}", err=True)
    else:
        _default(message, category, filename, lineno, file, line)


def install_warning_format() -> None:
    """Print featstore's own warnings (a stale lock taken over...) as ``featstore: warning: ...``,
    one line without Python's source location."""
    warnings.showwarning = _show_warning


def single_name_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``value`` must be a valid model or run name (see :mod:`featstore.names`)."""
    if value is None:
        return None
    try:
        return names.single_name(value, "--" + param.name.replace("_", "-"))
    except FeatstoreError as exc:
        raise click.BadParameter(str(exc)) from None


def open_store(store_url: str) -> featstore.Store:
    """Open the store at ``store_url`` or fail with its error."""
    try:
        return featstore.open_store(store_url)
    except featstore.StoreError as exc:
        fail(str(exc))
        raise  # unreachable
