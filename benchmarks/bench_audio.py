"""Benchmark: `extract-audio` against a hand-written per-clip loop, one thread, on generated 10 s clips
(48 kHz, 24-bit, stereo), both measured in the same run, in alternating rounds (medians).

The plain loop, per clip: ``soundfile.read``, ``soxr.resample`` (HQ) to 32 kHz, per 1 s segment the
feature's reference transform (MEL ``librosa.feature.melspectrogram`` + ``power_to_db``, CQT
``librosa.cqt`` + ``amplitude_to_db``, GAM gammatone's ``fft_gtgram`` + ``amplitude_to_db``), one
``np.save`` per clip. Everything runs on one thread (BLAS, OpenMP and numba pools pinned to 1).

``--mode per-clip`` (default): per feature, the marginal cost of a clip, the slope between two
clip counts (so start-up cancels out), of ``extract_audio(workers=0)`` against the plain loop, and
of featstore's transform alone against the reference transform on the same segment windows
(called on each window, and for MEL and CQT once on all of a clip's windows). ``librosa.cqt``
builds its filters on every call, as it does unless its disk cache is configured.

    python benchmarks/bench_audio.py --mode per-clip --sizes 6,18 --rounds 3

``--mode whole-process``: the wall and CPU time of the commands a user runs on 40 clips, fixed costs
included (each its own process: ``featstore init``, ``ingest``, ``extract-audio --features mel
--workers 0``) against the plain loop run as one process.

    python benchmarks/bench_audio.py --mode whole-process --rounds 5

``--mode workers``: ``extract_audio`` with ``--workers 1`` (one local dask worker process) against
in-process, marginal per clip and the fixed cost of the local cluster (the difference of the two
lines' intercepts), the cluster's start and close timed alone, and ``--workers 2`` against
``--workers 1`` (wall time: what two cores buy), beside what two cores buy the same work without
dask (two in-process runs at once, separate processes, against one). Last, the CPU an idle one-worker cluster takes
while it waits (this process: scheduler, nanny, client; the worker process), as featstore starts it
and with dask's defaults, in percent of a core over 5 s.

    python benchmarks/bench_audio.py --mode workers --sizes 16,64 --rounds 3   # smaller sizes drown the slope in the cluster start's noise

Medians of ``--rounds``; the machine is shared, so the CPU seconds are printed beside wall seconds.

With lhotse installed (``pip install -e .[bench]``), ``--mode per-clip`` also times lhotse's
``CutSet.compute_and_store_features`` on the same clips for MEL (``LibrosaFbank`` at the same
32 kHz, 2560-point FFT, 448-sample hop and 128 bins from 0 Hz to 16 kHz, ``LilcomChunkyWriter``,
``num_jobs=1``; lhotse resamples the 48 kHz files itself). ``LibrosaFbank`` takes one channel, so
each stereo clip is two mono cuts; lhotse frames the whole 10 s clip (714 frames per channel),
featstore each 1 s segment (720).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

#: One thread for every pool, set before numpy loads its BLAS (and inherited by subprocesses).
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
os.environ.update(ONE_THREAD)

import numpy as np  # noqa: E402

SR, N_FFT, HOP, N_BINS = 32000, 2560, 448, 128


def reference_transform(feature: str):
    """The reference transform of one feature: segment window (channel, sample) -> (channel, bin, frame)."""
    import librosa

    if feature == "mel":
        return lambda y: librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_BINS, fmax=SR / 2), ref=1.0, amin=1e-10, top_db=None)
    if feature == "cqt":
        return lambda y: librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=SR, hop_length=HOP, fmin=50.0, n_bins=N_BINS, bins_per_octave=16)), ref=1.0, amin=1e-5, top_db=None)
    from gammatone.fftweight import fft_gtgram

    return lambda y: librosa.amplitude_to_db(np.stack([fft_gtgram(ch, SR, N_FFT / SR, HOP / SR, N_BINS, 50.0) for ch in y]), ref=1.0, amin=1e-5, top_db=None)


def plain_loop(paths: list[str], out_dir: str, feature: str) -> None:
    """The hand-written loop of the module docstring over ``paths``, one ``.npy`` per clip in ``out_dir``."""
    import soundfile
    import soxr

    transform = reference_transform(feature)
    for path in paths:
        samples, sr = soundfile.read(path, dtype="float32", always_2d=True)
        y = soxr.resample(samples, sr, SR, quality="HQ").T
        segments = [transform(np.ascontiguousarray(y[:, lo : lo + SR])) for lo in range(0, y.shape[1] - SR + 1, SR)]
        np.save(os.path.join(out_dir, os.path.basename(path) + ".npy"), np.concatenate(segments, axis=-1).astype(np.float32))


def lhotse_mel(paths: list[str], out_dir: str):
    """lhotse's MEL of ``paths`` (module docstring), or None when lhotse is not installed: a
    function that computes and stores them in ``out_dir`` (the cuts are made before, not timed)."""
    try:
        from lhotse import CutSet, Recording, RecordingSet
        from lhotse.features import LibrosaFbank, LibrosaFbankConfig
        from lhotse.features.io import LilcomChunkyWriter
    except ImportError:
        return None
    recordings = RecordingSet.from_recordings(Recording.from_file(p) for p in paths)
    mono = CutSet.from_cuts(m for cut in CutSet.from_manifests(recordings=recordings) for m in cut.to_mono(mono_downmix=False))
    cuts = mono.resample(SR)
    extractor = LibrosaFbank(LibrosaFbankConfig(sampling_rate=SR, fft_size=N_FFT, hop_size=HOP, num_mel_bins=N_BINS, fmin=0, fmax=SR // 2))

    def run() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        cuts.compute_and_store_features(extractor, out_dir, num_jobs=1, storage_type=LilcomChunkyWriter, progress_bar=False)

    return run


def make_dataset(work: str, n_clips: int) -> tuple[str, list[str]]:
    """A generated TAU-layout dataset of at least ``n_clips`` clips (tiny videos): (root, wav paths)."""
    from featstore.demo import make_demo_dataset

    root = make_demo_dataset(os.path.join(work, "data"), clips_per_class=-(-n_clips // 10), video_size=(32, 24), seed=0)
    wavs = sorted(os.path.join(root, "audio", f) for f in os.listdir(os.path.join(root, "audio")))
    return root, wavs


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children) of ``fn()``."""
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    wall, used = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - wall, cpu() - used


