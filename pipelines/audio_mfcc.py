"""MFCC: the DCT of the log mel spectrogram, one feature of the audio registry.

``mfcc = dct(mel, type=2, norm="ortho", axis=bin)[:n_mfcc]`` on the log mel power spectrogram
(``featstore.audio``'s ``mel``: the same STFT, filters and dB scale), as ``librosa.feature.mfcc``
computes it from a log mel spectrogram. Stored (channel, n_mfcc, frame).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from featstore.audio import DEFAULT_HOP_MS, DEFAULT_N_BINS, DEFAULT_WIN_MS, AudioParams, spectrograms
from featstore.coords import Coordinate
from featstore.errors import ConfigError
from featstore.pipelines.audio_features import FeatureConfig, register
from featstore.pipelines.config import option


@register("mfcc")
@dataclasses.dataclass(frozen=True)
class MfccConfig(FeatureConfig):
    """Mel-frequency cepstral coefficients of the log mel spectrogram (on request only)."""

    by_default: ClassVar[bool] = False

    n_mfcc: int = option(40, "Coefficients kept.", min=1)
    n_mels: int = option(DEFAULT_N_BINS, "Mel bands the coefficients are computed from.", min=1)
    win_ms: float = option(DEFAULT_WIN_MS, "STFT window (ms).", above=0)
    hop_ms: float = option(DEFAULT_HOP_MS, "STFT hop (ms).", above=0)
    fmin_hz: float = option(0.0, "Lowest mel filter edge (Hz).", min=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_mfcc > self.n_mels:
            raise ConfigError(f"--mfcc-n-mfcc must be <= --mfcc-n-mels ({self.n_mels}), got {self.n_mfcc}")

    @property
    def n_out(self) -> int:
        return self.n_mfcc

    def bin_coordinate(self, sr: int) -> Coordinate:
        return Coordinate(np.arange(self.n_mfcc), "", "cepstral coefficient index")

    def compute(self, windows: np.ndarray, grid: AudioParams) -> np.ndarray:
        import scipy.fft

        p = dataclasses.replace(grid, n_bins=self.n_mels, win_ms=self.win_ms, hop_ms=self.hop_ms, mel_fmin_hz=self.fmin_hz)
        mel = spectrograms(windows, p, ("mel",))["mel"]
        return scipy.fft.dct(mel, type=2, norm="ortho", axis=1)[:, : self.n_mfcc].astype(np.float32)
