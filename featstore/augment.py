"""Whole-batch transforms of the read path: spectrogram deltas, image augmentation, mixup.

Each works on a batch at once (numpy, no per-example Python beyond the image crops) and takes its
randomness from a ``numpy.random.Generator`` passed in, so a batch is a pure function of its seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from featstore.audio import delta_matrix
from featstore.errors import ConfigError


def with_deltas(static: np.ndarray, frames_per_segment: int, width: int = 9, *, channels_last: bool = False) -> np.ndarray:
    """(..., channel, bin, frame) -> (..., 3 * channel, bin, frame) float32 (or (..., bin, frame, 3 * channel)).

    Channel order as :func:`featstore.audio.add_deltas`: all static channels (unchanged), then all
    deltas, then all delta-deltas. Deltas are computed within each segment of ``frames_per_segment``
    frames; ``frame`` must be a whole number of segments.
    """
    *lead, c, b, f = static.shape
    if f % frames_per_segment:
        raise ConfigError(f"{f} frames is not a whole number of {frames_per_segment}-frame segments")
    k, n = f // frames_per_segment, len(lead)
    segments = np.ascontiguousarray(static, dtype=np.float32).reshape(*lead, c, b, k, frames_per_segment)
    # one 2-D product (a stacked one is ~3x slower), then each part written once into its place
    deltas = (segments.reshape(-1, frames_per_segment) @ delta_matrix(frames_per_segment, width)).reshape(*lead, c, b, k, 2, frames_per_segment)
    if channels_last:
        out = np.empty((*lead, b, k, frames_per_segment, 3, c), np.float32)
        out[..., 0, :] = np.moveaxis(segments, n, -1)
        out[..., 1:, :] = np.moveaxis(np.moveaxis(deltas, n + 3, -1), n, -1)
        return out.reshape(*lead, b, f, 3 * c)
    out = np.empty((*lead, 3, c, b, k, frames_per_segment), np.float32)
    out[..., 0, :, :, :, :] = segments
    out[..., 1:, :, :, :, :] = np.moveaxis(deltas, n + 3, n)
    return out.reshape(*lead, 3 * c, b, f)


def as_float32(x: np.ndarray) -> np.ndarray:
    """``x`` as float32, C-contiguous for a batch of float16 spectrogram windows (the same object if
    it is float32 already).

    A 4-D float16 batch (the store's spectrograms, however gathered) is widened through a table of
    all 65,536 half-precision values, in a compiled loop outside the GIL that reads the batch in
    its memory order: bitwise numpy's conversion (the table is numpy's own), 4x faster than
    ``astype`` here (numpy converts half floats one at a time on this project's CPU: 2.0 against
    0.45 ms for a batch of 64 windows of 128 x 72 x 2), and loader threads widen in parallel.
    """
    if x.dtype != np.float16 or x.ndim != 4:
        return x.astype(np.float32, copy=False)
    out = np.empty(x.shape, np.float32)
    bits, dst = _in_memory_order(x.view(np.uint16), out)
    _widen_kernel()(bits, _half_table(), dst)
    return out


def mixup_draws(n: int, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mixup's randomness for a batch of ``n``: (``lam`` (n,) float32 ~ Beta(alpha, alpha), ``perm``
    (n,) int64, a permutation of the batch: example ``i``'s partner). ``alpha <= 0``: no mixing (all
    ones, the identity), without a draw."""
    if alpha <= 0:
        return np.ones(n, np.float32), np.arange(n)
    return rng.beta(alpha, alpha, size=n).astype(np.float32), rng.permutation(n)


