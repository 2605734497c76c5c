"""Benchmark: `extract-audio` (mel+gam+cqt, deltas derived at read time) versus a hand-written
per-clip baseline, measured in the same run on the same generated 10 s clips.

Baseline, per clip, one process: ``librosa.load`` (32 kHz, stereo, soxr_hq), per channel
``librosa.feature.melspectrogram`` + ``power_to_db``, ``librosa.cqt`` + ``amplitude_to_db``,
``gammatone.fftweight.fft_gtgram`` + ``amplitude_to_db``; deltas and delta-deltas of each feature;
one ``np.save`` per clip and feature. featstore: the stage runner with 1 and 2 local workers
(cluster start-up included), writing the Zarr store.

    python benchmarks/bench_audio.py --clips-per-class 4

``--spectrograms-only`` times the transforms alone, one thread, on the same segment windows of one
10 s stereo clip (32 kHz, 1 s segments): featstore's ``spectrograms`` per feature against
``librosa.feature.melspectrogram`` + ``power_to_db`` (MEL) and librosa's ``stft`` + gammatone's
FFT weights (GAM) called on the same windows, alternating rounds, medians.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_audio.py --spectrograms-only

Prints clips/s and the ratios: featstore per core vs the baseline (one core), and 2 vs 1 workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def baseline(store, out_dir: str) -> float:
    """Seconds to process every clip the hand-written way (single process)."""
    import librosa
    from gammatone.fftweight import fft_gtgram

    sr, n_fft, hop = 32000, 2560, 448
    started = time.perf_counter()
    for clip_id, rel in zip(store.clips.clip_id, store.clips.audio_path):
        y, _ = librosa.load(store.source_path(rel), sr=sr, mono=False, res_type="soxr_hq")
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=128))
        cqt = librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=sr, hop_length=hop, fmin=50.0, n_bins=128, bins_per_octave=16)))
        gam = librosa.amplitude_to_db(np.stack([fft_gtgram(ch, sr, 0.080, 0.014, 128, 50.0) for ch in y]))
        for name, feat in (("mel", mel), ("gam", gam), ("cqt", cqt)):
            six = np.concatenate([feat, librosa.feature.delta(feat, order=1), librosa.feature.delta(feat, order=2)])
            np.save(os.path.join(out_dir, f"{clip_id}_{name}.npy"), six.astype(np.float32))
    return time.perf_counter() - started


def featstore_run(demo_root: str, work: str, workers: int, n_clips: int) -> float:
    """Seconds for extract-audio over the first ``n_clips`` clips of a fresh store (start-up included)."""
    import featstore
    from featstore.pipelines.extract_audio import extract_audio
    from featstore.pipelines.ingest import ingest

    store = featstore.init_store(os.path.join(work, f"store-{workers}-{n_clips}.zarr"))
    ingest(store, demo_root)
    report = extract_audio(store, clips=store.clips.clip_id[:n_clips].tolist(), workers=workers, progress=False)
    assert report.done == n_clips and report.failed == 0, report.to_json()
    return report.seconds


def spectrogram_rounds(rounds: int) -> None:
    """Print the median ms per 10 s stereo clip of each transform (see the module docstring)."""
    import librosa
    from gammatone.fftweight import fft_weights

    from featstore.audio import AudioParams, spectrograms

    p = AudioParams(sr=32000, n_bins=128, win_ms=80.0, hop_ms=14.0, segment_s=1.0, n_segments=10)
    windows = (0.1 * np.random.default_rng(0).standard_normal((2, 10, 32000))).astype(np.float32)
    weights, _ = fft_weights(p.n_fft, p.sr, p.n_bins, 1, 50.0, p.sr / 2, p.n_fft / 2 + 1)

    def librosa_mel():
        mel = librosa.feature.melspectrogram(y=windows, sr=p.sr, n_fft=p.n_fft, hop_length=p.hop_length, n_mels=p.n_bins, fmax=p.sr / 2, pad_mode="constant")
        return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)

    def librosa_gam():
        mag = np.abs(librosa.stft(windows, n_fft=p.n_fft, hop_length=p.hop_length, pad_mode="constant"))
        return librosa.amplitude_to_db(np.einsum("bf,csft->csbt", weights, mag) / p.n_fft, ref=1.0, amin=1e-5, top_db=None)

    runs = {"featstore mel": lambda: spectrograms(windows, p, ("mel",)), "librosa melspectrogram": librosa_mel,
            "featstore gam": lambda: spectrograms(windows, p, ("gam",)), "librosa stft + gammatone weights": librosa_gam}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up: filter banks, imports
    for _ in range(rounds):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    print(f"{'transform (one 10 s stereo clip, one thread)':<46} {'median ms':>10}")
    for name, ms in med.items():
        print(f"{name:<46} {ms:>10.1f}")
    print(f"mel: featstore / librosa = {med['featstore mel'] / med['librosa melspectrogram']:.2f}x; gam: {med['featstore gam'] / med['librosa stft + gammatone weights']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=4)
    parser.add_argument("--spectrograms-only", action="store_true", help="Time the transforms alone (see the docstring).")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if args.spectrograms_only:
        return spectrogram_rounds(args.rounds)

    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.pipelines.ingest import ingest

    with tempfile.TemporaryDirectory() as work:
        demo_root = make_demo_dataset(os.path.join(work, "data"), clips_per_class=args.clips_per_class, seed=0)
        store = featstore.init_store(os.path.join(work, "baseline.zarr"))
        ingest(store, demo_root)
        n = store.n_clips
        npy_dir = os.path.join(work, "npy")
        os.makedirs(npy_dir)
        baseline(store, npy_dir)  # warm-up: imports, numba JIT, file cache (not timed below)
        t_base = baseline(store, npy_dir)
        half = n // 2
        t1, t1_half = featstore_run(demo_root, work, 1, n), featstore_run(demo_root, work, 1, half)
        t2, t2_half = featstore_run(demo_root, work, 2, n), featstore_run(demo_root, work, 2, half)

    # marginal cost per clip: the slope between the half and the full run (start-up cancels out)
    m1, m2 = (t1 - t1_half) / (n - half), (t2 - t2_half) / (n - half)
    rows = [("baseline (librosa+gammatone+np.save), 1 process", t_base, t_base / n), ("featstore extract-audio, 1 worker", t1, m1), ("featstore extract-audio, 2 workers", t2, m2)]
    print(f"{n} clips of 10 s, 48 kHz stereo 24-bit; {os.cpu_count()} cores")
    print(f"{'run':<52} {'seconds':>8} {'clips/s':>8} {'marginal s/clip':>16}")
    for name, t, marginal in rows:
        print(f"{name:<52} {t:>8.2f} {n / t:>8.2f} {marginal:>16.3f}")
    print(f"featstore per core vs baseline, whole run: {t_base / t1:.2f}x; marginal: {(t_base / n) / m1:.2f}x (target >= 3x)")
    print(f"featstore 2 workers vs 1 worker, whole run: {t1 / t2:.2f}x; marginal: {m1 / m2:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
