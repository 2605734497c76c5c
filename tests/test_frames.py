"""extract-frames on real encoded videos: counts, timestamps, pixels vs an independent decode, failures."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

import featstore
from featstore.demo import write_video
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest

CLIP_S = 3.0


N_BITS = 7


def level_frame(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``: its index as 7 black/white bars in the top quarter, a smooth ramp below."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = np.clip(100 + np.linspace(-40, 40, width) + 0.5 * i, 0, 255).astype(np.uint8)[None, :, None]
    bar = width // N_BITS
    for b in range(N_BITS):
        frame[: height // 4, b * bar : (b + 1) * bar] = 230 if (i >> b) & 1 else 25
    return frame


def frame_index(rgb: np.ndarray) -> int:
    """Read the index back from a kept (size x size) frame."""
    size = rgb.shape[1]
    centres = ((np.arange(N_BITS) + 0.5) * size / N_BITS).astype(int)
    bits = rgb[rgb.shape[0] // 8, centres, 0] > 128
    return int(sum(1 << b for b, on in enumerate(bits) if on))


CASES = {
    # name: (width, height, fps, duration_s, frame_times or None)
    "cfr30-320x240": (320, 240, 30, CLIP_S, None),
    "cfr25-1280x720": (1280, 720, 25, CLIP_S, None),
    "cfr25-odd-322x178": (322, 178, 25, CLIP_S, None),
    "vfr": (320, 240, None, CLIP_S, "vfr"),
    "short-2s": (320, 240, 30, 2.0, None),
}


def _vfr_times(rng) -> list[float]:
    times, t = [], 0.0
    while t < CLIP_S:
        times.append(round(t, 3))
        t += float(rng.choice([1 / 30, 1 / 10, 1 / 15, 0.2]))
    return times


@pytest.fixture(scope="module")
def video_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    rows = ["audio,video,label,split"]
    source_times = {}
    for name, (w, h, fps, dur, kind) in CASES.items():
        path = str(root / f"{name}.mp4")
        if kind == "vfr":
            times = _vfr_times(rng)
            write_video(path, lambda i: level_frame(i, w, h), n_frames=len(times), fps=30, frame_times_s=times)
        else:
            times = [i / fps for i in range(int(round(dur * fps)))]
            write_video(path, lambda i: level_frame(i, w, h), n_frames=len(times), fps=fps)
        source_times[name] = np.array(times)
        rows.append(f",{name}.mp4,bus,train")
    good = open(root / "cfr30-320x240.mp4", "rb").read()
    open(root / "truncated.mp4", "wb").write(good[: len(good) // 2])
    open(root / "not-a-video.mp4", "wb").write(b"\x00" * 4096)
    rows += [",truncated.mp4,bus,train", ",not-a-video.mp4,bus,train"]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    store = featstore.init_store(str(root / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(store, str(root / "m.csv"), fmt="csv")
    report = extract_frames(store, workers=0)
    return store, report, source_times, str(root)


def _decoded_times(path: str) -> np.ndarray:
    """Independent decode: every frame's presentation time from the stream start."""
    with av.open(path) as c:
        s = c.streams.video[0]
        start = float(s.start_time * s.time_base)
        return np.array([float(f.pts * f.time_base) - start for f in c.decode(s)])


def test_counts_times_and_failures(video_store):
    store, report, source_times, root = video_store
    assert report.done == len(CASES) and report.failed == 2
    assert {f["clip_id"] for f in report.failures} == {"truncated", "not-a-video"}
    assert set(store.failures.clip_id) == {"truncated", "not-a-video"}
    assert store.array("frames/rgb").shape == (7, 6, 224, 224, 3)
    for name, (w, h, fps, dur, kind) in CASES.items():
        frames, times = store.frames(name)
        assert frames.shape == (6, 224, 224, 3) and frames.dtype == np.uint8
        decoded = _decoded_times(os.path.join(root, f"{name}.mp4"))
        for k, t in enumerate(times):
            target = k / 2.0
            nearest = decoded[np.argmin(np.abs(decoded - target))]
            assert t == pytest.approx(nearest, abs=1e-6), f"{name}: frame {k} is not the nearest to {target}"
            if kind is None and target < dur:
                assert abs(t - target) <= 0.5 / fps + 1e-6
            # the content says which source frame was kept
            index = frame_index(frames[k])
            assert source_times[name][index] == pytest.approx(t, abs=2e-3)
    notes = store.ledger("frames/rgb").info_table()
    assert notes.loc["cfr25-1280x720", "source_width"] == 1280 and notes.loc["cfr25-1280x720", "source_fps"] == 25
    assert notes.loc["short-2s", "padded_frames"] == 2
    frames, times = store.frames("short-2s")
    np.testing.assert_array_equal(frames[4], frames[5])


