"""Decoding media files: durations, audio samples.

Audio is read with soundfile (libsndfile: wav, flac, ogg...) and, for what it cannot read (mp4/aac,
mp3 on old libsndfile...), with PyAV, which ships its own FFmpeg.
"""

from __future__ import annotations

import math

import numpy as np

from featstore.errors import MediaError


def probe_duration_s(path: str) -> float:
    """Duration of an audio or video file in seconds (NaN when it cannot be read)."""
    import soundfile

    try:
        info = soundfile.info(path)
        return float(info.frames) / float(info.samplerate)
    except Exception:
        pass
    try:
        import av

        with av.open(path) as container:
            if container.duration is not None:
                return float(container.duration) / 1_000_000.0
            stream = (container.streams.video or container.streams.audio)[0]
            return float(stream.duration * stream.time_base)
    except Exception:
        return math.nan


def load_audio(path: str, *, max_duration_s: float | None = None, start_s: float = 0.0) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 samples (frames, channels) in [-1, 1] and its sample rate.

    ``start_s`` (seconds) skips that many seconds of the file first (the sample at ``round(start_s *
    sr)`` comes first); ``max_duration_s`` stops decoding after that many seconds (a 2-hour file
    given as a 10 s clip is not read whole). Raises :class:`MediaError` for an empty or undecodable file.
    """
    import soundfile

    try:
        with soundfile.SoundFile(path) as f:
            sr = f.samplerate
            skip = min(f.frames, int(round(start_s * sr)))
            f.seek(skip)
            n = f.frames - skip if max_duration_s is None else min(f.frames - skip, int(math.ceil(max_duration_s * sr)))
            samples = f.read(n, dtype="float32", always_2d=True)
    except soundfile.LibsndfileError:
        samples, sr = _load_audio_av(path, max_duration_s, start_s)
    if samples.size == 0:
        raise MediaError("audio has no samples")
    return samples, sr


def _load_audio_av(path: str, max_duration_s: float | None, start_s: float = 0.0) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError("no audio stream")
            stream = container.streams.audio[0]
            sr = stream.codec_context.sample_rate
            limit = None if max_duration_s is None else int(math.ceil(max_duration_s * sr))
            skip = int(round(start_s * sr))  # decoded and dropped (exact; compressed audio seeks to packets)
            resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=sr)
            parts, total = [], 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(-1, len(stream.layout.channels))
                    dropped = min(skip, len(block))
                    skip -= dropped
                    block = block[dropped:]
                    parts.append(block)
                    total += len(block)
                if limit is not None and total >= limit:
                    break
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode audio: {exc}") from None
    if not parts:
        raise MediaError("audio has no samples")
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    return (samples if limit is None else samples[:limit]), sr
