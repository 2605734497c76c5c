"""`featstore extract-audio`: log spectrograms (MEL / GAM / CQT / MFCC...) of every clip, on the stage runner.

Writes ``{name}/{feature}`` (default ``audio/mel``, ``audio/gam``, ``audio/cqt``), each
(clip, channel=2, bin, frame), frame = segments per clip x frames per segment (see
:mod:`featstore.audio` for the framing rule). With ``store_deltas`` the arrays hold 6 channels
(static, delta, delta-delta); otherwise deltas are derived at read time. The features and their
parameters come from :mod:`featstore.pipelines.audio_features`: the shared ``n_bins`` / ``win_ms`` /
``hop_ms`` are every feature's defaults, ``{feature}_{field}`` (``mel_hop_ms``) sets one feature's.

>>> from featstore.pipelines.extract_audio import AudioConfig, extract_audio   # doctest: +SKIP
>>> report = extract_audio(store, AudioConfig(features=("mel",)), workers=2)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar

import numpy as np

from featstore.audio import DEFAULT_HOP_MS, DEFAULT_N_BINS, DEFAULT_SR, DEFAULT_WIN_MS, AudioParams, add_deltas, prepare_waveform
from featstore.errors import ConfigError, MediaError
from featstore.media import load_audio
from featstore.pipelines.audio_features import FEATURES, FeatureConfig, compute_features, default_features
from featstore.pipelines.config import StageConfig, option
from featstore.pipelines.stage import ClipResult, ClipTask, OutputSpec, Stage, StageReport
from featstore.pipelines.runner import run_stage
from featstore.store import Store

#: Clips per dask task: a clip's write overlaps the next one's compute (featstore.pipelines.worker.iter_clips).
CLIPS_PER_TASK = 4
#: Decoding stops this far past the clip's nominal length (a 2-hour file is never read whole).
READ_MARGIN_S = 1.0
#: Defaults of every feature that has the field, unless its ``{feature}_{field}`` option is set.
SHARED_FIELDS = ("n_bins", "win_ms", "hop_ms")


def compute_audio(task: ClipTask, params: dict[str, Any], names: tuple[str, ...], *, plan: dict[str, Any]) -> ClipResult:
    """Worker side: decode, resample, frame and transform one clip into the requested features.

    ``plan`` holds the front end (``grid``: :class:`~featstore.audio.AudioParams` fields), ``dtype``,
    ``store_deltas`` and each feature's config (``features``: {name: fields}).
    """
    path = task.source("audio_path")
    if not path:
        raise MediaError(f"clip {task.clip_id} has no audio file")
    grid = AudioParams(**plan["grid"])
    windows, notes = read_segments(path, grid, params.get("source_start_s", 0.0))
    configs = {k: FEATURES[k](**plan["features"][k]) for k in names}
    specs = compute_features(windows, grid, configs)
    if plan["store_deltas"]:
        specs = {k: add_deltas(v, configs[k].frames_per_segment(grid.sr, grid.segment_s), grid.delta_width) for k, v in specs.items()}
    return ClipResult({k: v.astype(plan["dtype"]) for k, v in specs.items()}, notes)


def _feature_fields() -> list[tuple[str, type, Any]]:
    """``{feature}_{field}`` options of every registered feature, default ``None`` (the shared
    option's value where there is one, else the feature's own default); range as the feature's."""
    fields = []
    for name, cls in FEATURES.items():
        for f in dataclasses.fields(cls):
            kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}[str(f.type)]
            fallback = f"--{f.name.replace('_', '-')}" if f.name in SHARED_FIELDS else f"{f.default:g}"
            help_text = f"{name.upper()}: {f.metadata['help']} Default: {fallback}."
            fields.append((f"{name}_{f.name}", kind | None, option(None, help_text, kind=kind, **f.metadata["range"])))
    return fields


