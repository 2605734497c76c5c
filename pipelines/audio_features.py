"""The registry of audio features: one config per feature, registered by name.

Each feature (``mel``, ``gam``, ``cqt``, ``mfcc``...) is a frozen dataclass of its own parameters,
declared with :func:`~featstore.pipelines.config.option` (default, help, range), registered with
:func:`register`. ``extract-audio --features`` takes its choices from :data:`FEATURES`, and every
field of every feature becomes an option of :class:`~featstore.pipelines.extract_audio.AudioConfig`
named ``{feature}_{field}`` (``--mel-n-bins``, ``--cqt-hop-ms``), generated, never hand-written.

Each array's fingerprinted parameters hold the shared front end (rate, grid, dtype, deltas) and
only its own feature's config, so changing one feature (or adding one) leaves the others alone.

To add a feature: a module with a :class:`FeatureConfig` subclass decorated with
``@register("name")`` (its fields, ``hop_ms``, ``n_out`` and ``compute``), and its import at the
bottom of this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from featstore.audio import DEFAULT_HOP_MS, DEFAULT_N_BINS, DEFAULT_WIN_MS, AudioParams, spectrograms
from featstore.coords import Coordinate
from featstore.gammatone_fb import erb_space_hz
from featstore.mel_fb import mel_edges_hz
from featstore.pipelines.config import check_fields, option

#: Feature name -> its config class, in registration order (the default ``--features``).
FEATURES: dict[str, type[FeatureConfig]] = {}


def register(name: str):
    """Class decorator: register a :class:`FeatureConfig` subclass as feature ``name``."""

    def decorate(cls: type[FeatureConfig]) -> type[FeatureConfig]:
        cls.feature = name
        FEATURES[name] = cls
        return cls

    return decorate


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Base of a feature's config. Subclasses declare ``hop_ms`` (ms) among their fields."""

    feature: ClassVar[str] = ""
    #: Whether ``extract-audio`` computes this feature when ``--features`` is not given.
    by_default: ClassVar[bool] = True
    hop_ms: float = DEFAULT_HOP_MS

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def n_out(self) -> int:
        """Bins of the stored array (its second axis)."""
        raise NotImplementedError

    def hop_length(self, sr: int) -> int:
        """Hop in samples at ``sr`` Hz."""
        return int(round(self.hop_ms * sr / 1000))

    def frames_per_segment(self, sr: int, segment_s: float) -> int:
        """Frames per segment: the segment-to-frame rule of :mod:`featstore.audio`."""
        return 1 + int(round(segment_s * sr)) // self.hop_length(sr)

    def compute(self, windows: np.ndarray, grid: AudioParams) -> np.ndarray:
        """Segment windows (channel, segment, sample) -> float32 (channel, n_out, frame)."""
        raise NotImplementedError

    def check_rate(self, sr: int) -> None:
        """Refuse, with a :class:`~featstore.errors.ConfigError`, parameters that cannot work at
        ``sr`` Hz (before any clip runs); by default all can."""

    def bin_coordinate(self, sr: int) -> Coordinate:
        """What each of the ``n_out`` bins is at ``sr`` Hz (a centre frequency in Hz, or an index)."""
        raise NotImplementedError

    def frame_coordinate(self, sr: int, segment_s: float, n_segments: int) -> Coordinate:
        """Each frame's centre within the clip, in seconds: frame ``t`` of segment ``k`` (the
        segment-to-frame rule of :mod:`featstore.audio`) at ``k * segment_s + t * hop / sr``."""
        starts = np.arange(n_segments)[:, None] * float(segment_s)
        offsets = np.arange(self.frames_per_segment(sr, segment_s))[None, :] * self.hop_length(sr) / sr
        return Coordinate((starts + offsets).ravel(), "s", "frame centre within the clip")

    def legacy_params(self, grid: AudioParams) -> dict[str, Any] | None:
        """The front end's parameters as the one shared parameter set recorded them, when this
        config is one that set could express (then the array's fingerprint is the one it always
        had); ``None`` otherwise."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig(FeatureConfig):
    """A feature :func:`featstore.audio.spectrograms` computes; ``params`` maps it to that
    function's :class:`~featstore.audio.AudioParams`, so features with equal parameters share one
    STFT (``mel`` and ``gam``)."""

    n_bins: int = option(DEFAULT_N_BINS, "Frequency bins.", min=1)

    @property
    def n_out(self) -> int:
        return self.n_bins

    def params(self, grid: AudioParams) -> AudioParams:
        """``grid`` (rate and segment grid) with this feature's parameters."""
        raise NotImplementedError

    def compute(self, windows: np.ndarray, grid: AudioParams) -> np.ndarray:
        return spectrograms(windows, self.params(grid), (self.feature,))[self.feature]

    def legacy_params(self, grid: AudioParams) -> dict[str, Any] | None:
        p = self.params(grid)
        defaults = AudioParams(sr=p.sr, n_bins=p.n_bins, win_ms=p.win_ms, hop_ms=p.hop_ms, segment_s=p.segment_s, n_segments=p.n_segments)
        return p.to_dict() if p == defaults else None


