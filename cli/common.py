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


def _comma_list(item: type) -> Callable:
    """A click callback: "a,b" -> (item("a"), item("b")); nothing -> None."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        return tuple(item(v.strip()) for v in value.split(",") if v.strip())

    return parse


def config_options(config_class: type) -> Callable:
    """Click options for every command-line field of a config dataclass (a stage's or a training
    command's).

    The default, help text and choices come from the field (``featstore.pipelines.config.option``),
    so a default lives in the config only. A tuple field is a comma-separated list; a bool field a
    flag (``--x/--no-x`` when on by default). Fields without a default, or with ``cli=False``, are
    left to the command. The command receives each field under its own name (``features``, ``sr``...).
    """

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(config_class)):
            meta, default = f.metadata, f.default
            if default is dataclasses.MISSING or not meta.get("cli", True) or "help" not in meta:
                continue
            flag = meta.get("flag") or "--" + f.name.replace("_", "-")
            choices, kind = meta.get("choices"), meta.get("kind")
            if isinstance(default, bool) and default:
                option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=True, show_default=True, help=meta["help"])
            elif isinstance(default, bool):
                option = click.option(flag, f.name, is_flag=True, default=False, help=meta["help"])
            elif isinstance(default, tuple) or (default is None and kind is not None and _is_list(f)):
                help_text = meta["help"] + (f" Any of {','.join(choices)}." if choices else "")
                item = kind or (type(default[0]) if default else str)
                shown = ",".join(map(str, default)) if default is not None else None
                option = click.option(flag, f.name, default=shown, show_default=default is not None, callback=_comma_list(item), help=help_text)
            else:
                typ = click.Choice(choices) if choices else (kind or type(default))
                option = click.option(flag, f.name, type=typ, default=default, show_default=default is not None, help=meta["help"])
            func = option(func)
        return func

    return decorate


def _is_list(f: dataclasses.Field) -> bool:
    """Whether a field's annotation is a tuple (``tuple[int, ...] | None``)."""
    return "tuple" in str(f.type)


def batch_units_option(func: Callable) -> Callable:
    """``--batch-units`` of embed and predict: default and help from ``EmbedConfig.batch_units``."""
    from featstore.pipelines.embed import EmbedConfig

    field = {f.name: f for f in dataclasses.fields(EmbedConfig)}["batch_units"]
    return click.option("--batch-units", type=click.IntRange(min=1), default=field.default, show_default=True, help=field.metadata["help"])(func)
