"""Stage configs: each batch stage is one frozen dataclass of its options, with their only defaults.

A config is what a user chooses (``AudioConfig(features=("mel",), sr=32000, ...)``); it does not
depend on the store. :meth:`StageConfig.build` resolves it against a store (clip duration, segment
grid, registered models) into the runner's :class:`~featstore.pipelines.runner.Stage`. Each array a
stage writes records, beside its fingerprinted parameters, the config that makes exactly that array
(:meth:`StageConfig.for_output`), so that anything made can be rebuilt from what the store records:
``verify --repair``, ``predict`` and a system export all call
:func:`featstore.pipelines.stages.config_for_array`.

The CLI's options are generated from these dataclasses (``featstore.cli.common.config_options``):
each field's ``metadata`` holds its help text, where the values are a closed set its choices, and
its range; ``__post_init__`` checks both (:func:`check_fields`), so the Python API and the CLI
refuse the same values with the same one-line :class:`~featstore.errors.ConfigError`. The options
of running a stage (:class:`RunOptions`) and of the commands that are not one config
(``EmbedOptions``, ``PredictOptions``, ``VerifyOptions``) are declared the same way.

>>> from featstore.pipelines.extract_audio import AudioConfig
>>> AudioConfig().sr, AudioConfig.from_dict(AudioConfig(features=("mel",)).to_dict()).features
(32000, ('mel',))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from featstore.errors import ConfigError, StoreError
from featstore.names import closest

#: Seconds of clips to do at most for a run with the default workers to stay in-process: starting
#: a local cluster costs each worker process its imports (seconds), more than it saves on less work
#: (extract-audio and extract-frames of 1 s evaluation clips: about 5 ms each per clip on one core).
IN_PROCESS_CLIP_S = 600.0
#: What ``--workers`` defaults to, for the batch stages (and predict's extraction).
WORKERS_DEFAULT = f"default: one per core, in-process when the clips to do hold at most {IN_PROCESS_CLIP_S:.0f} s; 0 = in-process"

if TYPE_CHECKING:
    from featstore.store import Store
    from featstore.pipelines.stage import Stage


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, cli: bool = True, kind: type | None = None,
           flag: str | None = None, kw_only: Any = dataclasses.MISSING, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, check: Callable[[Any, str], Any] | None = None,
           usage: bool = False, envvar: str | None = None) -> Any:
    """A config field with its default, help text, (optional) closed set of choices and range.

    A tuple-valued field is a comma-separated list on the command line (with choices, a subset).
    ``kind`` is the type of the value (of each item, for a tuple) when the default does not show it:
    ``option(None, "...", kind=int)``, or ``kind=int`` for a tuple of ints. ``cli=False`` keeps a
    field out of the generated command-line options; ``flag`` spells its option when not
    ``--field-name`` (``--weights`` for ``weights_file``). ``default=dataclasses.MISSING`` makes a
    field without a default, a required option on the command line.

    The range is checked when the config is made (:func:`check_field`), for the Python API and the
    CLI alike: ``min`` / ``max`` are closed bounds (``value >= min``), ``above`` / ``below`` open
    ones (``value > above``); every float is also refused when NaN or infinite. A tuple's range
    applies to each item; ``None`` (where the default is ``None``) is always allowed. ``check(value,
    flag)`` refuses a value the range cannot describe (a model or run name) with a
    :class:`~featstore.errors.FeatstoreError`.

    ``usage=True`` marks an option that says how a command runs or where its output goes (workers,
    a run name) rather than what it computes: on the command line a refused value is then a usage
    error (exit status 2), found while the options are parsed. ``envvar`` names an environment
    variable the command line reads when the option is not given.
    """
    bounds = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("below", below)) if v is not None}
    metadata = {"help": help, "choices": choices, "cli": cli, "kind": kind, "flag": flag, "range": bounds, "check": check,
                "usage": usage, "envvar": envvar}
    if default is dataclasses.MISSING:
        return dataclasses.field(kw_only=kw_only, metadata=metadata)
    return dataclasses.field(default=default, kw_only=kw_only, metadata=metadata)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line spelling of field ``f`` (``--batch-size``), as errors name it."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def describe_range(bounds: dict[str, float]) -> str:
    """``{"min": 1}`` -> ``">= 1"``; ``{"above": 0, "below": 1}`` -> ``"> 0 and < 1"``."""
    signs = {"min": ">=", "above": ">", "max": "<=", "below": "<"}
    return " and ".join(f"{signs[k]} {bounds[k]:g}" for k in ("min", "above", "max", "below") if k in bounds)


def _out_of_range(value: Any, bounds: dict[str, float]) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return True
    return (("min" in bounds and value < bounds["min"]) or ("max" in bounds and value > bounds["max"])
            or ("above" in bounds and value <= bounds["above"]) or ("below" in bounds and value >= bounds["below"]))


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Refuse ``value`` for field ``f`` when it is outside the field's choices or range, with a
    :class:`~featstore.errors.ConfigError` naming the option, the allowed values and the closest
    choice, or with the error of the field's ``check``."""
    if value is None:
        return
    flag, values = flag_of(f), value if isinstance(value, tuple) else (value,)
    choices, bounds = f.metadata.get("choices"), f.metadata.get("range") or {}
    if choices is not None:
        unknown = [str(v) for v in values if v not in choices]
        if unknown:
            raise ConfigError(f"{flag} must be {'a subset' if isinstance(value, tuple) else 'one'} of {', '.join(choices)}, "
                              f"got {', '.join(map(str, values))}{closest(unknown[0], choices)}")
    bad = [v for v in values if _out_of_range(v, bounds)]
    if bad:
        allowed, finite = describe_range(bounds), isinstance(bad[0], float) and not math.isfinite(bad[0])
        what = "a finite number" + (f" {allowed}" if allowed else "") if finite or not allowed else allowed
        raise ConfigError(f"{flag} must be {what}, got {bad[0]}")
    if f.metadata.get("check") is not None:
        for v in values:
            f.metadata["check"](v, flag)