@dataclasses.dataclass(frozen=True)
class StftSpectrogramConfig(SpectrogramConfig):
    """A spectrogram of filters over the STFT's power (``mel``, ``gam``): window and hop."""

    win_ms: float = option(DEFAULT_WIN_MS, "STFT window (ms).", above=0)
    hop_ms: float = option(DEFAULT_HOP_MS, "STFT hop (ms).", above=0)


@register("mel")
@dataclasses.dataclass(frozen=True)
class MelConfig(StftSpectrogramConfig):
    """Log mel power spectrogram (Slaney filters from ``fmin_hz`` to sr/2)."""

    fmin_hz: float = option(0.0, "Lowest filter edge (Hz).", min=0)

    def params(self, grid: AudioParams) -> AudioParams:
        return dataclasses.replace(grid, n_bins=self.n_bins, win_ms=self.win_ms, hop_ms=self.hop_ms, mel_fmin_hz=self.fmin_hz)

    def bin_coordinate(self, sr: int) -> Coordinate:
        # the filters' peaks, without librosa (whose import brings numba into extract-audio)
        return Coordinate(mel_edges_hz(self.n_bins, self.fmin_hz, sr / 2)[1:-1], "Hz", "mel filter centre frequency")


@register("gam")
@dataclasses.dataclass(frozen=True)
class GamConfig(StftSpectrogramConfig):
    """Log gammatonegram (FFT-weight, ERB-spaced from ``fmin_hz`` to sr/2)."""

    fmin_hz: float = option(50.0, "Lowest filter centre (Hz).", above=0)

    def params(self, grid: AudioParams) -> AudioParams:
        return dataclasses.replace(grid, n_bins=self.n_bins, win_ms=self.win_ms, hop_ms=self.hop_ms, gam_fmin_hz=self.fmin_hz)

    def bin_coordinate(self, sr: int) -> Coordinate:
        return Coordinate(erb_space_hz(self.fmin_hz, sr / 2, self.n_bins), "Hz", "gammatone filter centre frequency")


@register("cqt")
@dataclasses.dataclass(frozen=True)
class CqtConfig(SpectrogramConfig):
    """Log constant-Q magnitude (librosa's ``cqt``, ``n_bins`` from ``fmin_hz``)."""

    hop_ms: float = option(DEFAULT_HOP_MS, "Hop (ms).", above=0)
    fmin_hz: float = option(50.0, "Lowest bin's centre (Hz).", above=0)
    bins_per_octave: int = option(16, "Bins per octave.", min=1)

    def params(self, grid: AudioParams) -> AudioParams:
        return dataclasses.replace(grid, n_bins=self.n_bins, hop_ms=self.hop_ms, cqt_fmin_hz=self.fmin_hz, cqt_bins_per_octave=self.bins_per_octave)

    def check_rate(self, sr: int) -> None:
        """The top filter's band must lie below the Nyquist frequency (no filter is built here)."""
        from featstore.cqt import check_below_nyquist

        check_below_nyquist(sr, self.fmin_hz, self.n_bins, self.bins_per_octave)

    def bin_coordinate(self, sr: int) -> Coordinate:
        import librosa

        return Coordinate(librosa.cqt_frequencies(self.n_bins, fmin=self.fmin_hz, bins_per_octave=self.bins_per_octave), "Hz", "constant-Q bin centre frequency")


def compute_features(windows: np.ndarray, grid: AudioParams, configs: dict[str, FeatureConfig]) -> dict[str, np.ndarray]:
    """Every feature of ``configs`` for segment windows (channel, segment, sample): {name: (channel,
    n_out, frame)} float32. Spectrogram features with equal parameters are computed in one call
    (one STFT for ``mel`` and ``gam``)."""
    out: dict[str, np.ndarray] = {}
    groups: dict[AudioParams, list[str]] = {}
    for name, config in configs.items():
        if isinstance(config, SpectrogramConfig):
            groups.setdefault(config.params(grid), []).append(name)
        else:
            out[name] = config.compute(windows, grid)
    for p, names in groups.items():
        out.update(spectrograms(windows, p, tuple(names)))
    return out


def default_features() -> tuple[str, ...]:
    """The features ``extract-audio`` computes by default."""
    return tuple(name for name, cls in FEATURES.items() if cls.by_default)


# The registrations of features defined in their own modules.
from featstore.pipelines import audio_mfcc  # noqa: E402,F401