def read_segments(path: str, p: AudioParams, start_s: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``p.n_segments`` segment windows (channel, segment, sample) of ``path`` from ``start_s``
    seconds (a whole number of segments) on, as :func:`featstore.audio.prepare_waveform` makes them.

    From a later start, up to :data:`READ_MARGIN_S` of whole segments before it are decoded and
    resampled too, then dropped: the resampler sees the same neighbourhood as when the file is read
    from its start, so a window of a long file has the same samples as the whole file's segments.
    """
    lead = min(math.ceil(READ_MARGIN_S / p.segment_s - 1e-9), int(start_s / p.segment_s + 1e-9))
    samples, sr = load_audio(path, max_duration_s=(p.n_segments + lead) * p.segment_s + READ_MARGIN_S, start_s=start_s - lead * p.segment_s)
    windows, notes = prepare_waveform(samples, sr, replace(p, n_segments=p.n_segments + lead))
    return np.ascontiguousarray(windows[:, lead:]), notes


@dataclass(frozen=True)
class _AudioOptions(StageConfig):
    """The shared options of extract-audio; :class:`AudioConfig` adds every feature's own."""

    stage: ClassVar[str] = "extract-audio"
    #: 2: the STFT's FFT library (ducc0) and the MEL filterbank's banded product (its summation
    #: order) moved about 0.04% of MEL and GAM values by one float16 step (tested to librosa's and
    #: gammatone's tolerances as before); arrays of version 1 are recomputed when the stage next runs.
    code_version: ClassVar[int] = 2

    features: tuple[str, ...] = option(default_features(), "Features to compute (comma-separated).", choices=tuple(FEATURES))
    sr: int = option(DEFAULT_SR, "Sample rate after resampling (Hz).", min=1000)
    n_bins: int = option(DEFAULT_N_BINS, "Frequency bins of each feature (default of every --FEATURE-n-bins).", min=1)
    win_ms: float = option(DEFAULT_WIN_MS, "STFT window (ms) (default of every --FEATURE-win-ms).", above=0)
    hop_ms: float = option(DEFAULT_HOP_MS, "Hop (ms) (default of every --FEATURE-hop-ms).", above=0)
    dtype: str = option("float16", "Stored dtype.", choices=("float16", "float32"))
    store_deltas: bool = option(False, "Store 6 channels (static, delta, delta-delta) instead of deriving deltas at read time.")
    name: str = option("audio", "Array group: writes NAME/mel, NAME/gam, NAME/cqt.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.features:
            raise ConfigError(f"--features must name at least one of {', '.join(FEATURES)}")
        for name in self.features:
            self.feature_config(name)  # a bad combination (say n_mfcc > n_mels) is refused now

    def feature_config(self, name: str) -> FeatureConfig:
        """Feature ``name``'s config: its ``{name}_{field}`` options, else the shared ones, else its defaults."""
        cls, values = FEATURES[name], {}
        for f in dataclasses.fields(cls):
            own = getattr(self, f"{name}_{f.name}")
            if own is not None:
                values[f.name] = own
            elif f.name in SHARED_FIELDS:
                values[f.name] = getattr(self, f.name)
        return cls(**values)

    def audio_params(self, store: Store) -> AudioParams:
        """The front end on ``store``'s segment grid (the shared bins, window and hop)."""
        return AudioParams(sr=self.sr, n_bins=self.n_bins, win_ms=self.win_ms, hop_ms=self.hop_ms, segment_s=store.segment_s, n_segments=store.n_segments)

    def for_output(self, leaf: str) -> AudioConfig:
        return replace(self, features=(leaf,))

    def output_params(self, name: str, grid: AudioParams) -> dict[str, Any]:
        """The fingerprinted parameters of array ``name``: the front end and its feature's config
        only. A config the one shared parameter set of earlier versions could express keeps that
        set's exact parameters, so arrays made then keep their fingerprints."""
        config = self.feature_config(name)
        # the readers find the frame rule and the delta width where they always did
        common = {"dtype": self.dtype, "store_deltas": self.store_deltas, "feature": name, "frames_per_segment": config.frames_per_segment(grid.sr, grid.segment_s)}
        legacy = config.legacy_params(grid)
        if legacy is not None:
            return {"audio": legacy, **common}
        front = {k: getattr(grid, k) for k in ("sr", "segment_s", "n_segments", "channels", "delta_width")}
        return {"audio": front, **common, name: config.to_dict()}

    def build(self, store: Store) -> Stage:
        grid = self.audio_params(store)
        channels = 3 * grid.channels if self.store_deltas else grid.channels
        configs = {f: self.feature_config(f) for f in self.features}
        for config in configs.values():
            config.check_rate(grid.sr)
        outputs = tuple(
            OutputSpec(
                name=f,
                path=f"{self.name}/{f}",
                per_clip_shape=(channels, c.n_out, grid.n_segments * c.frames_per_segment(grid.sr, grid.segment_s)),
                dtype=self.dtype,
                dims=(f"{f}_channel", f"{f}_bin", f"{f}_frame"),
                params=self.output_params(f, grid),
                config=self.for_output(f).to_dict(),
                coords={f"{f}_bin": c.bin_coordinate(grid.sr), f"{f}_frame": c.frame_coordinate(grid.sr, grid.segment_s, grid.n_segments)},
            )
            for f, c in configs.items()
        )
        plan = {"grid": grid.to_dict(), "dtype": self.dtype, "store_deltas": self.store_deltas, "features": {f: c.to_dict() for f, c in configs.items()}}
        compute = partial(compute_audio, plan=plan)
        return Stage(self.stage, {}, outputs, compute, input_fingerprint=_audio_fingerprint, modality="audio", clips_per_task=CLIPS_PER_TASK, code_version=self.code_version)


#: Options of extract-audio, with their only defaults (the papers': 32 kHz, 128 bins, 80 ms window,
#: 14 ms hop): the shared ones and every registered feature's ``{feature}_{field}``. Writes
#: ``{name}/{feature}`` for each of ``features``.
AudioConfig = dataclasses.make_dataclass("AudioConfig", _feature_fields(), bases=(_AudioOptions,), frozen=True,
                                     namespace={"__module__": __name__, "__doc__": "Options of extract-audio: the shared ones and every feature's own."})


def _audio_fingerprint(row: dict[str, Any]) -> str:
    return row["audio_fingerprint"]


def extract_audio(
    store: Store,
    config: AudioConfig | None = None,
    *,
    clips: str | list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **config_fields: Any,
) -> StageReport:
    """Run extract-audio over ``store`` with ``config`` (or an :class:`AudioConfig` of ``config_fields``)."""
    stage = (config or AudioConfig(**config_fields)).build(store)
    return run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress)