def medians(samples: dict) -> dict:
    """{key: [(wall, CPU) per round]} -> {key: (median wall, median CPU)}."""
    return {k: tuple(float(np.median([s[i] for s in v])) for i in (0, 1)) for k, v in samples.items()}


def slope(t: dict, run: tuple, sizes: tuple[int, int], i: int) -> float:
    """Marginal seconds per clip of ``run`` (keys ``(*run, n_clips)``; i = 0 wall, 1 CPU) between the two sizes."""
    return (t[(*run, sizes[1])][i] - t[(*run, sizes[0])][i]) / (sizes[1] - sizes[0])


def fresh_store(work: str, root: str, n_clips: int, shard_mb: float | None = None):
    """A new store under ``work`` (``shard_mb``: None, the default sharded layout; 0, one object per
    clip) holding the first ``n_clips`` clips
    of the dataset at ``root``, audio only, ingested from a CSV manifest (not timed). A run then
    covers its whole store, as a user's does: a run over part of a store would write part of a
    shard, which rewrites the shard's other rows too, and the slope between two sizes would
    measure that instead of a clip's cost."""
    import featstore
    from featstore.pipelines.ingest import ingest

    manifest = os.path.join(root, f"first-{n_clips}.csv")
    if not os.path.exists(manifest):
        wavs = sorted(os.listdir(os.path.join(root, "audio")))[:n_clips]
        with open(manifest, "w") as f:  # demo file names start with their scene label
            f.write("audio,video,label,split\n" + "".join(f"audio/{w},,{w.split('-')[0]},train\n" for w in wavs))
    layout = {} if shard_mb is None else {"shard_mb": shard_mb}
    store = featstore.init_store(os.path.join(work, f"store-{time.monotonic_ns()}.zarr"), **layout)
    ingest(store, manifest, fmt="csv")
    return store


