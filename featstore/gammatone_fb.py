"""The FFT-weight Gammatone filterbank of Ellis (``fft2gammatonemx``), as in the `gammatone` package.

A (n_filters, n_fft // 2 + 1) matrix that, applied to an STFT magnitude, approximates an ERB-spaced
4th-order Gammatone filterbank (Patterson-Holdsworth filters, Glasberg-Moore ERB). Reimplemented
here, vectorised and cached, so that featstore does not depend on the `gammatone` package at run
time; the tests compare it with that package's ``fftweight.fft_weights``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

EAR_Q = 9.26449  # Glasberg and Moore
MIN_BW_HZ = 24.7


def erb_space_hz(fmin_hz: float, fmax_hz: float, n: int) -> np.ndarray:
    """``n`` centre frequencies (Hz) equally spaced on the ERB scale, ascending from near ``fmin_hz``."""
    fraction = np.arange(1, n + 1) / n
    c = EAR_Q * MIN_BW_HZ
    descending = -c + np.exp(fraction * (np.log(fmin_hz + c) - np.log(fmax_hz + c))) * (fmax_hz + c)
    return descending[::-1]


@lru_cache(maxsize=8)
def gammatone_weights(sr: int, n_fft: int, n_filters: int, fmin_hz: float, fmax_hz: float, width: float = 1.0) -> np.ndarray:
    """The (n_filters, n_fft // 2 + 1) float32 weight matrix, rows ascending in centre frequency."""
    cf = erb_space_hz(fmin_hz, fmax_hz, n_filters)
    t = 1.0 / sr
    erb = width * (cf / EAR_Q + MIN_BW_HZ)
    b = 1.019 * 2 * np.pi * erb
    arg = 2 * cf * np.pi * t
    b2 = np.exp(-2 * b * t)
    common = -t * np.exp(-b * t)
    rt_pos, rt_neg = np.sqrt(3 + 2**1.5), np.sqrt(3 - 2**1.5)
    ks = [np.cos(arg) + s * r * np.sin(arg) for r in (rt_pos, rt_neg) for s in (1, -1)]
    vec = np.exp(2j * arg)
    gain_arg = np.exp(1j * arg - b * t)
    gain = np.abs(
        np.prod([vec - gain_arg * k for k in ks], axis=0)
        * (t * np.exp(b * t) / (-1 / np.exp(b * t) + 1 + vec * (1 - np.exp(b * t)))) ** 4
    )
    ucirc = np.exp(1j * 2 * np.pi * np.arange(n_fft // 2 + 1) / n_fft)[None, :]
    pole = (np.sqrt(b2) * np.exp(1j * arg))[:, None]
    zeros = np.ones((n_filters, ucirc.shape[1]))
    for k in ks:
        zeros = zeros * np.abs(ucirc + (common * k)[:, None] * sr)
    weights = zeros * np.abs(sr * (pole - ucirc) * (pole.conj() - ucirc)) ** (-4) / gain[:, None]
    return weights.astype(np.float32)