def test_pixels_match_independent_decode_and_resize(video_store):
    store, _, _, root = video_store
    for name in ("cfr30-320x240", "cfr25-1280x720", "cfr25-odd-322x178"):
        frames, times = store.frames(name)
        with av.open(os.path.join(root, f"{name}.mp4")) as c:
            s = c.streams.video[0]
            start = float(s.start_time * s.time_base)
            ref = {round(float(f.pts * f.time_base) - start, 6): f.to_ndarray(format="rgb24") for f in c.decode(s)}
        for k in (0, 3, 5):
            full = ref[round(float(times[k]), 6)].astype(np.float64)
            # independent resize: bilinear interpolation in numpy
            h, w = full.shape[:2]
            ys, xs = (np.arange(224) + 0.5) * h / 224 - 0.5, (np.arange(224) + 0.5) * w / 224 - 0.5
            rows = np.array([np.interp(xs, np.arange(w), full[int(round(np.clip(y, 0, h - 1))), :, 0]) for y in ys])
            smooth = slice(112, 224)  # below the index bars: a smooth ramp where resamplers agree
            assert np.abs(frames[k][smooth, :, 0].astype(np.float64) - rows[smooth]).mean() < 2.0, name


def test_crop_mode_and_segments(video_store):
    store, _, _, _ = video_store
    report = extract_frames(store, workers=0, resize="crop", size=64, name="frames_crop", clips=["cfr25-1280x720", "cfr30-320x240"])
    assert report.done == 2
    frames, _ = store.frames("cfr25-1280x720", group="frames_crop")
    assert frames.shape == (6, 64, 64, 3)
    # the ramp spans the full width; a centre crop of 16:9 keeps only its middle, so less spread
    squashed, _ = store.frames("cfr25-1280x720")
    spread = lambda img: float(img[..., 0].mean(axis=0).max() - img[..., 0].mean(axis=0).min())  # noqa: E731
    assert spread(frames[0][40:]) < 0.75 * spread(squashed[0][140:])
    (batch,) = list(store.frame_segments(split="train", group="frames", batch_size=100))
    # failed clips (truncated, not-a-video) hold no frames: the segment reader skips them
    assert batch.x.shape == (len(CASES) * 3, 2, 224, 224, 3)
    assert set(batch.segment) == {0, 1, 2}
    with pytest.raises(ValueError, match="not written"):
        store.frames("truncated")


def test_segment_alignment_with_audio_grid(video_store):
    """Frames of segment s lie in [start_s, end_s) of the grid (within half a source frame)."""
    store, _, _, _ = video_store
    (batch,) = list(store.frame_segments())
    grid = store.segments.set_index(["clip_index", "segment"])
    for x, clip_index, segment in zip(batch.x, batch.clip_index, batch.segment):
        clip_id = store.clips.clip_id[clip_index]
        frames, times = store.frames(clip_id)
        np.testing.assert_array_equal(x, frames[2 * segment : 2 * segment + 2])
        w, h, fps, dur, kind = CASES[clip_id]
        if kind is None and segment < dur:
            start, end = grid.loc[(clip_index, segment), ["start_s", "end_s"]]
            seg_times = times[2 * segment : 2 * segment + 2]
            assert np.all((seg_times >= start - 0.5 / fps) & (seg_times < end)), clip_id


def test_rotated_phone_video_comes_out_upright(tmp_path):
    """A display matrix of -90 degrees (a phone held upright) is applied as FFmpeg's autorotate does:
    90 degrees clockwise, so the source's left half ends up on top."""
    import struct

    path = str(tmp_path / "phone.mp4")

    def left_white(i):
        img = np.zeros((32, 64, 3), np.uint8)
        img[:, :32] = 255
        return img

    write_video(path, left_white, n_frames=10, fps=10)
    data = bytearray(open(path, "rb").read())
    identity = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    assert at > 0
    data[at : at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    open(path, "wb").write(bytes(data))
    (tmp_path / "m.csv").write_text("audio,video,label,split\n,phone.mp4,bus,train\n")
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=1.0)
    ingest(store, str(tmp_path / "m.csv"), fmt="csv")
    assert extract_frames(store, workers=0, size=32).done == 1
    frames, _ = store.frames("phone")
    assert frames[0, :12].mean() > 200 and frames[0, 20:].mean() < 50, "left half must end up on top"
    assert store.ledger("frames/rgb").info_table().loc["phone", "rotation"] == -90
