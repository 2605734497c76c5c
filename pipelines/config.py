"""Stage configs: each batch stage is one frozen dataclass of its options, with their only defaults.

A config is what a user chooses (``AudioConfig(features=("mel",), sr=32000, ...)``); it does not
depend on the store. :meth:`StageConfig.build` resolves it against a store (clip duration, segment
grid, registered models) into the runner's :class:`~featstore.pipelines.runner.Stage`. Each array a
stage writes records, beside its fingerprinted parameters, the config that makes exactly that array
(:meth:`StageConfig.for_output`), so that anything made can be rebuilt from what the store records:
``verify --repair``, ``predict`` and a system export all call
:func:`featstore.pipelines.stages.config_for_array`.

The CLI's options are generated from these dataclasses (``featstore.cli.common.config_options``):
each field's ``metadata`` holds its help text and, where the values are a closed set, its choices.

>>> from featstore.pipelines.extract_audio import AudioConfig
>>> AudioConfig().sr, AudioConfig.from_dict(AudioConfig(features=("mel",)).to_dict()).features
(32000, ('mel',))
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from featstore.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from featstore.provenance import Provenance
    from featstore.store import Store
    from featstore.pipelines.runner import Stage


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, cli: bool = True, kind: type | None = None,
           flag: str | None = None, kw_only: Any = dataclasses.MISSING) -> Any:
    """A config field with its default, help text and (optional) closed set of choices.

    A tuple-valued field is a comma-separated list on the command line (with choices, a subset).
    ``kind`` is the type of the value (of each item, for a tuple) when the default does not show it:
    ``option(None, "...", kind=int)``, or ``kind=int`` for a tuple of ints. ``cli=False`` keeps a
    field out of the generated command-line options; ``flag`` spells its option when not
    ``--field-name`` (``--weights`` for ``weights_file``).
    """
    metadata = {"help": help, "choices": choices, "cli": cli, "kind": kind, "flag": flag}
    return dataclasses.field(default=default, kw_only=kw_only, metadata=metadata)


#: The optimisation options every training command shares (``train-backbone``, ``train-joint``,
#: ``fuse``): name -> (default, help). :class:`TrainingConfig` declares them.
TRAINING_OPTIONS: dict[str, tuple[Any, str]] = {
    "epochs": (10, "Training epochs; the epoch with the lowest validation loss is kept."),
    "batch_size": (32, "Examples per batch."),
    "lr": (1e-3, "Adam learning rate."),
    "mixup_alpha": (0.4, "Mixup on inputs and labels, coefficient ~ Beta(alpha, alpha); 0 turns mixup off."),
    "l2": (1e-4, "L2 penalty on the head's weights."),
    "val_fraction": (0.2, "Share of train clips held out for validation, by recording location."),
    "seed": (0, "Random seed (initial weights, shuffling, mixup)."),
}


def training_option(name: str, default: Any = dataclasses.MISSING) -> Any:
    """The keyword-only field of the shared optimisation option ``name`` (:data:`TRAINING_OPTIONS`),
    with its help text and the shared default, or ``default`` where a command trains differently
    (``FuseConfig``: 30 epochs of 256 examples)."""
    shared, help_text = TRAINING_OPTIONS[name]
    return option(shared if default is dataclasses.MISSING else default, help_text, kw_only=True)


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
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices is None:
                continue
            values = value if isinstance(value, tuple) else (value,)
            unknown = [v for v in values if v not in choices]
            if unknown:
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"{flag} must be {'a subset' if isinstance(value, tuple) else 'one'} of {', '.join(choices)}, got {', '.join(map(str, values))}")

    # ------------------------------------------------------------------ what subclasses provide
    def build(self, store: Store) -> Stage:
        """The runner's stage for ``store``: outputs, per-clip function, fingerprinted parameters."""
        raise NotImplementedError

    def for_output(self, leaf: str) -> StageConfig:
        """The config that makes the output named ``leaf`` (e.g. only ``mel`` of several features)."""
        return self

    @classmethod
    def from_legacy(cls, prov: Provenance) -> StageConfig:
        """The config that makes exactly the array ``prov`` describes, for an array written before
        configs were recorded, rebuilt from its parameters."""
        raise StoreError(f"{prov.path}: made by {prov.stage!r} before stage configs were recorded; recompute it")

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

    @classmethod
    def from_provenance(cls, prov: Provenance) -> StageConfig:
        """The config that made the array whose provenance is ``prov``."""
        return cls.from_dict(prov.config) if prov.config is not None else cls.from_legacy(prov)

    def differences(self, other: StageConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for every field that differs."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)}