def per_clip(args, work: str) -> None:
    from threadpoolctl import threadpool_limits

    from featstore.pipelines.extract_audio import extract_audio

    threadpool_limits(1)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    root, wavs = make_dataset(work, sizes[1])
    npy = os.path.join(work, "npy")
    os.makedirs(npy)
    samples: dict = {}
    lhotse_runs = {n: lhotse_mel(wavs[:n], os.path.join(work, "lhotse")) for n in sizes}
    for feature in args.features.split(","):
        plain_loop(wavs, npy, feature)  # warm-up: imports, filter banks, the file cache
        extract_audio(fresh_store(work, root, 1, args.shard_mb), features=(feature,), workers=0, progress=False)
        with_lhotse = feature == "mel" and lhotse_runs[sizes[0]] is not None
        if with_lhotse:
            lhotse_runs[sizes[0]]()  # warm-up
        for _ in range(args.rounds):
            for n in sizes:
                store = fresh_store(work, root, n, args.shard_mb)
                samples.setdefault((feature, "featstore", n), []).append(timed(lambda: extract_audio(store, features=(feature,), workers=0, progress=False)))
                samples.setdefault((feature, "plain", n), []).append(timed(lambda: plain_loop(wavs[:n], npy, feature)))
                if with_lhotse:
                    samples.setdefault((feature, "lhotse", n), []).append(timed(lhotse_runs[n]))
    t = medians(samples)
    print(f"marginal ms per clip, one thread, slope between {sizes[0]} and {sizes[1]} clips, medians of {args.rounds} rounds")
    print(f"{'feature':<8} {'against':<10} {'featstore wall':>15} {'its wall':>9} {'ratio':>6}   {'featstore CPU':>14} {'its CPU':>8} {'ratio':>6}")
    rows = [(feature, "plain") for feature in args.features.split(",")] + ([("mel", "lhotse")] if ("mel", "lhotse", sizes[0]) in t else [])
    for feature, baseline in rows:
        m = {(run, i): 1000 * slope(t, (feature, run), sizes, i) for run in ("featstore", baseline) for i in (0, 1)}
        print(f"{feature:<8} {baseline + ' loop' if baseline == 'plain' else baseline:<10} {m['featstore', 0]:>15.1f} {m[baseline, 0]:>9.1f} {m['featstore', 0] / m[baseline, 0]:>5.2f}x   "
              f"{m['featstore', 1]:>14.1f} {m[baseline, 1]:>8.1f} {m['featstore', 1] / m[baseline, 1]:>5.2f}x")
    if ("mel", "lhotse", sizes[0]) not in t:
        print("lhotse: not installed (pip install -e .[bench]), not compared")
    transforms(args.features.split(","), max(args.rounds, 5))


def transforms(features: list[str], rounds: int) -> None:
    """featstore's transform alone against the reference on the same windows of one 10 s stereo
    clip: called on each window (as the plain loop does), and for MEL and CQT also once on all ten
    windows (librosa takes any leading axes; gammatone's ``fft_gtgram`` takes one channel)."""
    from featstore.audio import AudioParams, spectrograms

    p = AudioParams(sr=SR, n_bins=N_BINS, win_ms=80.0, hop_ms=14.0, segment_s=1.0, n_segments=10)
    windows = (0.1 * np.random.default_rng(0).standard_normal((2, 10, SR))).astype(np.float32)
    runs = {}
    for feature in features:
        reference = reference_transform(feature)
        runs[feature, "featstore"] = lambda f=feature: spectrograms(windows, p, (f,))
        runs[feature, "reference"] = lambda r=reference: [r(windows[:, k]) for k in range(windows.shape[1])]
        if feature != "gam":
            runs[feature, "one call"] = lambda r=reference: r(windows)
    samples: dict = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(rounds):
        for key, fn in runs.items():
            samples[key].append(timed(fn))
    t = medians(samples)
    print(f"\ntransform alone, ms per 10 s stereo clip (ten 1 s windows), one thread, medians of {rounds} rounds")
    print(f"{'feature':<8} {'featstore':>10} {'reference':>10} {'ratio':>6}  {'reference, one call':>20} {'ratio':>6}  (CPU: featstore, reference, ratio)")
    for feature in features:
        f, r = t[feature, "featstore"], t[feature, "reference"]
        one = t.get((feature, "one call"))
        batched = f"{1000 * one[0]:>20.1f} {f[0] / one[0]:>5.2f}x" if one else f"{'-':>20} {'-':>6}"
        print(f"{feature:<8} {1000 * f[0]:>10.1f} {1000 * r[0]:>10.1f} {f[0] / r[0]:>5.2f}x  {batched}  ({1000 * f[1]:.1f}, {1000 * r[1]:.1f}, {f[1] / r[1]:.2f}x)")


