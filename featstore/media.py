"""Decoding media files: durations, audio samples.

Audio is read with soundfile (libsndfile: wav, flac, ogg...) and, for what it cannot read (mp4/aac,
mp3 on old libsndfile...), with PyAV, which ships its own FFmpeg.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

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
    limit, skip = None, None  # set from the sample rate, known once the file is open
    parts, total, sr = [], 0, 0
    for block, sr in _av_audio_blocks(path):
        if skip is None:
            limit = None if max_duration_s is None else int(math.ceil(max_duration_s * sr))
            skip = int(round(start_s * sr))  # decoded and dropped: exact (compressed audio seeks to packets, and AAC's noise substitution differs after a seek)
        dropped = min(skip, len(block))
        skip -= dropped
        parts.append(block[dropped:])
        total += len(block) - dropped
        if limit is not None and total >= limit:
            break
    if not parts:
        raise MediaError("audio has no samples")
    samples = np.concatenate(parts).astype(np.float32, copy=False)
    return (samples if limit is None else samples[:limit]), sr


def _av_audio_blocks(path: str) -> Iterator[tuple[np.ndarray, int]]:
    """The first audio stream of ``path`` decoded with PyAV, from its start: ``(samples, sr)``
    blocks of float32 (frames, channels), as they come out of the decoder."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError("no audio stream")
            stream = container.streams.audio[0]
            sr = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=sr)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1, len(stream.layout.channels)), sr
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode audio: {exc}") from None


def seekable_audio(path: str, work_dir: str) -> str:
    """``path`` itself when soundfile reads it (it seeks to any sample), else its audio stream
    decoded once, in blocks, to a float32 WAV in ``work_dir`` (the same samples as
    :func:`load_audio` gives, so reading a window of it equals that window of a whole decode).

    For reading many windows of a long compressed track (an mp4's AAC): seeking in it is not
    exact (decoding restarts at a packet, and AAC's noise substitution draws other noise after a
    seek), while decoding it from its start for every window costs quadratic time. The WAV takes
    4 bytes per sample and channel (230 MB for 10 minutes of 48 kHz stereo). Raises
    :class:`MediaError` naming ``path`` when it has no decodable audio.
    """
    import os

    import soundfile

    try:
        soundfile.info(path)
        return path
    except soundfile.LibsndfileError:
        pass
    out = os.path.join(work_dir, os.path.splitext(os.path.basename(path))[0] + ".wav")
    wav = None
    try:
        for block, sr in _av_audio_blocks(path):
            if wav is None:
                wav = soundfile.SoundFile(out, "w", samplerate=sr, channels=block.shape[1], subtype="FLOAT", format="RF64")
            wav.write(block)
    except MediaError as exc:
        raise MediaError(f"{path}: {exc}") from None
    finally:
        if wav is not None:
            wav.close()
    if wav is None:
        raise MediaError(f"{path}: audio has no samples")
    return out
