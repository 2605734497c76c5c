"""The challenge's evaluation layout, written from clips of a store: one file pair per segment.

The DCASE 2021 Task 1B evaluation set (``TAU-urban-audio-visual-scenes-2021-evaluation``) holds
``audio/N.wav``, ``video/N.mp4`` and ``evaluation_setup/fold1_test.csv`` (tab-separated, header
``filename_audio  filename_video``, no labels), 1 s clips named by a number. :func:`write_eval_layout`
cuts clips of a store into that layout, so the demo (and a user checking a system end to end) can
run ``featstore predict`` on data shaped like the real evaluation set:

- audio: the source samples of each second, cut sample-exactly with soundfile at the source rate
  (24-bit PCM, as the challenge ships them);
- video: the frames whose presentation time falls in the second, re-encoded with PyAV (H.264);
- ``evaluation_setup/fold1_test.csv`` lists the files; ``truth.csv`` beside it (not part of the
  challenge's layout) keeps each file's source clip, second and label, for checking.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from featstore.store import Store


def write_eval_layout(store: Store, clip_ids: list[str], out_root: str, *, segment_s: float | None = None) -> str:
    """Cut each second (``segment_s``, default the store's segment) of ``clip_ids`` into
    ``out_root`` in the evaluation layout; returns ``out_root``."""
    import av
    import soundfile

    from featstore.demo import write_video

    segment_s = segment_s or store.segment_s
    for sub in ("audio", "video", "evaluation_setup"):
        os.makedirs(os.path.join(out_root, sub), exist_ok=True)
    listed, truth, number = [], [], 0
    for clip_id in clip_ids:
        clip = store.clips.iloc[store.clip_index(clip_id)]
        samples, sr = soundfile.read(store.source_path(clip.audio_path), dtype="float32", always_2d=True)
        with av.open(store.source_path(clip.video_path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 30)
            frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        n_seconds = int(round(store.clip_duration_s / segment_s))
        step = int(round(segment_s * sr))
        for k in range(n_seconds):
            start_s = k * segment_s
            second = [img for t, img in frames if start_s - 1e-6 <= t < start_s + segment_s - 1e-6]
            if not second or (k + 1) * step > len(samples):
                break
            audio_rel, video_rel = f"audio/{number}.wav", f"video/{number}.mp4"
            soundfile.write(os.path.join(out_root, audio_rel), np.clip(samples[k * step : (k + 1) * step], -1.0, 1.0), sr, subtype="PCM_24")
            write_video(os.path.join(out_root, video_rel), lambda i: second[i], n_frames=len(second), fps=fps)
            listed.append((audio_rel, video_rel))
            truth.append((audio_rel, clip_id, k, clip.label))
            number += 1
    _write_tsv(os.path.join(out_root, "evaluation_setup", "fold1_test.csv"), ("filename_audio", "filename_video"), listed)
    _write_tsv(os.path.join(out_root, "truth.csv"), ("filename_audio", "source_clip", "second", "scene_label"), truth)
    return out_root


def _write_tsv(path: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
