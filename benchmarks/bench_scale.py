"""Full-size simulation: the stage runner over a store of 12,291 clips (the real dataset's size) with
a cheap per-clip function, so what is measured is the runner itself.

Measures, in the same run:
- the runner's overhead per clip: in-process (``workers=0``) and on a local dask cluster, against a
  bare loop that computes and writes the same chunks with plain zarr (the baseline);
- the client's peak memory (RSS sampled every 10 ms) at 1/4 of the clips and at all of them, to
  show that it does not grow with the clip count beyond the clips table and ledger;
- the number of objects in the store per array, one object per clip against sharded (the
  default of ``featstore init``, 128 MiB of clips per shard), and the in-process runner's time in
  both layouts;
- a re-run where everything is done (fingerprint checks only).

The requests the same layouts cost on an object store are counted by ``benchmarks/bench_s3.py``.

    python benchmarks/bench_scale.py --clips 12291 --workers 2 --clips-per-task 32
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil

import featstore
from featstore.pipelines.stage import ClipResult, OutputSpec, Stage
from featstore.pipelines.runner import run_stage

VALUES = 256  # float32 values per clip (1 KiB), a stand-in for an embedding


def cheap_clip(task, params, names):
    """The per-clip work: a deterministic vector from the clip index (microseconds)."""
    return ClipResult({"x": np.full(VALUES, task.clip_index, np.float32)}, {})


def make_store(path: str, n_clips: int, shard_mb: float = 0) -> featstore.Store:
    store = featstore.init_store(path, shard_mb=shard_mb)
    ids = [f"clip-{i:06d}" for i in range(n_clips)]
    store.add_clips(pd.DataFrame({"clip_id": ids, "label": "park", "split": "train", "audio_fingerprint": ids}))
    return store


def stage(clips_per_task: int = 1) -> Stage:
    out = OutputSpec("x", "sim/x", (VALUES,), "float32", ("value",))
    return Stage("simulate", {"values": VALUES}, (out,), cheap_clip, input_fingerprint=lambda row: row["audio_fingerprint"], clips_per_task=clips_per_task)


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.start_rss = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bare_loop(store: featstore.Store) -> float:
    """Baseline: compute and write each clip's chunk with plain zarr, no ledger, no dask."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    array = zarr.create_array(os.path.join(store.url, "bare"), shape=(store.n_clips, VALUES), chunks=(1, VALUES), dtype="float32", compressors=[ZstdCodec(level=3), Crc32cCodec()])
    started = time.perf_counter()
    for i in range(store.n_clips):
        array[i] = np.full(VALUES, i, np.float32)
    return time.perf_counter() - started


def count_files(url: str) -> int:
    return sum(len(files) for _, _, files in os.walk(url))


def layouts(work: str, n: int) -> list[tuple[float, float, int, int]]:
    """(shard_mb, in-process runner seconds, objects of the array, files in the store) per layout."""
    rows = []
    for shard_mb in (0, featstore.constants.SHARD_MB):
        store = make_store(os.path.join(work, f"layout-{shard_mb}.zarr"), n, shard_mb)
        report = run_stage(store, stage(1), workers=0, progress=False)
        assert report.done == n, report.to_json()
        rows.append((shard_mb, report.seconds, count_files(os.path.join(store.url, "sim", "x")), count_files(store.url)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12_291)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clips-per-task", type=int, default=32)
    parser.add_argument("--layouts-only", action="store_true", help="Only the sharded vs one-object-per-clip rows.")
    args = parser.parse_args()
    n = args.clips
    with tempfile.TemporaryDirectory() as work:
        for shard_mb, seconds, objects, files in layouts(work, n):
            print(f"shard_mb={shard_mb:g}: in-process runner {seconds:.1f} s ({seconds / n * 1e3:.2f} ms/clip), "
                  f"{objects} objects in the array, {files} files in the store ({files / n:.4f} per clip)")
        if args.layouts_only:
            return
        t_bare = bare_loop(make_store(os.path.join(work, "bare.zarr"), n))
        rows = []
        for workers, per_task in ((0, 1), (args.workers, 1), (args.workers, args.clips_per_task)):
            for count in (n // 4, n):
                store = make_store(os.path.join(work, f"s-{workers}-{per_task}-{count}.zarr"), count)
                with PeakRSS() as mem:
                    report = run_stage(store, stage(per_task), workers=workers, progress=False)
                assert report.done == count, report.to_json()
                rows.append((workers, per_task, count, report.seconds, mem.peak - mem.start_rss, mem.peak))
        store = featstore.open_store(os.path.join(work, f"s-{args.workers}-{args.clips_per_task}-{n}.zarr"))
        rerun = run_stage(store, stage(args.clips_per_task), workers=args.workers, progress=False)
        objects = len(os.listdir(os.path.join(store.url, "sim", "x", "c")))
    print(f"{n} clips, {VALUES * 4} B per clip, {os.cpu_count()} cores")
    print(f"bare zarr loop (baseline): {t_bare:.1f} s, {t_bare / n * 1e3:.2f} ms/clip")
    print(f"{'workers':>7} {'clips/task':>10} {'clips':>6} {'seconds':>8} {'ms/clip':>8} {'vs bare':>8} {'client peak RSS growth':>23}")
    for workers, per_task, count, seconds, growth, peak in rows:
        print(f"{workers:>7} {per_task:>10} {count:>6} {seconds:>8.1f} {seconds / count * 1e3:>8.2f} {seconds / count / (t_bare / n):>7.1f}x {growth / 2**20:>18.0f} MiB (peak {peak / 2**20:.0f} MiB)")
    print(f"re-run with every clip done: {rerun.seconds:.2f} s ({rerun.skipped} skipped)")
    print(f"objects in the store for the array: {objects} chunk files + 1 zarr.json")


if __name__ == "__main__":
    main()
