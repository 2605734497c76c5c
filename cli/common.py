"""What every subcommand shares: the group that turns featstore's errors into one-line messages,
exit codes, opening the store, and click options generated from the stage configs."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

import featstore
from featstore import names
from featstore.errors import FeatstoreError, FeatstoreWarning

#: Some clips failed (they are recorded; the others are done). Re-running retries only those.
EXIT_PARTIAL = 3
#: ``verify`` found damage or inconsistencies.
EXIT_DAMAGED = 4


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
    """Open the store at ``store_url`` (its errors reach the group as one-line messages)."""
    return featstore.open_store(store_url)


def _split_commas(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def config_options(config_class: type) -> Callable:
    """Click options for every command-line field of a stage config dataclass.

    The default, help text and choices come from the field (``featstore.pipelines.config.option``),
    so a default lives in the config only. A tuple field is a comma-separated list; a bool field a
    flag. The command receives each field under its own name (``features``, ``sr``...).
    """

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(config_class)):
            meta = f.metadata
            if not meta.get("cli", True):
                continue
            flag, default, choices = "--" + f.name.replace("_", "-"), f.default, meta.get("choices")
            if isinstance(default, bool):
                option = click.option(flag, f.name, is_flag=True, default=default, help=meta["help"])
            elif isinstance(default, tuple):
                help_text = meta["help"] + (f" Any of {','.join(choices)}." if choices else "")
                option = click.option(flag, f.name, default=",".join(default), show_default=True, callback=_split_commas, help=help_text)
            else:
                kind = click.Choice(choices) if choices else type(default)
                option = click.option(flag, f.name, type=kind, default=default, show_default=True, help=meta["help"])
            func = option(func)
        return func

    return decorate
