"""Benchmark: `predict --file` on one long file, the time of its first window against its last one,
measured in the same run (CPU, in-process).

A system is trained as in ``bench_predict.py`` (tiny aud-mel and visual backbones, an audio-visual
f4 head) and exported. The file is a generated 64x36 H.264 mp4 at 10 fps (x264's default keyframe
interval, 25 s here) with an AAC stereo track at 48 kHz. Its audio track is decoded once to a WAV
(:func:`featstore.media.seekable_audio`, timed once); then, in alternating rounds after a warm-up
window, window 1 (segments 0..W-1) and window N (the last whole window) are classified with
:func:`featstore.pipelines.predict.predict_file_window`. A ratio near 1.0 means each window costs the
same wherever it lies, so a file costs time linear in its length (decoding every window from the
file's start would make window N cost more the longer the file).

    python benchmarks/bench_predict_file.py --seconds 600 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from fractions import Fraction

import numpy as np

from bench_predict import _train_system


def _long_file(path: str, seconds: float) -> str:
    """A 64x36 mp4 of moving noise at 10 fps with a 48 kHz stereo AAC track of noise."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (36, 64 + 200, 3), dtype=np.uint8)
    with av.open(path, "w") as container:
        video = container.add_stream("libx264", rate=Fraction(10))
        video.width, video.height, video.pix_fmt = 64, 36, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "18"}
        audio = container.add_stream("aac", rate=48_000)
        audio.layout = "stereo"
        for i in range(int(seconds * 10)):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i % 200 : i % 200 + 64]), format="rgb24")))
        container.mux(video.encode())
        for i in range(0, int(seconds * 48_000), 48_000):
            frame = av.AudioFrame.from_ndarray((0.1 * rng.standard_normal((2, 48_000))).astype(np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48_000, i
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="Length of the generated file (s).")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from featstore.media import seekable_audio
    from featstore.pipelines.predict import FILE_WINDOW_SEGMENTS, predict_file_window
    from featstore.system import System

    with tempfile.TemporaryDirectory() as work:
        system = System.load(_train_system(work, 2))
        video = _long_file(os.path.join(work, "long.mp4"), args.seconds)
        n_segments = int(args.seconds / system.segment_s + 1e-3)
        window = FILE_WINDOW_SEGMENTS
        last = (n_segments // window - 1) * window
        t = time.perf_counter()
        audio = seekable_audio(video, work)
        decode_once_s = time.perf_counter() - t
        predict_file_window(system, video, audio, 0, window)  # warm-up: models loaded, graphs traced

        def timed(first: int) -> float:
            t = time.perf_counter()
            predict_file_window(system, video, audio, first, window)
            return time.perf_counter() - t

        first_s, last_s = [], []
        for r in range(args.rounds):
            first_s.append(timed(0))
            last_s.append(timed(last))
            print(f"round {r + 1}: window 1 {first_s[-1]:.2f} s, window {last // window + 1} {last_s[-1]:.2f} s ({last_s[-1] / first_s[-1]:.2f}x)")

    ratios = [b / a for a, b in zip(first_s, last_s)]
    print(f"\n{args.seconds:g} s file, {window}-segment windows ({n_segments // window} whole), medians of {args.rounds} alternating rounds, in-process:")
    print("| step | seconds | vs window 1 |")
    print("| --- | ---: | ---: |")
    print(f"| audio track decoded once to a WAV | {decode_once_s:.2f} | |")
    print(f"| window 1 (segments 0..{window - 1}) | {statistics.median(first_s):.2f} | 1.00x |")
    print(f"| window {last // window + 1} (segments {last}..{last + window - 1}) | {statistics.median(last_s):.2f} | {statistics.median(ratios):.2f}x (target ~1.0) |")


if __name__ == "__main__":
    main()