def whole_process(args, work: str) -> None:
    root, wavs = make_dataset(work, 40)
    wavs = wavs[:40]
    exe = shutil.which("featstore", path=os.path.dirname(sys.executable)) or "featstore"
    npy = os.path.join(work, "npy")
    os.makedirs(npy)

    # Bytecode caches are written, as on a user's machine (a sandbox may set PYTHONDONTWRITEBYTECODE,
    # which makes every process compile featstore's modules from source again).
    env = {k: v for k, v in {**os.environ, **ONE_THREAD}.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)

    samples: dict = {}
    for r in range(args.rounds + 1):  # round 0 warms the file cache and the bytecode caches
        store = os.path.join(work, f"store-{r}.zarr")
        steps = {
            "featstore init": lambda: run(exe, "init", store),
            "featstore ingest": lambda: run(exe, "ingest", store, root),
            "featstore extract-audio": lambda: run(exe, "extract-audio", store, "--features", "mel", "--workers", "0"),
            "plain loop (one process)": lambda: run(sys.executable, __file__, "--plain-loop", npy, *wavs),
            "featstore --version": lambda: run(exe, "--version"),
        }
        for name, fn in steps.items():
            cost = timed(fn)
            if r:
                samples.setdefault(name, []).append(cost)
    t = medians(samples)
    commands = ("featstore init", "featstore ingest", "featstore extract-audio")
    total = medians({"total": [tuple(sum(samples[k][r][i] for k in commands) for i in (0, 1)) for r in range(args.rounds)]})["total"]
    plain = t["plain loop (one process)"]
    print(f"whole process, 40 clips of 10 s, MEL only, one thread, medians of {args.rounds} rounds")
    print(f"{'run':<36} {'wall s':>7} {'CPU s':>7}")
    for name, (wall, cpu) in t.items():
        print(f"{name:<36} {wall:>7.2f} {cpu:>7.2f}")
    print(f"{'featstore init + ingest + extract':<36} {total[0]:>7.2f} {total[1]:>7.2f}")
    print(f"featstore / plain loop: wall {total[0] / plain[0]:.2f}x, CPU {total[1] / plain[1]:.2f}x (target <= 0.7x)")
    # each round's own ratio: its runs share the machine's load of the moment
    rounds = [sum(samples[k][r][0] for k in commands) / samples["plain loop (one process)"][r][0] for r in range(args.rounds)]
    print("per round (wall): " + ", ".join(f"{x:.2f}x" for x in rounds) + f"; median {float(np.median(rounds)):.2f}x")


def workers(args, work: str) -> None:
    from featstore.pipelines.extract_audio import extract_audio

    sizes = tuple(int(s) for s in args.sizes.split(","))
    root, _ = make_dataset(work, sizes[1])
    counts = (0, 1, 2)
    samples: dict = {}
    for r in range(args.rounds + 1):  # round 0: warm-up
        for n in sizes:
            for w in counts:
                store = fresh_store(work, root, n, args.shard_mb)
                cost = timed(lambda: extract_audio(store, features=("mel",), workers=w, progress=False))
                if r:
                    samples.setdefault((f"workers={w}", n), []).append(cost)
        if r:
            samples.setdefault(("cluster start + close", 0), []).append(timed(cluster_start_close))
    t = medians(samples)
    print(f"extract-audio --features mel, medians of {args.rounds} rounds (CPU: this process and its workers)")
    for (run, n), (wall, cpu) in t.items():
        print(f"  {run:<24} {n:>3} clips {wall:>7.2f} s wall {cpu:>7.2f} s CPU")
    for i, what in ((0, "wall"), (1, "CPU")):
        m = {w: slope(t, (f"workers={w}",), sizes, i) for w in counts}
        fixed = {w: t[(f"workers={w}", sizes[0])][i] - m[w] * sizes[0] for w in counts}
        print(f"{what}: marginal per clip in-process {1000 * m[0]:.1f} ms, --workers 1 {1000 * m[1]:.1f} ms: {m[1] / m[0]:.2f}x (target <= 1.05x); "
              f"fixed cost of the local cluster {fixed[1] - fixed[0]:.2f} s (start + close alone: {t[('cluster start + close', 0)][i]:.2f} s)")
    m = {w: slope(t, (f"workers={w}",), sizes, 0) for w in counts}
    busy = slope(t, ("workers=1",), sizes, 1) / m[1]
    rounds = [{key: value[r] for key, value in samples.items()} for r in range(args.rounds)]
    own = [slope(each, ("workers=1",), sizes, 0) / slope(each, ("workers=2",), sizes, 0) for each in rounds]
    print(f"wall: marginal per clip --workers 2 {1000 * m[2]:.1f} ms: {m[1] / m[2]:.2f}x the clips per second of --workers 1 (target >= 1.8x); "
          f"each round's own ratio: {', '.join(f'{g:.2f}x' for g in own)}; "
          f"one worker run keeps {busy:.2f} cores busy (CPU per clip over wall per clip: the worker's write-behind thread, this process)")
    gains = [two_processes_gain(work, root, sizes[1], args.shard_mb) for _ in range(args.rounds)]
    print(f"the machine's own gain from a second core for this work, no dask: two in-process runs of {sizes[1] - 2} clips at once, separate "
          f"processes and stores, against one alone: " + ", ".join(f"{g:.2f}x" for g in gains) + f" (median {float(np.median(gains)):.2f}x)")
    for name, config in (("featstore's settings", None), ("dask's defaults", {})):
        driver, worker = idle_cluster_cpu(config)
        print(f"idle one-worker cluster, {name}: {driver:.1f}% of a core in this process, {worker:.1f}% in the worker")


