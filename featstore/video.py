"""Video frames at exact times: decode with PyAV, keep the frame nearest to each target time.

Rule: for a clip of ``duration_s`` at ``fps`` frames per second, the targets are ``k / fps`` seconds
for ``k = 0 .. round(fps * duration_s) - 1`` (20 frames for 10 s at 2 fps), measured from the video
stream's start time. Each target keeps the decoded frame whose presentation time is nearest (ties go
to the earlier frame), so variable-frame-rate videos are handled by their timestamps, not by frame
counting. Decoding stops as soon as every target is settled (a 2-hour file given as a 10 s clip is
not decoded whole). A video shorter than the clip repeats its last frame for the missing targets,
and the clip's notes record how many.

Resize: ``squash`` (the papers' choice) scales the whole frame to ``size x size``; ``crop`` keeps the
aspect ratio by centre-cropping to a square first. Scaling uses FFmpeg's swscale with the ``AREA``
filter, which averages source pixels when shrinking (antialiased). A rotation in the stream's
display matrix (phone videos) is applied, so frames come out upright.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import numpy as np

from featstore.errors import ConfigError
from featstore.media import MediaError

RESIZE_MODES = ("squash", "crop")


@dataclass
class DecodedFrames:
    """Frames kept for the targets: ``rgb`` (frame, size, size, 3) uint8, ``times_s`` (frame,) float32
    presentation times, and notes (source resolution, frame rate, rotation, padding)."""

    rgb: np.ndarray
    times_s: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)


class FrameConverter:
    """Decoded frames -> (size, size, 3) uint8 RGB, upright, for one video.

    Holds its swscale contexts for the whole video: PyAV's ``frame.reformat`` builds a fresh
    context (filter tables, a thread pool) for every frame, which costs 2-3 ms per 1280x720 frame,
    three times the scaling itself. Scaling runs on one thread (``threads=1``): parallelism comes
    from the decoder's threads and from running clips side by side.
    """

    def __init__(self, size: int, resize: str):
        from av.video.reformatter import VideoReformatter

        self.size, self.resize = size, resize
        self._scale = VideoReformatter()
        self._to_full_rgb = VideoReformatter()  # crop mode: full-resolution RGB before the crop

    def __call__(self, frame, rotation: int) -> np.ndarray:
        import av

        if self.resize == "crop":
            w, h = frame.width, frame.height
            side = min(w, h)
            full = self._to_full_rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
            top, left = (h - side) // 2, (w - side) // 2
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(full[top : top + side, left : left + side]), format="rgb24")
        scaled = self._scale.reformat(frame, width=self.size, height=self.size, format="rgb24", interpolation="AREA", threads=1)
        rgb = scaled.to_ndarray()
        if rotation:
            rgb = np.rot90(rgb, k=int(round(rotation / 90)) % 4)  # counter-clockwise, as the matrix says
        return np.ascontiguousarray(rgb)


def decode_frames(path: str, *, fps: float, duration_s: float, size: int, resize: str = "squash", start_s: float = 0.0) -> DecodedFrames:
    """Decode the frames of ``path`` nearest to ``start_s + k / fps`` seconds; see the module docstring.

    ``start_s`` (seconds from the stream's start, a whole number of frame periods) gives a window of
    a longer video the same frames as the whole video's targets at those times. Decoding starts at
    the keyframe before the first target (a seek, see :func:`_timed_frames`), so a window costs its
    own span plus at most a keyframe interval, wherever it lies in the file.

    Raises :class:`MediaError` for a file without a video stream, one that cannot be decoded, or
    one with no frame at all.
    """
    import av

    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    targets = (int(round(start_s * fps)) + np.arange(int(round(fps * duration_s)))) / fps  # the whole video's own targets
    to_rgb = FrameConverter(size, resize)
    kept: list[np.ndarray] = []
    kept_times: list[float] = []
    notes: dict[str, Any] = {}
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            notes.update(
                source_width=stream.codec_context.width,
                source_height=stream.codec_context.height,
                source_fps=float(stream.average_rate) if stream.average_rate else math.nan,
            )
            previous = None  # (time, frame) of the last decoded frame
            rotation = 0
            # from one target period before the first: the frame before it is decoded too
            for t, frame in _timed_frames(container, stream, targets[0] - 1 / fps if len(targets) else 0.0):
                while len(kept) < len(targets) and t >= targets[len(kept)]:
                    target = targets[len(kept)]
                    use_previous = previous is not None and abs(previous[0] - target) <= abs(t - target)
                    chosen_t, chosen = previous if use_previous else (t, frame)
                    rotation = chosen.rotation or 0
                    kept.append(to_rgb(chosen, rotation))
                    kept_times.append(chosen_t)
                if len(kept) == len(targets):
                    break
                previous = (t, frame)
            if previous is not None and len(kept) < len(targets):
                notes["padded_frames"] = len(targets) - len(kept)
                rotation = previous[1].rotation or 0
                last = to_rgb(previous[1], rotation)
                while len(kept) < len(targets):
                    kept.append(last)
                    kept_times.append(previous[0])
            notes["rotation"] = rotation
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode video: {exc}") from None
    if not kept:
        raise MediaError("video has no decodable frame")
    return DecodedFrames(np.stack(kept), np.asarray(kept_times, dtype=np.float32), notes)


def _timed_frames(container, stream, from_s: float) -> Iterator[tuple[float, Any]]:
    """``(time, frame)`` of the decoded frames of ``stream``, time in seconds from the stream's
    start, from the keyframe at or before ``from_s`` seconds on (every frame from the first when
    ``from_s <= 0``).

    A later start seeks there (``container.seek`` to the keyframe before it, which flushes the
    decoder). A container that cannot seek exactly (its first frame after the seek lies past
    ``from_s``, or none comes), or a stream without a start time, is decoded from its first frame
    instead: every frame at or after ``from_s`` is always yielded.
    """
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
    if from_s > 0 and start is not None:
        container.seek(math.floor((start + from_s) / stream.time_base), stream=stream, backward=True)
        landed = None
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            if landed is None:
                landed = frame.time - start
                if landed > from_s + 1e-6:
                    break
            yield frame.time - start, frame
        else:
            if landed is not None:
                return
        container.seek(stream.start_time, stream=stream, backward=True)
    for frame in container.decode(stream):
        if frame.time is None:  # a float computed in C (Fraction arithmetic costs ~4 ms a clip)
            continue
        if start is None:
            start = frame.time
        yield frame.time - start, frame
