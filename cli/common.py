"""What every subcommand shares: the group that turns featstore's errors into one-line messages,
exit codes, opening the store, click options generated from the stage configs, and the batch
stages' shared options and report line."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

import featstore
from featstore import names
from featstore.errors import ConfigError, FeatstoreError, FeatstoreWarning, first_line
from featstore.pipelines.config import RunOptions, check_field, describe_range, flag_of

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
    Any other exception is a bug and keeps its traceback.

    ``lazy_commands`` maps subcommand names to ``"module:attribute"`` of click commands, imported
    the first time the group looks one up (click's lazy-loading pattern), so that a command pays
    only for its own imports.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, attribute = self.lazy_commands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

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
        except FeatstoreError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(os_error_line(exc))
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL_MODULES:
                raise
            fail(f"featstore {ctx.invoked_subcommand} needs {OPTIONAL_MODULES[exc.name]}, which is not installed: pip install {OPTIONAL_MODULES[exc.name]}")


#: What to do about the OS errors a path given on the command line causes (the most specific first)
OS_ERROR_FIXES = (
    (FileExistsError, "a file is in the way: give a path that does not exist, or a folder"),
    (NotADirectoryError, "a file is where a folder is needed: give a folder's path"),
    (IsADirectoryError, "a folder is where a file is needed: give a file's path"),
    (FileNotFoundError, "check the path, and that its folder exists"),
    (PermissionError, "check the path's permissions"),
)


def os_error_line(exc: OSError) -> str:
    """An ``OSError`` as one line: its first line, with what to do where the kind says it."""
    text = first_line(exc)
    fix = next((fix for kind, fix in OS_ERROR_FIXES if isinstance(exc, kind)), None)
    return f"{text} ({fix})" if fix else text


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


def open_store(store_url: str) -> featstore.Store:
    """Open the store at ``store_url`` (its errors reach the group as one-line messages)."""
    return featstore.open_store(store_url)


def _comma_list(item: type) -> Callable[[str | None], tuple | None]:
    """"a,b" -> (item("a"), item("b")); nothing -> None; a :class:`~featstore.errors.ConfigError`
    naming the list for an item ``item`` refuses."""

    def parse(value: str | None) -> tuple | None:
        try:
            return None if value is None else tuple(item(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"{value!r} is not a comma-separated list of {item.__name__} values") from None

    return parse


def _callback(f: dataclasses.Field, parse: Callable[[Any], Any] | None) -> Callable | None:
    """The click callback of field ``f``: ``parse`` a comma-separated list, and for a usage option
    (``option(..., usage=True)``) check the value, so that a refused one is a usage error."""
    usage = f.metadata.get("usage")
    if parse is None and not usage:
        return None

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            value = value if parse is None else parse(value)
            if usage:
                check_field(f, value)
        except FeatstoreError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        return value

    return callback


def config_options(config_class: type) -> Callable:
    """Click options for every command-line field of a config dataclass (a stage's, a training
    command's, or the options of a command such as ``predict``).

    The default, help text and choices come from the field (``featstore.pipelines.config.option``),
    so a default lives in the config only; ranges are checked by the config itself, so the CLI and
    the Python API refuse the same values (a usage option's already while parsing, exit status 2).
    A tuple field is a comma-separated list; a bool field a flag (``--x/--no-x`` when on by
    default); a field declared without a default a required option. Fields without
    ``option(...)`` metadata, or with ``cli=False``, are left to the command. The command receives
    each field under its own name (``features``, ``sr``...).
    """

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(config_class)):
            if f.metadata.get("cli", True) and "help" in f.metadata:
                func = _click_option(f)(func)
        return func

    return decorate


def _click_option(f: dataclasses.Field) -> Callable:
    """The click option of one config field (see :func:`config_options`)."""
    meta, default, flag = f.metadata, f.default, flag_of(f)
    choices, kind, bounds = meta.get("choices"), meta.get("kind"), meta.get("range")
    shown_range = f" Allowed: {describe_range(bounds)}." if bounds and not meta.get("usage") else ""
    help_text, common = meta["help"] + shown_range, {"envvar": meta.get("envvar")}
    if isinstance(default, bool) and default:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=True, show_default=True, callback=_callback(f, None), help=meta["help"], **common)
    if isinstance(default, bool):
        return click.option(flag, f.name, is_flag=True, default=False, callback=_callback(f, None), help=meta["help"], **common)
    if _is_list(f) and (default is dataclasses.MISSING or default is None or isinstance(default, tuple)):
        help_text += f" Any of {','.join(choices)}." if choices and default is not dataclasses.MISSING else ""
        item = kind or (type(default[0]) if isinstance(default, tuple) and default else str)
        callback = _callback(f, _comma_list(item))
        if default is dataclasses.MISSING:
            return click.option(flag, f.name, required=True, callback=callback, help=help_text, **common)
        shown = ",".join(map(str, default)) if default is not None else None
        return click.option(flag, f.name, default=shown, show_default=default is not None, callback=callback, help=help_text, **common)
    typ = kind or (_annotation_type(f) if default is dataclasses.MISSING else type(default))
    typ = Choice(choices) if choices else _range_type(typ, bounds) if meta.get("usage") else typ
    if default is dataclasses.MISSING:
        return click.option(flag, f.name, type=typ, required=True, callback=_callback(f, None), help=help_text, **common)
    return click.option(flag, f.name, type=typ, default=default, show_default=default is not None, callback=_callback(f, None), help=help_text, **common)


def _range_type(kind: type, bounds: dict[str, float] | None) -> Any:
    """``kind``, or click's range of it where a usage option has a range (``--workers``: ``x>=0``)."""
    if not bounds or kind not in (int, float):
        return kind
    limits = {"min": bounds.get("min", bounds.get("above")), "max": bounds.get("max", bounds.get("below")),
              "min_open": "above" in bounds, "max_open": "below" in bounds}
    return (click.IntRange if kind is int else click.FloatRange)(**limits)


def _is_list(f: dataclasses.Field) -> bool:
    """Whether a field's annotation is a tuple (``tuple[int, ...] | None``)."""
    return "tuple" in str(f.type)


def _annotation_type(f: dataclasses.Field) -> type:
    """``int`` / ``float`` / ``str`` from a field's annotation (a required option's value type)."""
    text = str(f.type)
    return int if text.startswith("int") else float if text.startswith("float") else str


def stage_options(func):
    """The options every batch stage shares: how it runs (:class:`~featstore.pipelines.config.RunOptions`)
    and how the command prints (``--json``, ``--quiet``)."""
    return config_options(RunOptions)(output_options(func))


def output_options(func):
    """``--json`` and ``--quiet`` of a batch stage."""
    func = click.option("--quiet", is_flag=True, help="No progress bar.")(func)
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")(func)


def run_and_report(run, as_json: bool, quiet: bool) -> None:
    """Call ``run(progress)``, print its StageReport, exit 0 (all done) or 3 (some clips failed)."""
    report = run(None if not quiet else False)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(
            f"{report.stage}: {report.done} done, {report.skipped} already done, {report.failed} failed "
            f"in {report.seconds:.1f} s -> {', '.join(report.arrays)}"
        )
    if not report.ok:
        sys.exit(EXIT_PARTIAL)
