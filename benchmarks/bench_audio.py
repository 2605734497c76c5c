"""Benchmark: `extract-audio` (mel+gam+cqt, deltas derived at read time) versus a hand-written
per-clip baseline, measured in the same run on the same generated 10 s clips.

Baseline, per clip, one process: ``librosa.load`` (32 kHz, stereo, soxr_hq), per channel
``librosa.feature.melspectrogram`` + ``power_to_db``, ``librosa.cqt`` + ``amplitude_to_db``,
``gammatone.fftweight.fft_gtgram`` + ``amplitude_to_db``; deltas and delta-deltas of each feature;
one ``np.save`` per clip and feature. featstore: the stage runner with 1 and 2 local workers
(cluster start-up included), writing the Zarr store.

    python benchmarks/bench_audio.py --clips-per-class 4

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=4)
    args = parser.parse_args()

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