def mix_labels(y: np.ndarray, draws: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Soft labels of mixed examples: ``lam y + (1 - lam) y[perm]``, (n, classes) float32, for
    ``draws`` = (lam, perm) of :func:`mixup_draws`; ``y`` itself for None (no mixup)."""
    if draws is None:
        return y
    lam, perm = draws
    return lam[:, None] * y + (1 - lam[:, None]) * y[perm]


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mix each example with a random partner: x' = l x + (1 - l) x[p], same for the soft labels.

    ``l`` ~ Beta(alpha, alpha) per example, ``p`` a permutation of the batch (:func:`mixup_draws`). ``x`` of any real
    dtype (uint8 frames, float16 spectrograms) is mixed into C-contiguous float32 in one pass (a
    compiled kernel, outside the GIL, so loader threads mix in parallel; a 4-D float16 batch is
    widened in the same pass, as :func:`as_float32` does). ``alpha <= 0`` returns
    ``as_float32(x)`` and ``y``.
    """
    draws = mixup_draws(len(x), alpha, rng) if alpha > 0 else None
    return mix(x, draws), mix_labels(y, draws)


def mix(x: np.ndarray, draws: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``lam x + (1 - lam) x[perm]`` per example (:func:`mixup`'s arrays) for ``draws`` = (lam,
    perm) of :func:`mixup_draws`: ``x`` (batch, ...) of any real dtype, C-contiguous float32 out,
    one compiled pass; None (no mixup): ``as_float32(x)``."""
    if draws is None:
        return as_float32(x)
    lam, perm = draws
    mixed = np.empty(x.shape, np.float32)
    if x.dtype == np.float16 and x.ndim == 4:
        bits, out = _in_memory_order(x.view(np.uint16), mixed)
        _mix_half_kernel()(bits, _half_table(), lam, perm, out)
    else:
        flat = np.ascontiguousarray(x.reshape(len(x), -1))
        _mix_kernel()(flat.astype(np.float32) if flat.dtype == np.float16 else flat, lam, perm, mixed.reshape(len(x), -1))
    return mixed


def _in_memory_order(bits: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``bits`` and ``out`` (same shape, ``out`` C-contiguous) with the batch axis first, then the
    other axes from ``bits``' largest stride to its smallest: the kernels' loops in this order read
    consecutive memory innermost (a batch gathered by numpy keeps its clips' layout, channels
    outermost within each window). A C-contiguous ``bits`` comes as (batch, 1, 1, rest): one inner
    loop per example rather than one per pair of channels."""
    if bits.flags.c_contiguous and bits.size:
        return bits.reshape(len(bits), 1, 1, -1), out.reshape(len(out), 1, 1, -1)
    order = (0, *sorted(range(1, bits.ndim), key=lambda axis: -abs(bits.strides[axis])))
    return bits.transpose(order), out.transpose(order)


@lru_cache(maxsize=1)
def _half_table() -> np.ndarray:
    """float32 value of every float16 bit pattern (65,536 entries, 256 KiB), numpy's conversion."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@lru_cache(maxsize=1)
def _mix_kernel():
    """The compiled mixup loop (numba, a librosa dependency; compiled on first use, cached on disk).
    2.4x faster than two numpy passes per example on 224x224x3 uint8 frames (0.046 against 0.112 ms)."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def mix(flat, lam, perm, out):  # pragma: no cover - compiled
        for i in range(flat.shape[0]):
            w = lam[i]
            v = np.float32(1.0) - w
            a, b, o = flat[i], flat[perm[i]], out[i]
            for j in range(a.shape[0]):
                o[j] = w * np.float32(a[j]) + v * np.float32(b[j])

    return mix


@lru_cache(maxsize=1)
def _mix_half_kernel():
    """The mixup loop on a 4-D float16 batch given as its bits, widened through the table."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def mix(bits, table, lam, perm, out):  # pragma: no cover - compiled
        n0, n1, n2, n3 = bits.shape
        for i in range(n0):
            w = lam[i]
            v = np.float32(1.0) - w
            p = perm[i]
            for j in range(n1):
                for k in range(n2):
                    for m in range(n3):
                        out[i, j, k, m] = w * table[bits[i, j, k, m]] + v * table[bits[p, j, k, m]]

    return mix


@lru_cache(maxsize=1)
def _widen_kernel():
    """A 4-D float16 batch, given as its bits, to float32 through the table, one compiled pass."""
    import numba

    @numba.njit(nogil=True, cache=True)
    def widen(bits, table, out):  # pragma: no cover - compiled
        n0, n1, n2, n3 = bits.shape
        for i in range(n0):
            for j in range(n1):
                for k in range(n2):
                    for m in range(n3):
                        out[i, j, k, m] = table[bits[i, j, k, m]]

    return widen


#: Random resized crop: area share and aspect ratio ranges (torchvision's defaults).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop: area in CROP_SCALE, aspect in CROP_RATIO (10 tries,
    then the whole image, as torchvision does)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1])))
        w, h = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def augment_draws(n: int, height: int, width: int, rng: np.random.Generator, *, crop: bool = True,
                  flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The random resized crop and flip of ``n`` images of ``height`` x ``width`` pixels: (``boxes``
    (n, 4) int64, (left, top, right, bottom) in pixels, the whole image without ``crop``; ``flips``
    (n,) bool, each True with probability 1/2, all False without ``flip``)."""
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    boxes = [crop_box(height, width, rng) if crop else (0, 0, width, height) for _ in range(n)]
    return np.array(boxes, np.int64).reshape(n, 4), flips


def augment_images(frames: np.ndarray, rng: np.random.Generator, *, crop: bool = True, flip: bool = True) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H, W, 3) uint8: random resized crop (bilinear, back to H x W) and a
    horizontal flip with probability 1/2, each image on its own draw (:func:`augment_draws`)."""
    n, height, width, _ = frames.shape
    boxes, flips = augment_draws(n, height, width, rng, crop=crop, flip=flip)
    return crop_and_flip(frames, boxes, flips)


def crop_and_flip(frames: np.ndarray, boxes: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8, each image's crop ``boxes[i]`` resized back to H x W (Pillow's bilinear
    filter) and mirrored left to right where ``flips[i]``: (n, H, W, 3) uint8."""
    from PIL import Image

    n, height, width, _ = frames.shape
    out = np.empty_like(frames)
    full = (0, 0, width, height)
    for i in range(n):
        # all in Pillow, which releases the GIL (loader threads crop in parallel); its flip is a
        # row copy, 10x cheaper than numpy's reversed-stride copy of 3-byte pixels
        image = Image.fromarray(frames[i])
        box = tuple(int(v) for v in boxes[i])
        if box != full:
            image = image.resize((width, height), Image.BILINEAR, box=box)
        if flips[i]:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(image)
    return out
