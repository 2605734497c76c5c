"""Audio features: waveform preparation, MEL / GAM / CQT log spectrograms, and deltas.

The segment-to-frame rule (docs/explanation/segment-rule.md). Audio at ``sr`` = 32 kHz is cut into the store's segment grid
(default 1 s = 32,000 samples). **Each segment is framed as if it were its own file**: centred frames
at ``t * hop_length`` samples from the segment's start for ``t = 0 .. segment_samples // hop_length``,
zero-padded by ``n_fft // 2`` at both ends of the segment (librosa's ``center=True``,
``pad_mode="constant"``). At 32 kHz with the 448-sample (14 ms) hop, that is 1 + 32000 // 448 = 72
frames per 1 s segment, and a clip of 10 segments has 720 frames: frames ``72 k .. 72 k + 71`` are
segment ``k``. A segment window read from a clip therefore has the same frame count and framing as
the same second given as its own 1 s file (the challenge's evaluation clips), sample for sample, so
one backbone serves both. The price: a window spanning several segments has a seam at each segment
border (no frame straddles two segments).

Features, all (channel=2, bin=128, frame), float32 before storage:

* ``mel``: ``power_to_db(mel_filterbank @ |STFT|^2)``, librosa's Slaney mel filters 0 Hz to sr/2.
* ``gam``: ``amplitude_to_db(gammatone_weights @ |STFT| / n_fft)``, the FFT-weight gammatonegram of
  Ellis on the *same* STFT as ``mel`` (computed once), ERB-spaced from 50 Hz to sr/2.
* ``cqt``: ``amplitude_to_db(|librosa.cqt|)``, 128 bins at 16 bins per octave from 50 Hz, i.e.
  50 Hz to 12.3 kHz (8 octaves; the top filter's band stays below the 16 kHz Nyquist), computed by
  :mod:`featstore.cqt` on all of a clip's windows at once, equal to ``librosa.cqt`` bit for bit.

dB scales use ``ref=1``, no ``top_db`` clipping (values are absolute, not relative to each clip's
maximum), ``amin`` 1e-10 for power and 1e-5 for magnitude.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from featstore.cqt import cqt_magnitude, cqt_plan
from featstore.errors import ConfigError, MediaError
from featstore.gammatone_fb import gammatone_weights
from featstore.mel_fb import mel_weights

FEATURES = ("mel", "gam", "cqt")

#: The papers' front end, the one place of its defaults (``extract-audio``'s and every feature's
#: own): the analysis rate (Hz), frequency bins, STFT window and hop (ms).
DEFAULT_SR = 32_000
DEFAULT_N_BINS = 128
DEFAULT_WIN_MS = 80.0
DEFAULT_HOP_MS = 14.0
#: Energy below this RMS (full scale 1.0) is reported as silence in the clip's notes.
SILENCE_RMS = 1e-5


@dataclass(frozen=True)
class AudioParams:
    """Every parameter of the audio front end (recorded in each array's provenance).

    The user-facing ones (``sr`` in Hz, ``n_bins``, ``win_ms``, ``hop_ms``) come from
    :class:`featstore.pipelines.extract_audio.AudioConfig` (defaults: ``DEFAULT_SR`` and its
    neighbours above); the grid
    (``segment_s`` seconds, ``n_segments``) from the store; the rest are fixed by the papers.
    """

    sr: int
    n_bins: int
    win_ms: float
    hop_ms: float
    segment_s: float
    n_segments: int
    channels: int = 2
    mel_fmin_hz: float = 0.0
    gam_fmin_hz: float = 50.0
    cqt_fmin_hz: float = 50.0
    cqt_bins_per_octave: int = 16
    delta_width: int = 9

    @property
    def n_fft(self) -> int:
        """STFT size = window length in samples (80 ms at 32 kHz = 2560)."""
        return int(round(self.win_ms * self.sr / 1000))

    @property
    def hop_length(self) -> int:
        """Hop in samples (14 ms at 32 kHz = 448)."""
        return int(round(self.hop_ms * self.sr / 1000))

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_s * self.sr))

    @property
    def frames_per_segment(self) -> int:
        return 1 + self.segment_samples // self.hop_length

    @property
    def n_frames(self) -> int:
        return self.n_segments * self.frames_per_segment

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_waveform(samples: np.ndarray, sr_in: int, p: AudioParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Source samples (frames, channels) -> segment windows (channel, segment, sample) float32 at ``p.sr``.

    Mono is duplicated to two channels, more than two channels keep the first two; the audio is
    resampled with soxr (HQ) when its rate differs, then zero-padded or cut to the grid. Returns the
    windows and notes for the ledger (source rate and channels, real length, padding, cut, silence).
    Raises ValueError for NaN or Inf samples.
    """
    import soxr

    if not np.isfinite(samples).all():
        raise MediaError("audio has NaN or Inf samples")
    notes: dict[str, Any] = {"source_sr": int(sr_in), "source_channels": int(samples.shape[1])}
    if samples.shape[1] == 1:
        samples = np.repeat(samples, p.channels, axis=1)
        notes["mono_duplicated"] = True
    samples = samples[:, : p.channels]
    if sr_in != p.sr:
        samples = soxr.resample(samples, sr_in, p.sr, quality="HQ").astype(np.float32, copy=False)
    n_real = samples.shape[0]
    n_grid = p.n_segments * p.segment_samples
    notes["real_duration_s"] = n_real / p.sr
    if n_real < n_grid:
        notes["padded_s"] = (n_grid - n_real) / p.sr
        samples = np.pad(samples, ((0, n_grid - n_real), (0, 0)))
    elif n_real > n_grid:
        notes["cut_s"] = (n_real - n_grid) / p.sr
        samples = samples[:n_grid]
    if float(np.sqrt(np.mean(np.square(samples[:n_real], dtype=np.float64)))) < SILENCE_RMS:
        notes["silent"] = True
    windows = np.ascontiguousarray(samples.T.reshape(p.channels, p.n_segments, p.segment_samples), dtype=np.float32)
    return windows, notes


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (scipy ``get_window("hann", n_fft, fftbins=True)``, librosa's default)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


#: Segment windows transformed together: the STFT's temporaries (framed windows, complex spectrum,
#: power) stay at a few segments (about 3 MB each for four 1 s windows at an 80 ms window, 14 ms hop).
SEGMENTS_PER_BLOCK = 4


class _Scratch(threading.local):
    """Each thread's reused work buffers, by name, grown to the largest size asked for: the STFT's
    windowed frames, complex spectrum and power (:func:`stft_power`, :func:`_filterbanks`).

    Why: glibc returns a freed buffer of a few MB at the top of the heap to the system, so a fresh
    one per block faults in every page again on first touch (timed ad hoc on this project's 2-core
    machine: 1,400 page faults, 3.5 ms of a 4-window block at an 80 ms window, more than its FFT).
    Reused, the pages stay mapped. Per thread, so concurrent extraction threads never share one.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A ``shape`` view of buffer ``name`` (its content is whatever was left in it)."""
        size = int(np.prod(shape))
        buffer = self.buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = self.buffers[name] = np.empty(size, dtype)
        return buffer[:size].reshape(shape)


_SCRATCH = _Scratch()


def stft_power(windows: np.ndarray, n_fft: int, hop_length: int, out: np.ndarray | None = None) -> np.ndarray:
    """|STFT|^2 of segment windows: (window, sample) float32 -> (window, frame, freq) float32.

    Equal, to float32 rounding, to ``abs(librosa.stft(w, n_fft, hop_length, window="hann",
    center=True, pad_mode="constant")) ** 2`` with the last two axes swapped (frames first, so that
    a filterbank is one matrix product over every frame). The power is taken straight from the
    complex spectrum (``re^2 + im^2``), without a square root. The FFT is ducc0's ``r2c`` in
    single precision, one thread: pocketfft's successor by its author, 1.4-1.6x ``scipy.fft.rfft``
    and 3-4x numpy's ``rfft`` on these float32 frames, and imported in 0.04 s where ``scipy.fft``
    takes 0.5 s (it loads ``scipy.special`` and ``numpy.f2py``), once in every extracting process.
    The windowed frames and the spectrum live in the calling thread's reused buffers
    (:class:`_Scratch`); the power goes to ``out`` (window, frame, freq) when given (a caller's
    reused buffer), else to a new array.
    """
    import ducc0

    pad = n_fft // 2
    padded = np.pad(windows, ((0, 0), (pad, pad)))
    n_frames = 1 + windows.shape[-1] // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[:, ::hop_length][:, :n_frames]
    windowed = _SCRATCH.take("windowed", frames.shape, np.float32)
    spectrum = _SCRATCH.take("spectrum", (*frames.shape[:-1], n_fft // 2 + 1), np.complex64)
    np.multiply(frames, _hann(n_fft), out=windowed)
    ducc0.fft.r2c(windowed, axes=(-1,), nthreads=1, out=spectrum)
    parts = spectrum.view(np.float32)  # (..., 2 * freq): re, im interleaved, squared in place
    np.square(parts, out=parts)
    power = np.empty(spectrum.shape, np.float32) if out is None else out
    return np.add(parts[..., 0::2], parts[..., 1::2], out=power)


#: Filters per band of a banded filterbank product (:func:`_filter_bands`): for MEL's 128 filters
#: over four 1 s windows, 0.24 ms against 1.15 ms for the dense product here (8: 0.26, 32: 0.34).
FILTERS_PER_BAND = 16


def _filter_bands(weights: np.ndarray) -> list[tuple[slice, slice, np.ndarray]] | None:
    """The product with (bin, freq) ``weights`` cut into bands of :data:`FILTERS_PER_BAND` filters,
    each over only the frequencies where its filters are nonzero: [(bins, freqs, (freq, bin)
    weights)]. A mel filter spans a few FFT bins (1.5% of MEL's weights are nonzero), so the bands
    do 13% of the dense product's work; the terms left out are exact zeros, so the values differ
    from the dense product's by float32 rounding only (the summation order). None when banding
    saves less than half (gammatone filters have long tails: the dense product then).
    """
    bands = []
    for lo in range(0, len(weights), FILTERS_PER_BAND):
        bins = slice(lo, min(lo + FILTERS_PER_BAND, len(weights)))
        support = np.flatnonzero(weights[bins].any(axis=0))
        freqs = slice(int(support[0]), int(support[-1]) + 1) if len(support) else slice(0, 0)
        bands.append((bins, freqs, np.ascontiguousarray(weights[bins, freqs].T)))
    return bands if sum(w.size for *_, w in bands) < weights.size / 2 else None


@lru_cache(maxsize=8)
def _filterbank_plan(kind: str, sr: int, n_fft: int, n_bins: int, fmin_hz: float, fmax_hz: float) -> tuple[np.ndarray, list | None]:
    """(freq, bin) weights of filterbank ``kind`` ("mel" or "gam") and their bands
    (:func:`_filter_bands`), made once per parameter set, not once per clip."""
    weights = (mel_weights if kind == "mel" else gammatone_weights)(sr, n_fft, n_bins, fmin_hz, fmax_hz)
    return weights.T, _filter_bands(weights)


def _apply_filterbank(power: np.ndarray, weights: np.ndarray, bands: list | None, out: np.ndarray) -> None:
    """``out`` (..., frame, bin) = ``power`` (..., frame, freq) @ ``weights`` (freq, bin), by bands when given."""
    if bands is None:
        np.matmul(power, weights, out=out)
        return
    for bins, freqs, band in bands:
        np.matmul(power[..., freqs], band, out=out[..., bins])


def _filterbanks(windows: np.ndarray, n_fft: int, hop_length: int, plans: dict[str, tuple[np.ndarray, list | None]]) -> dict[str, np.ndarray]:
    """Mel power and gammatone magnitude of segment windows (channel, segment, sample), segment-batched.

    ``plans`` holds ``"mel"`` and / or ``"gam"``: (freq, bin) weights and their bands
    (:func:`_filterbank_plan`). Each block of
    :data:`SEGMENTS_PER_BLOCK` windows is transformed once and both filterbanks read the same power
    (``gam`` its square root). Returns ``{"mel" | "gam": (channel, segment, bin, frame)}``, linear.
    """
    c, s, n = windows.shape
    flat = windows.reshape(c * s, n)
    n_frames = 1 + n // hop_length
    out = {k: np.empty((c * s, n_frames, w.shape[1]), dtype=np.float32) for k, (w, _) in plans.items()}
    for lo in range(0, c * s, SEGMENTS_PER_BLOCK):
        block = flat[lo : lo + SEGMENTS_PER_BLOCK]
        power = stft_power(block, n_fft, hop_length, out=_SCRATCH.take("power", (len(block), n_frames, n_fft // 2 + 1), np.float32))
        if "mel" in plans:
            _apply_filterbank(power, *plans["mel"], out["mel"][lo : lo + len(power)])
        if "gam" in plans:
            _apply_filterbank(np.sqrt(power, out=power), *plans["gam"], out["gam"][lo : lo + len(power)])
    return {k: v.reshape(c, s, n_frames, -1).transpose(0, 1, 3, 2) for k, v in out.items()}


def power_to_db(power: np.ndarray, amin: float = 1e-10) -> np.ndarray:
    """``10 log10(max(amin, power))``, dB re 1, in place (float32 stays float32).

    ``librosa.power_to_db(power, ref=1.0, amin=amin, top_db=None)``, the same operations, so the
    same values, without importing librosa (its start-up is a second of every extract-audio).
    """
    np.maximum(power, amin, out=power)
    np.log10(power, out=power)
    power *= 10.0
    return power


def amplitude_to_db(magnitude: np.ndarray, amin: float = 1e-5) -> np.ndarray:
    """``librosa.amplitude_to_db(magnitude, ref=1.0, amin=amin, top_db=None)``, in place: librosa's
    order of operations (squared, then :func:`power_to_db` at ``amin ** 2``), so the same values."""
    return power_to_db(np.square(magnitude, out=magnitude), amin=amin**2)


def _segments_to_frames(x: np.ndarray) -> np.ndarray:
    """(channel, segment, bin, frame_in_segment) -> (channel, bin, segment * frames_per_segment)."""
    c, s, b, t = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(c, b, s * t))


def spectrograms(windows: np.ndarray, p: AudioParams, features: tuple[str, ...] = FEATURES) -> dict[str, np.ndarray]:
    """Log spectrograms of segment windows (channel, segment, sample): {feature: (channel, bin, frame)}.

    The STFT is computed once, a few segments at a time, and shared by ``mel`` and ``gam``; those
    two need neither librosa nor ``scipy.signal`` (only ``cqt`` imports librosa).
    """
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ConfigError(f"unknown feature(s) {sorted(unknown)} (known: {', '.join(FEATURES)})")
    out = {}
    if "mel" in features or "gam" in features:
        fmin_hz = {"mel": p.mel_fmin_hz, "gam": p.gam_fmin_hz}
        plans = {k: _filterbank_plan(k, p.sr, p.n_fft, p.n_bins, fmin_hz[k], p.sr / 2) for k in ("mel", "gam") if k in features}
        linear = _filterbanks(windows, p.n_fft, p.hop_length, plans)
        if "mel" in linear:
            out["mel"] = power_to_db(linear["mel"])
        if "gam" in linear:
            out["gam"] = amplitude_to_db(linear["gam"] / p.n_fft)
    if "cqt" in features:
        plan = cqt_plan(p.sr, p.hop_length, p.cqt_fmin_hz, p.n_bins, p.cqt_bins_per_octave)
        out["cqt"] = amplitude_to_db(cqt_magnitude(windows, plan))
    return {name: _segments_to_frames(value.astype(np.float32, copy=False)) for name, value in out.items()}


def add_deltas(spec: np.ndarray, frames_per_segment: int, width: int = 9) -> np.ndarray:
    """(channel, bin, frame) -> (3 * channel, bin, frame): static, delta, delta-delta channels.

    Channel order: all static channels, then all deltas, then all delta-deltas (for stereo: L, R,
    dL, dR, ddL, dDR). Deltas are computed within each segment (librosa.feature.delta, ``width``
    frames, ``mode="interp"``), so a segment's deltas do not depend on its neighbours, matching the
    segment framing. ``frame`` must be a whole number of segments.
    """
    import librosa

    c, b, f = spec.shape
    if f % frames_per_segment:
        raise ConfigError(f"{f} frames is not a whole number of {frames_per_segment}-frame segments")
    per_segment = spec.reshape(c, b, f // frames_per_segment, frames_per_segment).astype(np.float32, copy=False)
    d1 = librosa.feature.delta(per_segment, width=width, order=1, axis=-1)
    d2 = librosa.feature.delta(per_segment, width=width, order=2, axis=-1)
    return np.concatenate([per_segment, d1, d2], axis=0).reshape(3 * c, b, f)


@lru_cache(maxsize=8)
def delta_matrix(frames_per_segment: int, width: int = 9) -> np.ndarray:
    """(fps, 2 * fps) float32 M such that ``segment @ M`` = [delta, delta-delta] of a segment.

    ``librosa.feature.delta`` (Savitzky-Golay, ``mode="interp"``) is linear in its input, so
    applying it to the identity gives its matrix: one BLAS product then replaces a filter per window
    (and releases the GIL). Matches :func:`featstore.audio.add_deltas` to float32 rounding.
    """
    import librosa

    eye = np.eye(frames_per_segment, dtype=np.float64)
    d1 = librosa.feature.delta(eye, width=width, order=1, axis=-1)
    d2 = librosa.feature.delta(eye, width=width, order=2, axis=-1)
    return np.concatenate([d1, d2], axis=1).astype(np.float32)
