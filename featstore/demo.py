"""A synthetic dataset in the TAU Urban Audio-Visual Scenes 2021 layout, built so that each modality
is learnable but imperfect and the two err on different class pairs, as in the real task.

Each class has an audio *kind* and a visual *kind* (:data:`AUDIO_KIND`, :data:`VISUAL_KIND`). Classes
that share a kind are told apart only by a class *cue* (:data:`AUDIO_CUE`, :data:`VISUAL_CUE`), and a
clip carries its cue with probability :data:`CUE_PROBABILITY` (independently per modality); without
it, the clip's modality looks like every class of its kind. By design:

- audio confuses the transport classes (bus / metro / tram: engine hum over rumble) and the two
  streets (street_pedestrian / street_traffic: passing cars);
- video confuses the indoor halls (airport / metro_station / shopping_mall: wall, floor, walking
  people) and the open spaces (park / public_square: sky, ground, people);
- every class is distinct in at least one modality, so fusing the two can resolve both kinds of
  confusion.

Nuisance: each recording location (two clips) has its own style (level, spectral tilt, pitch, tint,
brightness, noise), and each clip its own gain, phases and object positions, so a location-disjoint
evaluate split measures generalisation. Written with soundfile (48 kHz, 24-bit PCM, stereo wav) and
PyAV (H.264 mp4, yuv420p, 30 fps).

>>> from featstore.demo import make_demo_dataset
>>> make_demo_dataset("/tmp/demo", clips_per_class=2, duration_s=2.0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from featstore.constants import CLASSES
from featstore.errors import ConfigError

CITIES = ("amsterdam", "barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "prague", "stockholm", "vienna")
AUDIO_SR_HZ = 48_000
VIDEO_FPS = 30
#: Probability that a clip carries its class cue, per modality (0: kind-mates are indistinguishable).
CUE_PROBABILITY = 0.4

#: class -> audio kind (classes of one kind sound alike but for their cue)
AUDIO_KIND = {
    "airport": "hall whistle", "bus": "vehicle", "metro": "vehicle", "metro_station": "beeps",
    "park": "birds", "public_square": "babble", "shopping_mall": "music",
    "street_pedestrian": "street", "street_traffic": "street", "tram": "vehicle",
}
#: class -> its audio cue, for the classes that share an audio kind
AUDIO_CUE = {"bus": "door hiss", "metro": "rail squeal", "tram": "bell", "street_pedestrian": "footsteps", "street_traffic": "horn"}
#: class -> visual kind (classes of one kind look alike but for their cue)
VISUAL_KIND = {
    "airport": "hall", "bus": "bus", "metro": "metro", "metro_station": "hall", "park": "open",
    "public_square": "open", "shopping_mall": "hall", "street_pedestrian": "pavement", "street_traffic": "road", "tram": "tram",
}
#: class -> (its visual cue, RGB colour), a static patch in the upper half of the frame
VISUAL_CUE = {
    "airport": ("blue departures board", (40, 70, 210)), "metro_station": ("magenta line sign", (200, 40, 170)),
    "shopping_mall": ("yellow shop front", (235, 205, 40)), "park": ("dark green tree", (25, 105, 35)),
    "public_square": ("brown building", (125, 85, 60)),
}
#: visual kind -> (upper colour, lower colour) of the background, RGB
BACKGROUND = {
    "hall": ((205, 195, 175), (165, 165, 170)), "open": ((150, 190, 230), (175, 170, 150)),
    "bus": ((215, 225, 235), (185, 75, 50)), "metro": ((45, 50, 65), (60, 60, 75)),
    "tram": ((70, 150, 145), (95, 110, 105)), "pavement": ((150, 150, 165), (190, 140, 120)), "road": ((200, 160, 90), (65, 65, 70)),
}


@dataclass
class ClipStyle:
    """The nuisance and cue draws of one clip (location style shared by the location's clips)."""

    pitch: float = 1.0  # frequency factor
    tilt: float = 0.0  # spectral tilt of the background noise, dB per octave
    snr_db: float = 6.0  # foreground (kind + cue) over background noise
    tint: np.ndarray = field(default_factory=lambda: np.zeros(3))  # RGB offset
    brightness: float = 1.0
    audio_cue: bool = True
    visual_cue: bool = True
    seed: int = 0  # phases, event times, object and cue positions


def location_style(rng: np.random.Generator) -> dict:
    """The style a recording location gives both of its clips."""
    return {"pitch": rng.uniform(0.9, 1.1), "tilt": rng.uniform(-4.5, -1.5), "tint": rng.uniform(-18, 18, 3), "brightness": rng.uniform(0.8, 1.15)}


# ---------------------------------------------------------------- audio


def _band_noise(rng, n: int, sr: int, lo: float, hi: float, tilt_db: float = 0.0) -> np.ndarray:
    """Unit-RMS noise between ``lo`` and ``hi`` Hz with a spectral tilt in dB per octave, (n,)."""
    f = np.fft.rfftfreq(n, 1 / sr)
    gain = np.where((f >= lo) & (f <= hi), (np.maximum(f, 20.0) / 1000.0) ** (tilt_db / 6.02), 0.0)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    return x / (x.std() + 1e-12)


def _gate(t: np.ndarray, rate_hz: float, duty: float, phase: float) -> np.ndarray:
    """A 0/1 on-off pattern: on for ``duty`` of each 1 / ``rate_hz`` period."""
    return (((t * rate_hz + phase) % 1.0) < duty).astype(np.float64)


def _tone(t: np.ndarray, f0: float, harmonics: int, rng, vibrato: float = 0.0) -> np.ndarray:
    """Harmonic tone, amplitude 1/h for harmonic h, random phases; ``vibrato`` a relative depth at 5 Hz."""
    phase = 2 * np.pi * f0 * (t - vibrato / (2 * np.pi * 5.0) * np.cos(2 * np.pi * 5.0 * t))
    return sum(np.sin(h * phase + rng.uniform(0, 2 * np.pi)) / h for h in range(1, harmonics + 1))


def _events(t: np.ndarray, rate_hz: float, length_s: float, rng, render: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Events at random times (``rate_hz`` on average), each ``render(tau)`` for tau in [0, length_s)."""
    sr = 1.0 / (t[1] - t[0])
    out = np.zeros_like(t)
    n_len = int(length_s * sr)
    tau = np.arange(n_len) / sr
    for start in rng.uniform(0, t[-1], rng.poisson(rate_hz * t[-1])):
        i = int(start * sr)
        seg = render(tau)[: len(t) - i]
        out[i : i + len(seg)] += seg
    return out


def _kind_sound(kind: str, t, sr: int, pitch: float, rng) -> np.ndarray:
    """The foreground of an audio kind (unit-ish level), (n,)."""
    n = len(t)
    if kind == "hall whistle":  # reverberant hall: a steady narrow whistle band and a low drone
        return _band_noise(rng, n, sr, 2300 * pitch, 2700 * pitch) + 0.5 * _tone(t, 150 * pitch, 2, rng)
    if kind == "vehicle":  # engine: dense harmonics of a low wobbling f0 over a low rumble
        return 0.7 * _tone(t, 55 * pitch, 12, rng, vibrato=0.02) + _band_noise(rng, n, sr, 30, 400, -3)
    if kind == "beeps":  # station: 5 Hz on-off beeps
        return 1.5 * _tone(t, 1100 * pitch, 2, rng) * _gate(t, 5.0, 0.5, rng.random())
    if kind == "birds":  # park: fast upward chirps
        f_lo, f_hi, d = 3000 * pitch, 5000 * pitch, 0.06
        chirp = lambda tau: np.sin(2 * np.pi * (f_lo * tau + (f_hi - f_lo) * tau**2 / (2 * d))) * np.hanning(len(tau))
        return 2.5 * _events(t, 8.0, d, rng, chirp)
    if kind == "babble":  # square: speech-band noise with 4 Hz syllabic modulation, a fountain hiss
        syll = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))
        return _band_noise(rng, n, sr, 300, 3000) * syll + 0.4 * _band_noise(rng, n, sr, 6000, 12000)
    if kind == "music":  # mall: sustained three-note chords, a new chord every 0.5 s
        roots = 262 * pitch * 2 ** (rng.integers(0, 12, int(t[-1] / 0.5) + 1) / 12)
        phase = 2 * np.pi * np.cumsum(roots[(t / 0.5).astype(int)]) / sr  # (n,) radians of the root
        return sum(np.sin(h * r * phase) / h for r in (1.0, 1.26, 1.5) for h in (1, 2, 3))
    if kind == "street":  # cars passing: broadband noise swelling every few seconds
        swell = 0.3 + 0.7 * np.sin(np.pi * ((t / 3.0 + rng.random()) % 1.0)) ** 2
        return _band_noise(rng, n, sr, 80, 8000, -2) * swell
    raise ConfigError(f"unknown audio kind {kind!r}")


def _cue_sound(cue: str, t, sr: int, pitch: float, rng) -> np.ndarray:
    """A class's audio cue (unit-ish level), (n,)."""
    n = len(t)
    if cue == "door hiss":
        return _band_noise(rng, n, sr, 4000, 8000) * _gate(t, 1.0, 0.3, rng.random())
    if cue == "rail squeal":
        return _tone(t, 2600 * pitch, 1, rng, vibrato=0.01)
    if cue == "bell":
        ding = lambda tau: (np.sin(2 * np.pi * 1600 * pitch * tau) + np.sin(2 * np.pi * 2400 * pitch * tau)) * np.exp(-tau / 0.15)
        return 1.5 * _events(t, 2.5, 0.4, rng, ding)
    if cue == "footsteps":
        burst = rng.standard_normal(int(0.08 * sr))  # one step's sound, repeated
        step = lambda tau: burst[: len(tau)] * np.exp(-tau / 0.015)
        return 3.0 * _events(t, 3.0, 0.08, rng, step)
    if cue == "horn":
        return _tone(t, 420 * pitch, 6, rng) * _gate(t, 1.0, 0.4, rng.random())
    raise ConfigError(f"unknown audio cue {cue!r}")


def synth_audio(scene: int, rng: np.random.Generator, duration_s: float, sr: int = AUDIO_SR_HZ, style: ClipStyle | None = None) -> np.ndarray:
    """Stereo audio (samples, 2) float32 in [-1, 1] of class index ``scene`` (see :data:`AUDIO_KIND`)."""
    style = style or ClipStyle(seed=int(rng.integers(2**31)))
    local = np.random.default_rng(style.seed)
    name = CLASSES[scene]
    n = int(round(duration_s * sr))
    t = np.arange(n) / sr
    fg = _kind_sound(AUDIO_KIND[name], t, sr, style.pitch, local)
    if style.audio_cue and name in AUDIO_CUE:
        fg = fg / (fg.std() + 1e-12) + _cue_sound(AUDIO_CUE[name], t, sr, style.pitch, local) / 1.5
    fg = fg / (fg.std() + 1e-12)
    bg = 10 ** (-style.snr_db / 20) * np.stack([_band_noise(local, n, sr, 20, 16000, style.tilt) for _ in range(2)])
    delay = int(local.integers(0, 20))  # interaural delay in samples
    stereo = np.stack([fg, np.roll(fg, delay)]) + bg
    gain = local.uniform(0.25, 0.8)
    return (gain * stereo / np.abs(stereo).max()).T.astype(np.float32)


# ---------------------------------------------------------------- video


def _static_layer(scene: int, style: ClipStyle, width: int, height: int) -> np.ndarray:
    """The clip's still background: kind colours and texture, cue patch, static noise; (h, w, 3) float."""
    name = CLASSES[scene]
    kind = VISUAL_KIND[name]
    local = np.random.default_rng(style.seed + 1)
    upper, lower = (np.array(c, float) for c in BACKGROUND[kind])
    split = int(height * (0.4 if kind in ("open", "bus") else 0.55))
    img = np.empty((height, width, 3))
    img[:split], img[split:] = upper, lower
    yy, xx = np.mgrid[:height, :width]
    if kind == "pavement":  # checkerboard tiles
        img[((yy // max(2, height // 10) + xx // max(2, width // 12)) % 2) == 0] -= 25
    if kind == "tram":  # yellow vertical poles
        img[:, (xx[0] % max(4, width // 5)) < max(1, width // 40)] = (230, 200, 50)
    if style.visual_cue and name in VISUAL_CUE:
        ch, cw = max(3, height // 4), max(3, width // 5)
        y0, x0 = int(local.integers(0, max(1, split - ch))), int(local.integers(0, width - cw))
        img[y0 : y0 + ch, x0 : x0 + cw] = VISUAL_CUE[name][1]
    img = img * style.brightness + style.tint
    return img + local.normal(0, 6, (height, width, 1))


def _moving_objects(kind: str, img: np.ndarray, t: float, phase: float) -> None:
    """Draw the kind's moving things at time ``t`` seconds into ``img`` (in place)."""
    height, width = img.shape[:2]
    if kind in ("hall", "open", "pavement"):  # walking people: dark narrow figures
        for k in range(3):
            x = int(((phase + k / 3 + 0.08 * t * (1 + k % 2)) % 1.0) * width)
            y = int(height * (0.55 + 0.12 * k))
            img[max(0, y - height // 6) : y, x : x + max(2, width // 24)] = (40, 35, 45)
    elif kind == "bus":  # window frames scrolling past
        period = max(4, width // 4)
        xs = (np.arange(width) + int(t * 40 + phase * period)) % period < max(2, width // 20)
        img[: int(height * 0.4), xs] = (60, 60, 60)
    elif kind == "metro":  # tunnel lights rushing by
        for k in range(2):
            x = int(((phase + k / 2 + 1.3 * t) % 1.0) * width)
            img[int(height * (0.2 + 0.3 * k)) : int(height * (0.2 + 0.3 * k)) + max(2, height // 20), x : x + max(3, width // 8)] = (250, 245, 200)
    elif kind == "tram":  # the view through the windows
        x = int(((phase + 0.3 * t) % 1.0) * width)
        img[int(height * 0.1) : int(height * 0.3), x : x + max(3, width // 6)] = (120, 170, 90)
    elif kind == "road":  # lane dashes and a car
        period = max(4, width // 5)
        xs = (np.arange(width) + int(t * 60 + phase * period)) % period < period // 2
        img[int(height * 0.75) : int(height * 0.75) + max(1, height // 40), xs] = (240, 240, 240)
        x = int(((phase + 0.25 * t) % 1.0) * width)
        img[int(height * 0.5) : int(height * 0.65), x : x + max(4, width // 5)] = (200, 30, 30)


def scene_frame(scene: int, style: ClipStyle, index: int, fps: float, width: int, height: int, static: np.ndarray | None = None) -> np.ndarray:
    """Frame ``index`` (height, width, 3) uint8 of class index ``scene`` (see :data:`VISUAL_KIND`).

    ``static`` is :func:`_static_layer`'s output, passed to reuse it across a clip's frames.
    """
    img = (_static_layer(scene, style, width, height) if static is None else static).copy()
    phase = (style.seed % 997) / 997
    _moving_objects(VISUAL_KIND[CLASSES[scene]], img, index / fps, phase)
    return np.clip(img, 0, 255).astype(np.uint8)


def signature_frame(signature: int, rng_phase: float, index: int, fps: float, width: int, height: int) -> np.ndarray:
    """One RGB frame (height, width, 3) uint8 of class index ``signature``, cue shown, neutral style."""
    return scene_frame(signature, ClipStyle(seed=int(rng_phase * 1000)), index, fps, width, height)


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


# ---------------------------------------------------------------- dataset


def class_layout(clips_per_class: int, evaluate_fraction: float) -> list[tuple[int, bool]]:
    """(location number, in evaluate) of each clip of a class: two clips per location, whole
    locations in evaluate (about ``evaluate_fraction`` of the clips, at least one from two clips)."""
    n_eval = 0 if clips_per_class < 2 else max(1, int(round(clips_per_class * evaluate_fraction)))
    n_train = clips_per_class - n_eval
    return [(j // 2, False) for j in range(n_train)] + [(50 + j // 2, True) for j in range(n_eval)]


def clip_styles(layout: list[tuple[int, bool]], rng: np.random.Generator) -> list[ClipStyle]:
    """The styles of one class's clips laid out as ``layout``: one location style per location; exactly
    ``round(CUE_PROBABILITY * len(layout))`` clips carry each modality's cue, at random."""
    n_cued = int(round(CUE_PROBABILITY * len(layout)))
    audio_cue, visual_cue = (rng.permutation(len(layout)) < n_cued for _ in range(2))
    places: dict[int, dict] = {}
    styles = []
    for j, (location, _) in enumerate(layout):
        where = places.setdefault(location, location_style(rng))
        cues = {"audio_cue": bool(audio_cue[j]), "visual_cue": bool(visual_cue[j])}
        styles.append(ClipStyle(**where, snr_db=rng.uniform(3, 12), **cues, seed=int(rng.integers(2**31))))
    return styles


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

    for sub in ("audio", "video", "evaluation_setup"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    meta, train, evaluate = [], [], []
    width, height = video_size
    n_frames = int(round(duration_s * VIDEO_FPS))
    rng = np.random.default_rng(seed)
    layout = class_layout(clips_per_class, evaluate_fraction)
    for k, scene in enumerate(CLASSES):
        for j, ((place, in_eval), style) in enumerate(zip(layout, clip_styles(layout, rng))):
            city = CITIES[(k + place) % len(CITIES)]
            location = 1000 + 100 * k + place
            stem = f"{scene}-{city}-{location}-{j * 10000 + 10000}"
            audio_rel, video_rel = f"audio/{stem}.wav", f"video/{stem}.mp4"
            audio = synth_audio(k, np.random.default_rng(style.seed), duration_s, style=style)
            soundfile.write(os.path.join(out_dir, audio_rel), audio, AUDIO_SR_HZ, subtype="PCM_24")
            static = _static_layer(k, style, width, height)
            write_video(
                os.path.join(out_dir, video_rel),
                lambda i, k=k, s=style, b=static: scene_frame(k, s, i, VIDEO_FPS, width, height, static=b),
                n_frames=n_frames,
            )
            meta.append((audio_rel, video_rel, scene, f"{city}-{location}"))
            (evaluate if in_eval else train).append((audio_rel, video_rel, scene))

    def write_tsv(name: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        with open(os.path.join(out_dir, name), "w", newline="") as f:
            f.write("\t".join(header) + "\n")
            f.writelines("\t".join(row) + "\n" for row in rows)

    write_tsv("meta.csv", ("filename_audio", "filename_video", "scene_label", "identifier"), meta)
    write_tsv("evaluation_setup/fold1_train.csv", ("filename_audio", "filename_video", "scene_label"), train)
    write_tsv("evaluation_setup/fold1_evaluate.csv", ("filename_audio", "filename_video", "scene_label"), evaluate)
    write_tsv("evaluation_setup/fold1_test.csv", ("filename_audio", "filename_video"), [r[:2] for r in evaluate])
    return os.path.abspath(out_dir)