def check_fields(config: Any) -> None:
    """:func:`check_field` for every field of the dataclass instance ``config``."""
    for f in dataclasses.fields(config):
        check_field(f, getattr(config, f.name))


#: The optimisation options every training command shares (``train-backbone``, ``train-joint``,
#: ``fuse``): name -> (default, help, range as :func:`option` takes it). :class:`TrainingConfig`
#: declares them.
TRAINING_OPTIONS: dict[str, tuple[Any, str, dict[str, float]]] = {
    "epochs": (10, "Training epochs; the epoch with the lowest validation loss is kept.", {"min": 1}),
    "batch_size": (32, "Examples per batch.", {"min": 1}),
    "lr": (1e-3, "Adam learning rate.", {"above": 0}),
    "mixup_alpha": (0.4, "Mixup on inputs and labels, coefficient ~ Beta(alpha, alpha); 0 turns mixup off.", {"min": 0}),
    "l2": (1e-4, "L2 penalty on the head's weights.", {"min": 0}),
    "val_fraction": (0.2, "Share of train clips held out for validation, by recording location.", {"above": 0, "below": 1}),
    "seed": (0, "Random seed (initial weights, shuffling, mixup).", {"min": 0}),
}


def training_option(name: str, default: Any = dataclasses.MISSING) -> Any:
    """The keyword-only field of the shared optimisation option ``name`` (:data:`TRAINING_OPTIONS`),
    with its help text, range and the shared default, or ``default`` where a command trains
    differently (``FuseConfig``: 30 epochs of 256 examples)."""
    shared, help_text, bounds = TRAINING_OPTIONS[name]
    return option(shared if default is dataclasses.MISSING else default, help_text, kw_only=True, **bounds)


def option_of(config_class: type, name: str) -> Any:
    """A field declared like ``config_class``'s field ``name`` (default, help, range), for a
    command's options that include another config's option (``predict --batch-units`` is
    ``EmbedConfig.batch_units``)."""
    f = {f.name: f for f in dataclasses.fields(config_class)}[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


#: The options of running a batch stage (the runner's: which clips, where, whether to recompute):
#: name -> (default, help, the rest of :func:`option`'s arguments). :class:`RunOptions` declares
#: them; a command whose work runs differently redeclares one with :func:`run_option`.
RUN_OPTIONS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "workers": (None, f"Local dask worker processes ({WORKERS_DEFAULT}).", {"kind": int, "min": 0}),
    "scheduler": (None, "Existing dask scheduler, tcp://HOST:PORT (env FEATSTORE_SCHEDULER).", {"kind": str, "envvar": "FEATSTORE_SCHEDULER"}),
    "clips": (None, "Only these clips: a split name (train, evaluate, test) or a file of clip_ids.", {"kind": str}),
    "overwrite": (False, "Recompute every clip, replacing arrays made with other parameters.", {}),
}


def run_option(name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """The field of the run option ``name`` (:data:`RUN_OPTIONS`), a usage option (see
    :func:`option`), with the shared default and help text or the command's own."""
    shared, help_text, extra = RUN_OPTIONS[name]
    return option(shared if default is dataclasses.MISSING else default, help or help_text, usage=True, **extra)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a batch stage runs (``extract-audio``, ``extract-frames``): the keywords of
    :func:`~featstore.pipelines.runner.run_stage` a user chooses, with their defaults."""

    workers: int | None = run_option("workers")
    scheduler: str | None = run_option("scheduler")
    clips: str | None = run_option("clips")
    overwrite: bool = run_option("overwrite")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclasses.dataclass
class TrainingConfig:
    """Base of the training commands' configs (``TrainConfig``, ``JointConfig``, ``FuseConfig``): the
    optimisation options they share, keyword-only. A subclass changes a default by declaring the
    field again with :func:`training_option`."""

    epochs: int = training_option("epochs")
    batch_size: int = training_option("batch_size")
    lr: float = training_option("lr")
    mixup_alpha: float = training_option("mixup_alpha")
    l2: float = training_option("l2")
    val_fraction: float = training_option("val_fraction")
    seed: int = training_option("seed")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Base of the batch stages' configs (see the module docstring)."""

    #: The stage's name as users type it and as provenance records it.
    stage: ClassVar[str] = ""
    #: Version of the code that computes the stage's arrays, part of their fingerprint. Bump it (in
    #: the subclass) with any change that changes the values an array holds for the same options: a
    #: bug fix in a spectrogram, another resampler, a new default inside the per-clip function. Arrays
    #: made by the older version are then recomputed, instead of being served as if still right. Do not
    #: bump it for changes that leave every value bitwise the same (speed, refactoring, messages).
    code_version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        check_fields(self)

    # ------------------------------------------------------------------ what subclasses provide
    def build(self, store: Store) -> Stage:
        """The runner's stage for ``store``: outputs, per-clip function, fingerprinted parameters."""
        raise NotImplementedError

    def for_output(self, leaf: str) -> StageConfig:
        """The config that makes the output named ``leaf`` (e.g. only ``mel`` of several features)."""
        return self

    # ------------------------------------------------------------------ shared
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), as recorded in provenance."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageConfig:
        """The config recorded by :meth:`to_dict` (unknown keys refused, missing ones defaulted)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise StoreError(f"{cls.stage} config has unknown fields {sorted(unknown)} (written by a newer featstore?)")
        return cls(**{k: tuple(v) if isinstance(names[k].default, tuple) else v for k, v in data.items()})

    def differences(self, other: StageConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for every field that differs."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)}
