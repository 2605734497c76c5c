"""The constant-Q transform of segment windows: ``librosa.cqt``'s algorithm, batched over windows.

librosa's CQT (Schörkhuber and Klapuri's recursive sub-sampling) computes one octave at a time,
from the top: an STFT with a rectangular window, the octave's frequency-domain filters applied to
it (a sparse product), then the signal halved by soxr (HQ) for the next octave, down to the
lowest. :func:`cqt_magnitude` runs the same steps in the same arithmetic on every window of a clip
at once: the filters are built once per process by librosa's own functions (:func:`cqt_plan`),
each octave's frames of all windows go through one FFT call and one sparse product, and the
checks, padding and layout copies ``librosa.cqt`` repeats for each of its calls (and its STFT, for
each octave) are done once. The values are ``np.abs(librosa.cqt(...))`` bit for bit (tested), so
arrays made before keep their fingerprints.

The FFT stays scipy's, in double precision as librosa's (its rectangular window is float64, which
promotes the frames): another FFT would change the values by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from featstore.errors import ConfigError


@dataclass(frozen=True)
class Octave:
    """One octave's step: ``basis`` (filters, n_fft // 2 + 1) complex64 sparse, applied to an STFT of
    ``n_fft`` samples at ``hop_length`` of the signal at that octave's rate."""

    basis: object
    n_fft: int
    hop_length: int


@dataclass(frozen=True)
class CqtPlan:
    """The octaves from the top one down, ``n_bins`` filters in all, the square root of each
    filter's length in samples, by which its response is divided (bin order, low to high), and the
    ``early_factor`` by which the signal is first down-sampled (1: not)."""

    octaves: tuple[Octave, ...]
    n_bins: int
    sqrt_lengths: np.ndarray
    early_factor: int


