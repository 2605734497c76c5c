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
from featstore.pipelines.runner import IN_PROCESS_CLIP_S

#: What ``--workers`` defaults to, for the batch stages (and predict's extraction).
WORKERS_DEFAULT_HELP = f"default: one per core, in-process when the clips to do hold at most {IN_PROCESS_CLIP_S:.0f} s; 0 = in-process"
from featstore.pipelines.config import describe_range, flag_of

#: Some clips failed (they are recorded; the others are done). Re-running retries only those.
EXIT_PARTIAL = 3
#: ``verify`` found damage or inconsistencies.
EXIT_DAMAGED = 4
#: Modules only some commands import (training, embedding, prediction) -> the package that provides them.
OPTIONAL_MODULES = {"keras": "tensorflow-cpu", "tensorflow": "tensorflow-cpu"}


def fail(message: str) -> None:
    """Print ``featstore: error: MESSAGE`` to stderr, on one line, and exit with status 1."""
    click.echo(f"featstore: error: {' '.join(message.splitlines())}", err=True)
    sys.exit(1)


class FeatstoreGroup(click.Group):
    """The command group: a :class:`~featstore.errors.FeatstoreError` (bad input, a refused
    operation) or an ``OSError`` (disk full, permission denied) is printed as one line, exit status
    1; a usage error (an unknown option, a value click cannot parse) as one line, exit status 2.
    Any other exception is a bug and keeps its traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
            click.echo(f"featstore: error: {' '.join(exc.format_message().split())}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("featstore: aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (FeatstoreError, OSError) as exc:
            fail(str(exc))
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL_MODULES:
                raise
            fail(f"featstore {ctx.invoked_subcommand} needs {OPTIONAL_MODULES[exc.name]}, which is not installed: pip install {OPTIONAL_MODULES[exc.name]}")


class Choice(click.Choice):
    """``click.Choice`` whose error also names the closest choice (``did you mean 'f4'?``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:
            raise click.BadParameter(exc.message.rstrip('.') + names.closest(value, self.choices), ctx, param) from None


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
        try:
            return tuple(item(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {item.__name__} values", ctx, param) from None

    return parse


def config_options(config_class: type) -> Callable:
    """Click options for every command-line field of a config dataclass (a stage's or a training
    command's).

    The default, help text and choices come from the field (``featstore.pipelines.config.option``),
    so a default lives in the config only; ranges are checked by the config itself, so the CLI and
    the Python API refuse the same values. A tuple field is a comma-separated list; a bool field a
    flag (``--x/--no-x`` when on by default); a field declared without a default a required option.
    Fields without ``option(...)`` metadata, or with ``cli=False``, are left to the command. The command receives each field under its own name (``features``, ``sr``...).
    """

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(config_class)):
            meta, default = f.metadata, f.default
            if not meta.get("cli", True) or "help" not in meta:
                continue
            flag = flag_of(f)
            choices, kind = meta.get("choices"), meta.get("kind")
            bounds = meta.get("range")
            help_text = meta["help"] + (f" Allowed: {describe_range(bounds)}." if bounds else "")
            if default is dataclasses.MISSING and _is_list(f):
                option = click.option(flag, f.name, required=True, callback=_comma_list(kind or str), help=help_text)
            elif default is dataclasses.MISSING:
                typ = Choice(choices) if choices else (kind or _annotation_type(f))
                option = click.option(flag, f.name, type=typ, required=True, help=help_text)
            elif isinstance(default, bool) and default:
                option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=True, show_default=True, help=meta["help"])
            elif isinstance(default, bool):
                option = click.option(flag, f.name, is_flag=True, default=False, help=meta["help"])
            elif isinstance(default, tuple) or (default is None and kind is not None and _is_list(f)):
                help_text += f" Any of {','.join(choices)}." if choices else ""
                item = kind or (type(default[0]) if default else str)
                shown = ",".join(map(str, default)) if default is not None else None
                option = click.option(flag, f.name, default=shown, show_default=default is not None, callback=_comma_list(item), help=help_text)
            else:
                typ = Choice(choices) if choices else (kind or type(default))
                option = click.option(flag, f.name, type=typ, default=default, show_default=default is not None, help=help_text)
            func = option(func)
        return func

    return decorate


def _is_list(f: dataclasses.Field) -> bool:
    """Whether a field's annotation is a tuple (``tuple[int, ...] | None``)."""
    return "tuple" in str(f.type)


def _annotation_type(f: dataclasses.Field) -> type:
    """``int`` / ``float`` / ``str`` from a field's annotation (a required option's value type)."""
    text = str(f.type)
    return int if text.startswith("int") else float if text.startswith("float") else str


def batch_units_option(func: Callable) -> Callable:
    """``--batch-units`` of embed and predict: default and help from ``EmbedConfig.batch_units``."""
    from featstore.pipelines.embed import EmbedConfig

    field = {f.name: f for f in dataclasses.fields(EmbedConfig)}["batch_units"]
    return click.option("--batch-units", type=click.IntRange(min=1), default=field.default, show_default=True, help=field.metadata["help"])(func)
