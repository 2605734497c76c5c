"""The Slaney mel filterbank (Auditory Toolbox), as ``librosa.filters.mel`` makes it by default.

A (n_mels, n_fft // 2 + 1) matrix of triangular filters, their edges equally spaced on Slaney's mel
scale (linear below 1 kHz, logarithmic above), each scaled to unit area in Hz ("slaney" norm).
Computed here in numpy with librosa's operations in librosa's order, so that the weights are the
same float32 values, without importing librosa: ``librosa.filters`` loads ``scipy.signal``, about a
second of every process that computes a mel spectrogram. The tests compare it with librosa's.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from featstore.errors import FeatstoreWarning

#: Slaney's scale: 200/3 Hz per mel up to 1 kHz, then log-spaced, 27 mels per factor 6.4.
LINEAR_HZ_PER_MEL = 200.0 / 3
LOG_START_HZ = 1000.0
LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Frequencies (Hz) -> Slaney mels (librosa's ``hz_to_mel``, ``htk=False``)."""
    hz = np.asarray(hz, dtype=np.float64)
    mels = hz / LINEAR_HZ_PER_MEL
    log_start_mel = LOG_START_HZ / LINEAR_HZ_PER_MEL
    above = hz >= LOG_START_HZ
    return np.where(above, log_start_mel + np.log(np.where(above, hz, LOG_START_HZ) / LOG_START_HZ) / LOG_STEP, mels)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Slaney mels -> frequencies (Hz), the inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    log_start_mel = LOG_START_HZ / LINEAR_HZ_PER_MEL
    above = mels >= log_start_mel
    return np.where(above, LOG_START_HZ * np.exp(LOG_STEP * (mels - log_start_mel)), LINEAR_HZ_PER_MEL * mels)


def mel_edges_hz(n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """The ``n_mels + 2`` filter edges (Hz), equally spaced in Slaney mels from ``fmin_hz`` to
    ``fmax_hz``: filter ``k`` rises from edge ``k`` to its peak at edge ``k + 1`` and falls to edge
    ``k + 2`` (librosa's ``mel_frequencies(n_mels + 2, fmin, fmax)``)."""
    return mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), n_mels + 2))


@lru_cache(maxsize=8)
def mel_weights(sr: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) float32 Slaney-normalised mel weights, rows ascending.

    Equal to ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin_hz, fmax=fmax_hz)``.
    Warns (:class:`~featstore.errors.FeatstoreWarning`) when a filter falls between two FFT bins and
    is empty, as librosa does: those bins of the feature are then silent.
    """
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    edges_hz = mel_edges_hz(n_mels, fmin_hz, fmax_hz)
    widths_hz = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, fft_hz)
    weights = np.zeros((n_mels, len(fft_hz)), dtype=np.float32)
    for i in range(n_mels):
        rising, falling = -ramps[i] / widths_hz[i], ramps[i + 2] / widths_hz[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    if not np.all((edges_hz[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(f"{n_mels} mel bins leave some filters empty at this FFT size ({n_fft} samples): "
                      "use fewer bins (--mel-n-bins) or a longer window (--mel-win-ms)", FeatstoreWarning, stacklevel=2)
    return weights
