"""Windows of one long file, as `predict --file` reads them: frames from a seek to the keyframe
before the window, audio from an offset of a seekable copy of the track. A window in the middle
equals the same seconds of a whole decode (files generated with numpy and encoded with PyAV)."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile

from featstore.errors import MediaError
from featstore.media import load_audio, seekable_audio
from featstore.video import _timed_frames, decode_frames

KEYFRAME_EVERY = 15  # frames: a keyframe each 0.5 s at 30 fps


def _video(path: str, seconds: float, fps: int = 30, audio_sr: int | None = None) -> str:
    """A 64x36 H.264 mp4 of moving noise with a keyframe every KEYFRAME_EVERY frames and, with
    ``audio_sr``, an AAC stereo track of noise and a tone (which AAC codes partly as substituted noise)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (36, 64 + 300, 3), dtype=np.uint8)
    with av.open(path, "w") as container:  # every stream added before the first packet is muxed
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = 64, 36, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "18", "g": str(KEYFRAME_EVERY), "keyint_min": str(KEYFRAME_EVERY)}
        if audio_sr:
            audio = container.add_stream("aac", rate=audio_sr)
            audio.layout = "stereo"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i % 300 : i % 300 + 64]), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio_sr:
            t = np.arange(int(seconds * audio_sr)) / audio_sr
            x = (0.1 * rng.standard_normal((2, len(t))) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for i in range(0, x.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i : i + 1024]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = audio_sr, i
                container.mux(audio.encode(frame))
            container.mux(audio.encode())
    return path


def test_a_video_window_in_the_middle_equals_those_frames_of_a_whole_decode(tmp_path):
    path = _video(str(tmp_path / "long.mp4"), 30.0)
    whole = decode_frames(path, fps=10, duration_s=30.0, size=16)
    window = decode_frames(path, fps=10, duration_s=4.0, size=16, start_s=17.5)
    np.testing.assert_array_equal(window.rgb, whole.rgb[175:215])
    np.testing.assert_array_equal(window.times_s, whole.times_s[175:215])
    assert not np.array_equal(window.rgb[0], whole.rgb[0])  # a window of other frames than the first
    with av.open(path) as container:  # the window's decode starts at the keyframe before it, not at 0
        first_t, _ = next(_timed_frames(container, container.streams.video[0], 17.4))
    assert 17.4 - KEYFRAME_EVERY / 30 <= first_t <= 17.4


def test_an_aac_track_is_read_in_windows_as_a_whole_decode_gives_it(tmp_path):
    """seekable_audio decodes an mp4's AAC track once to a WAV holding exactly its samples; a
    window read from it by offset equals those samples of a whole decode of the mp4."""
    path = _video(str(tmp_path / "av.mp4"), 12.0, audio_sr=48_000)
    whole, sr = load_audio(path)
    copy = seekable_audio(path, str(tmp_path))
    assert copy != path and os.path.getsize(copy) >= whole.size * 4
    window, window_sr = load_audio(copy, start_s=7.25, max_duration_s=2.0)
    assert window_sr == sr == 48_000
    start = int(7.25 * sr)
    np.testing.assert_array_equal(window, whole[start : start + 2 * sr])
    np.testing.assert_array_equal(soundfile.read(copy, dtype="float32", always_2d=True)[0], whole)
    wav = str(tmp_path / "plain.wav")
    soundfile.write(wav, whole[:sr], sr, subtype="FLOAT")
    assert seekable_audio(wav, str(tmp_path)) == wav  # soundfile seeks in it: read in place


def test_a_file_without_audio_is_one_named_error(tmp_path):
    path = _video(str(tmp_path / "silent.mp4"), 1.0)
    with pytest.raises(MediaError, match="silent.mp4: no audio stream"):
        seekable_audio(path, str(tmp_path))