def two_processes_gain(work: str, root: str, n_clips: int, shard_mb: float | None) -> float:
    """Clips per second of two in-process ``extract_audio`` runs at once (separate processes, each
    its own store) over one run alone; each run's first 2 clips (imports, filter banks) untimed."""
    def start() -> subprocess.Popen:
        store = fresh_store(work, root, n_clips, shard_mb)
        return subprocess.Popen([sys.executable, __file__, "--in-process-run", store.url, str(n_clips)], stdout=subprocess.PIPE, text=True)

    def seconds(*runs: subprocess.Popen) -> list[float]:
        return [float(run.communicate()[0].split()[-1]) for run in runs]

    (one,) = seconds(start())
    return 2 * one / max(seconds(start(), start()))


def in_process_run(url: str, n_clips: int) -> None:
    """Print the seconds ``extract_audio(workers=0)`` takes over clips 3..``n_clips`` of the store at ``url``."""
    import featstore
    from featstore.pipelines.extract_audio import extract_audio

    store = featstore.open_store(url)
    ids = store.clips.clip_id[:n_clips].tolist()
    extract_audio(store, features=("mel",), clips=ids[:2], workers=0, progress=False)
    started = time.perf_counter()
    extract_audio(store, features=("mel",), clips=ids[2:], workers=0, progress=False)
    print(time.perf_counter() - started)


def idle_cluster_cpu(config: dict | None, seconds: float = 5.0) -> tuple[float, float]:
    """Percent of a core (this process, the worker) a one-worker local cluster takes while idle,
    started with featstore's ``LOCAL_CLUSTER_CONFIG`` (``config=None``) or with ``config``
    (plus the malloc setting, so that only the event-loop and profiler settings differ)."""
    import logging

    import dask.config
    from distributed import Client, LocalCluster

    from featstore.pipelines.runner import LOCAL_CLUSTER_CONFIG, WORKER_ENV

    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return own.ru_utime + own.ru_stime

    malloc = {k: v for k, v in LOCAL_CLUSTER_CONFIG.items() if "MALLOC" in k}
    with dask.config.set(LOCAL_CLUSTER_CONFIG if config is None else {**malloc, **config}):  # as the runner sets it: while starting
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, env=WORKER_ENV, dashboard_address=None, silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        time.sleep(1.0)  # start-up settles
        (worker_0,), here_0, wall = client.run(cpu).values(), cpu(), time.perf_counter()
        time.sleep(seconds)
        (worker_1,), here_1, wall = client.run(cpu).values(), cpu(), time.perf_counter() - wall
    return 100 * (here_1 - here_0) / wall, 100 * (worker_1 - worker_0) / wall


def cluster_start_close() -> None:
    """A one-worker local cluster as the runner starts it, and a trivial task on it."""
    import logging

    import dask.config
    from distributed import Client, LocalCluster

    from featstore.pipelines.runner import LOCAL_CLUSTER_CONFIG, WORKER_ENV

    with dask.config.set(LOCAL_CLUSTER_CONFIG), LocalCluster(n_workers=1, threads_per_worker=1, processes=True, env=WORKER_ENV, dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.submit(sum, [1, 2]).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("per-clip", "whole-process", "workers"), default="per-clip")
    parser.add_argument("--sizes", default="10,30", help="Two clip counts; the marginal cost is the slope between them.")
    parser.add_argument("--features", default="mel,gam,cqt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-mb", type=float, default=None, help="Layout of the stores (per-clip, workers): MiB per shard; 0 = one object per clip (default: the store's default, sharded).")
    parser.add_argument("--plain-loop", nargs="+", metavar=("OUT_DIR", "WAV"), help="Run only the plain MEL loop (used by --mode whole-process).")
    parser.add_argument("--in-process-run", nargs=2, metavar=("STORE", "N_CLIPS"), help="Time one in-process run (used by --mode workers).")
    args = parser.parse_args()
    if args.in_process_run:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        return in_process_run(args.in_process_run[0], int(args.in_process_run[1]))
    if args.plain_loop:
        return plain_loop(args.plain_loop[1:], args.plain_loop[0], "mel")
    with tempfile.TemporaryDirectory() as work:
        {"per-clip": per_clip, "whole-process": whole_process, "workers": workers}[args.mode](args, work)


if __name__ == "__main__":
    main()
