"""Benchmark: `extract-frames` (2 fps, 224x224, squash) versus bare PyAV decoding of the same files,
measured in the same run on generated 1280x720 H.264 videos (30 fps, 10 s).

Bare decode: open each file, threaded decoding (``thread_type = "AUTO"``, as the stage uses), decode
every frame, convert nothing. featstore: the whole stage, in-process (``workers=0``, the same single
process as the bare decode) and with one local dask worker (cluster start-up included), writing
the Zarr store. Bare and in-process runs alternate for ``--rounds`` rounds; the times are medians
and the in-process ratio is the median of each round's own ratio (a round's two runs are seconds
apart, so they share the machine's load of the moment; shared machines drift by 10-30 %).

    python benchmarks/bench_frames.py --clips 10 --rounds 5

Prints clips/s and the ratio of featstore's time to the bare decode's (target: within 1.1x).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def bare_decode(paths: list[str]) -> float:
    import av

    started = time.perf_counter()
    for path in paths:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds; medians are reported.")
    args = parser.parse_args()

    import featstore
    from featstore.demo import signature_frame, write_video
    from featstore.pipelines.extract_frames import extract_frames
    from featstore.pipelines.ingest import ingest

    with tempfile.TemporaryDirectory() as work:
        rng = np.random.default_rng(0)
        rows = ["audio,video,label,split"]
        paths = []
        for i in range(args.clips):
            path = os.path.join(work, f"clip{i}.mp4")
            noise = rng.integers(0, 40, (720, 1280, 3), dtype=np.uint8)  # texture, so decoding does real work
            write_video(path, lambda k, i=i: signature_frame(i % 10, 0.3, k, 30, 1280, 720) + np.roll(noise, 8 * k, axis=1), n_frames=300, fps=30)
            paths.append(path)
            rows.append(f",clip{i}.mp4,bus,train")
        open(os.path.join(work, "m.csv"), "w").write("\n".join(rows) + "\n")
        bare_decode(paths)  # warm-up: file cache, libraries

        def featstore_run(name: str, workers: int) -> float:
            store = featstore.init_store(os.path.join(work, f"{name}.zarr"))
            ingest(store, os.path.join(work, "m.csv"), fmt="csv")
            report = extract_frames(store, workers=workers, progress=False)
            assert report.done == args.clips, report.to_json()
            return report.seconds

        # alternate the runs and take medians: timings on shared machines drift by 10-30 %
        bare, inproc = [], []
        for r in range(args.rounds):
            bare.append(bare_decode(paths))
            inproc.append(featstore_run(f"in-{r}", 0))
        t_bare, t_in = float(np.median(bare)), float(np.median(inproc))
        ratio_in = float(np.median(np.asarray(inproc) / np.asarray(bare)))
        t_worker = featstore_run("worker", 1)
    n = args.clips
    print(f"{n} clips of 10 s, 1280x720 H.264 30 fps; {os.cpu_count()} cores; medians of {args.rounds} alternating rounds")
    print(f"{'run':<48} {'seconds':>8} {'clips/s':>8} {'vs bare':>8}")
    rows = (
        ("bare PyAV decode (threaded), 1 process", t_bare, 1.0),
        ("featstore extract-frames, in-process", t_in, ratio_in),
        ("featstore extract-frames, 1 dask worker", t_worker, t_worker / t_bare),
    )
    for name, t, ratio in rows:
        print(f"{name:<48} {t:>8.2f} {n / t:>8.2f} {ratio:>7.2f}x")
    print(f"in-process ratio per round: {', '.join(f'{i / b:.2f}' for i, b in zip(inproc, bare))}")
    print("target: featstore time within 1.1x of the bare decode")


if __name__ == "__main__":
    main()