def check_below_nyquist(sr: int, fmin_hz: float, n_bins: int, bins_per_octave: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The bins' centre frequencies (Hz), relative bandwidths and the top filter's cut-off (Hz), as
    librosa computes them; a :class:`~featstore.errors.ConfigError` naming the options when the
    cut-off passes the Nyquist frequency (librosa's ``ParameterError``). No filter is built."""
    import librosa
    from librosa import filters

    freqs = librosa.interval_frequencies(n_bins=n_bins, fmin=fmin_hz, intervals="equal", bins_per_octave=bins_per_octave, sort=True)
    alpha = filters._relative_bandwidth(freqs=freqs)
    _, cutoff = filters.wavelet_lengths(freqs=freqs, sr=sr, window="hann", filter_scale=1, gamma=0, alpha=alpha)
    if cutoff > sr / 2:
        raise ConfigError(f"CQT filters up to {cutoff:.0f} Hz exceed the Nyquist frequency ({sr / 2:.0f} Hz at sr={sr}): use fewer bins "
                          "(--cqt-n-bins), a lower lowest bin (--cqt-fmin-hz) or more bins per octave (--cqt-bins-per-octave)")
    return freqs, alpha, float(cutoff)


@lru_cache(maxsize=4)
def cqt_plan(sr: int, hop_length: int, fmin_hz: float, n_bins: int, bins_per_octave: int) -> CqtPlan:
    """The filters of ``librosa.cqt(sr=sr, hop_length=hop_length, fmin=fmin_hz, n_bins=n_bins,
    bins_per_octave=bins_per_octave)`` with its other defaults (no tuning, Hann-windowed wavelets,
    L1 norm, sparsity 0.01, responses scaled by filter length), built by librosa's own functions
    in librosa's order; cached per process. Filters reaching past the Nyquist frequency are refused
    (:func:`check_below_nyquist`).
    """
    from librosa import filters
    from librosa.core import constantq

    n_octaves = -(-n_bins // bins_per_octave)
    per_octave = min(bins_per_octave, n_bins)
    freqs, alpha, cutoff = check_below_nyquist(sr, fmin_hz, n_bins, bins_per_octave)
    wavelets = {"window": "hann", "filter_scale": 1, "gamma": 0, "alpha": alpha}
    # librosa's early down-sampling: by 2**k when the filters lie far below the Nyquist frequency
    # and the hop has enough factors of 2 to halve it k more times than there are octaves
    two_factors = (hop_length & -hop_length).bit_length() - 1
    k = min(max(0, int(np.ceil(np.log2(sr / 2 / cutoff)) - 1) - 1), max(0, two_factors - n_octaves + 1))
    work_sr, octave_hop = sr / float(2**k), hop_length // 2**k
    filter_fft = constantq.__dict__["__vqt_filter_fft"]
    octaves, octave_sr = [], work_sr
    for i in range(n_octaves):
        sl = slice(-per_octave, None) if i == 0 else slice(-per_octave * (i + 1), -per_octave * i)
        basis, n_fft, _ = filter_fft(octave_sr, freqs[sl], 1, 1, 0.01, window="hann", gamma=0, dtype=np.complex64, alpha=alpha[sl])
        basis = basis.copy()
        basis[:] *= np.sqrt(work_sr / octave_sr)  # librosa's own statement: float64 scale, rounded to complex64
        octaves.append(Octave(basis.tocsr(), int(n_fft), octave_hop))
        if octave_hop % 2 == 0:
            octave_hop //= 2
            octave_sr /= 2.0
    lengths, _ = filters.wavelet_lengths(freqs=freqs, sr=work_sr, **wavelets)
    return CqtPlan(tuple(octaves), n_bins, np.sqrt(lengths), 2**k)


def cqt_magnitude(windows: np.ndarray, plan: CqtPlan) -> np.ndarray:
    """``|CQT|`` of windows (..., sample) float32 -> (..., bin, frame) float32, bins low to high.

    Equal to ``np.abs(librosa.cqt(windows, ...))`` with the plan's parameters, bit for bit.
    """
    import scipy.fft

    lead, n_samples = windows.shape[:-1], windows.shape[-1]
    y = np.ascontiguousarray(windows.reshape(-1, n_samples), dtype=np.float32)
    if plan.early_factor > 1:
        y = _downsample(y, plan.early_factor)
    responses = []
    for octave in plan.octaves:
        half = octave.n_fft // 2
        padded = np.zeros((len(y), y.shape[1] + 2 * half), np.float64)
        padded[:, half : half + y.shape[1]] = y
        frames = np.lib.stride_tricks.sliding_window_view(padded, octave.n_fft, axis=1)[:, :: octave.hop_length]
        spectrum = scipy.fft.rfft(frames, axis=-1).astype(np.complex64)  # (signal, frame, fft bin)
        n_frames = spectrum.shape[1]
        flat = octave.basis.dot(spectrum.reshape(-1, spectrum.shape[2]).T)  # (filter, signal * frame)
        responses.append(flat.reshape(-1, len(y), n_frames))
        if octave.hop_length % 2 == 0 and octave is not plan.octaves[-1]:
            y = _downsample(y, 2)
    # librosa's stacking: octaves from the top, trimmed to the shortest, then scaled per bin
    n_frames = min(r.shape[2] for r in responses)
    out = np.empty((len(y), plan.n_bins, n_frames), np.complex64)
    end = plan.n_bins
    for response in responses:
        take = min(end, response.shape[0])
        out[:, end - take : end] = response[-take:, :, :n_frames].transpose(1, 0, 2)
        end -= take
    out /= plan.sqrt_lengths[:, None]
    return np.abs(out).reshape(*lead, plan.n_bins, n_frames)


def _downsample(signals: np.ndarray, factor: int) -> np.ndarray:
    """Signals (signal, sample) float32 at 1 / ``factor`` of their rate, each as
    ``librosa.resample(orig_sr=factor, target_sr=1, res_type="soxr_hq", scale=True)`` makes it:
    soxr HQ, length ceil(n / factor), amplitude x sqrt(factor). One soxr resampler serves every
    signal, cleared between them: the same output as a one-shot call each, without designing the
    filter again for each."""
    import soxr

    stream = soxr.ResampleStream(factor, 1, 1, dtype="float32", quality="soxr_hq")
    n = -(-signals.shape[1] // factor)
    out = np.zeros((len(signals), n), np.float32)
    for signal, row in zip(signals, out):
        resampled = stream.resample_chunk(signal, last=True)
        stream.clear()
        row[: min(n, len(resampled))] = resampled[:n]
    out /= np.sqrt(1 / factor)
    return out
