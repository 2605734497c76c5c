"""A small synthetic dataset in the TAU Urban Audio-Visual Scenes 2021 layout.

Each class has an audio signature (a harmonic tone at a class pitch, a class noise colour and a class
amplitude-modulation rate) and a visual signature (a class background hue and a square moving at a
class velocity). Every clip draws its own jitter, noise and phase, and each modality shows the
signature of a *partner* class for a fraction of clips (audio: class k+1, visual: class k+5), so a
classifier can learn the task, neither modality alone is perfect, and the two err on different clips.

Written with soundfile (48 kHz, 24-bit PCM, stereo wav) and PyAV (H.264 mp4, yuv420p, 30 fps).

>>> from featstore.demo import make_demo_dataset
>>> make_demo_dataset("/tmp/demo", clips_per_class=2, duration_s=2.0)  # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Callable

import numpy as np

from featstore.constants import CLASSES

CITIES = ("amsterdam", "barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "prague", "stockholm", "vienna")
AUDIO_SR_HZ = 48_000
VIDEO_FPS = 30
#: Fraction of clips whose audio (visual) signature is that of the partner class.
AUDIO_CONFUSION = 0.2
VISUAL_CONFUSION = 0.15


def synth_audio(signature: int, rng: np.random.Generator, duration_s: float, sr: int = AUDIO_SR_HZ) -> np.ndarray:
    """Stereo audio (samples, 2) float32 in [-1, 1] with the audio signature of class ``signature``."""
    n = int(round(duration_s * sr))
    t = np.arange(n) / sr
    f0 = 110.0 * 2 ** (signature / 3.0) * (1 + rng.uniform(-0.03, 0.03))
    tone = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3))
    am = 1.0 + 0.5 * np.sin(2 * np.pi * (0.5 + signature * 0.4) * t)
    white = rng.standard_normal((2, n))
    # noise colour: a one-pole low-pass whose cut-off rises with the class
    alpha = 0.05 + 0.09 * signature
    spectrum = np.fft.rfft(white, axis=-1)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum /= np.sqrt(1 + (freqs / (alpha * 4000.0)) ** 2)
    noise = np.fft.irfft(spectrum, n=n, axis=-1)
    noise /= np.abs(noise).max() + 1e-9
    level = rng.uniform(0.2, 0.6)
    delay = rng.integers(0, 20)  # interaural delay in samples
    left = tone * am / 3 + level * noise[0]
    right = np.roll(tone * am / 3, delay) + level * noise[1]
    stereo = np.stack([left, right], axis=1)
    return (0.5 * stereo / np.abs(stereo).max()).astype(np.float32)


def signature_frame(signature: int, rng_phase: float, index: int, fps: float, width: int, height: int) -> np.ndarray:
    """One RGB frame (height, width, 3) uint8 with the visual signature of class ``signature``."""
    r, g, b = colorsys.hsv_to_rgb(signature / len(CLASSES), 0.6, 0.8)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = (np.array([r, g, b]) * 255).astype(np.uint8)
    t = index / fps
    side = max(4, min(width, height) // 4)
    angle = 2 * np.pi * signature / len(CLASSES)
    x = int((width - side) * (0.5 + 0.5 * np.sin(angle + rng_phase + t * (1 + signature % 3))))
    y = int((height - side) * (0.5 + 0.5 * np.cos(angle + rng_phase + t * (1 + signature % 4))))
    frame[y : y + side, x : x + side] = 255 - frame[y : y + side, x : x + side]
    return frame


def write_video(
    path: str,
    frame_at: Callable[[int], np.ndarray],
    *,
    n_frames: int,
    fps: float = VIDEO_FPS,
    codec: str = "libx264",
    frame_times_s: list[float] | None = None,
) -> None:
    """Encode ``frame_at(i)`` (RGB uint8 arrays) for i < n_frames to an mp4 with PyAV.

    ``frame_times_s`` gives each frame's presentation time (a variable frame rate video); by
    default frame i is shown at i / fps.
    """
    import av
    from fractions import Fraction

    first = frame_at(0)
    height, width = first.shape[:2]
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        if frame_times_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(first if i == 0 else frame_at(i), format="rgb24")
            if frame_times_s is not None:
                frame.pts = int(round(frame_times_s[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_dataset(
    out_dir: str,
    *,
    clips_per_class: int = 4,
    seed: int = 0,
    duration_s: float = 10.0,
    video_size: tuple[int, int] = (160, 120),
    evaluate_fraction: float = 0.3,
) -> str:
    """Write the demo dataset under ``out_dir`` (the dataset root) and return its path.

    Per class, ``clips_per_class`` clips at two clips per recording location; whole locations go
    to ``evaluate`` (about ``evaluate_fraction`` of the clips, at least one when a class has two or
    more clips) and the rest to ``train``; ``fold1_test.csv`` lists the evaluate clips without
    labels, as the real dataset does. ``video_size`` is (width, height) in pixels.
    """
    import soundfile

    rng = np.random.default_rng(seed)
    for sub in ("audio", "video", "evaluation_setup"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    meta, train, evaluate = [], [], []
    width, height = video_size
    n_frames = int(round(duration_s * VIDEO_FPS))
    for k, scene in enumerate(CLASSES):
        n_eval = 0 if clips_per_class < 2 else max(1, int(round(clips_per_class * evaluate_fraction)))
        for j in range(clips_per_class):
            city = CITIES[(k + j) % len(CITIES)]
            location = 1000 + 100 * k + j // 2 + (50 if j >= clips_per_class - n_eval else 0)
            stem = f"{scene}-{city}-{location}-{j * 10000 + 10000}"
            audio_sig = (k + 1) % len(CLASSES) if rng.random() < AUDIO_CONFUSION else k
            visual_sig = (k + 5) % len(CLASSES) if rng.random() < VISUAL_CONFUSION else k
            audio_rel, video_rel = f"audio/{stem}.wav", f"video/{stem}.mp4"
            soundfile.write(
                os.path.join(out_dir, audio_rel), synth_audio(audio_sig, rng, duration_s), AUDIO_SR_HZ, subtype="PCM_24"
            )
            phase = float(rng.uniform(0, 2 * np.pi))
            write_video(
                os.path.join(out_dir, video_rel),
                lambda i, s=visual_sig, p=phase: signature_frame(s, p, i, VIDEO_FPS, width, height),
                n_frames=n_frames,
            )
            identifier = f"{city}-{location}"
            meta.append((audio_rel, video_rel, scene, identifier))
            (evaluate if j >= clips_per_class - n_eval else train).append((audio_rel, video_rel, scene))

    def write_tsv(name: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        with open(os.path.join(out_dir, name), "w", newline="") as f:
            f.write("\t".join(header) + "\n")
            f.writelines("\t".join(row) + "\n" for row in rows)

    write_tsv("meta.csv", ("filename_audio", "filename_video", "scene_label", "identifier"), meta)
    write_tsv("evaluation_setup/fold1_train.csv", ("filename_audio", "filename_video", "scene_label"), train)
    write_tsv("evaluation_setup/fold1_evaluate.csv", ("filename_audio", "filename_video", "scene_label"), evaluate)
    write_tsv("evaluation_setup/fold1_test.csv", ("filename_audio", "filename_video"), [r[:2] for r in evaluate])
    return os.path.abspath(out_dir)
