"""`featstore extract-audio`: MEL / GAM / CQT log spectrograms of every clip, on the stage runner.

Writes ``{name}/{feature}`` (default ``audio/mel``, ``audio/gam``, ``audio/cqt``), each
(clip, channel=2, bin, frame), frame = segments per clip x frames per segment (see
:mod:`featstore.audio` for the framing rule). With ``store_deltas`` the arrays hold 6 channels
(static, delta, delta-delta); otherwise deltas are derived at read time.

>>> from featstore.pipelines.extract_audio import AudioConfig, extract_audio   # doctest: +SKIP
>>> report = extract_audio(store, AudioConfig(features=("mel",)), workers=2)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from featstore.audio import FEATURES, AudioParams, add_deltas, prepare_waveform, spectrograms
from featstore.errors import ConfigError, MediaError
from featstore.media import load_audio
from featstore.pipelines.config import StageConfig, option
from featstore.pipelines.runner import ClipResult, ClipTask, OutputSpec, Stage, StageReport, run_stage
from featstore.provenance import Provenance
from featstore.store import Store

#: Clips per dask task: a clip's write overlaps the next one's compute (featstore.pipelines.runner.iter_clips).
CLIPS_PER_TASK = 4
#: Decoding stops this far past the clip's nominal length (a 2-hour file is never read whole).
READ_MARGIN_S = 1.0


def compute_audio(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side: decode, resample, frame and transform one clip into the requested features."""
    path = task.source("audio_path")
    if not path:
        raise MediaError(f"clip {task.clip_id} has no audio file")
    p = AudioParams(**params["audio"])
    windows, notes = read_segments(path, p, params.get("source_start_s", 0.0))
    specs = spectrograms(windows, p, names)
    if params["store_deltas"]:
        specs = {k: add_deltas(v, p.frames_per_segment, p.delta_width) for k, v in specs.items()}
    dtype = params["dtype"]
    return ClipResult({k: v.astype(dtype) for k, v in specs.items()}, notes)


def read_segments(path: str, p: AudioParams, start_s: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``p.n_segments`` segment windows (channel, segment, sample) of ``path`` from ``start_s``
    seconds (a whole number of segments) on, as :func:`featstore.audio.prepare_waveform` makes them.

    From a later start, up to :data:`READ_MARGIN_S` of whole segments before it are decoded and
    resampled too, then dropped: the resampler sees the same neighbourhood as when the file is read
    from its start, so a window of a long file has the same samples as the whole file's segments.
    """
    lead = min(math.ceil(READ_MARGIN_S / p.segment_s - 1e-9), int(start_s / p.segment_s + 1e-9))
    samples, sr = load_audio(path, max_duration_s=(p.n_segments + lead) * p.segment_s + READ_MARGIN_S, start_s=start_s - lead * p.segment_s)
    windows, notes = prepare_waveform(samples, sr, replace(p, n_segments=p.n_segments + lead))
    return np.ascontiguousarray(windows[:, lead:]), notes


@dataclass(frozen=True)
class AudioConfig(StageConfig):
    """Options of extract-audio, with their only defaults (the papers': 32 kHz, 128 bins, 80 ms
    window, 14 ms hop). Writes ``{name}/{feature}`` for each of ``features``."""

    stage: ClassVar[str] = "extract-audio"

    features: tuple[str, ...] = option(FEATURES, "Features to compute (comma-separated).", choices=FEATURES)
    sr: int = option(32_000, "Sample rate after resampling (Hz).", min=1000)
    n_bins: int = option(128, "Frequency bins of each feature.", min=1)
    win_ms: float = option(80.0, "STFT window (ms).", above=0)
    hop_ms: float = option(14.0, "Hop (ms).", above=0)
    dtype: str = option("float16", "Stored dtype.", choices=("float16", "float32"))
    store_deltas: bool = option(False, "Store 6 channels (static, delta, delta-delta) instead of deriving deltas at read time.")
    name: str = option("audio", "Array group: writes NAME/mel, NAME/gam, NAME/cqt.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.features:
            raise ConfigError(f"--features must name at least one of {', '.join(FEATURES)}")

    def audio_params(self, store: Store) -> AudioParams:
        """The front end's parameters on ``store``'s segment grid."""
        return AudioParams(sr=self.sr, n_bins=self.n_bins, win_ms=self.win_ms, hop_ms=self.hop_ms, segment_s=store.segment_s, n_segments=store.n_segments)

    def for_output(self, leaf: str) -> AudioConfig:
        return replace(self, features=(leaf,))

    def build(self, store: Store) -> Stage:
        p = self.audio_params(store)
        channels = 3 * p.channels if self.store_deltas else p.channels
        outputs = tuple(
            OutputSpec(
                name=f,
                path=f"{self.name}/{f}",
                per_clip_shape=(channels, p.n_bins, p.n_frames),
                dtype=self.dtype,
                dims=("channel", "bin", "frame"),
                params={"feature": f},
                config=self.for_output(f).to_dict(),
            )
            for f in self.features
        )
        params = {"audio": p.to_dict(), "dtype": self.dtype, "store_deltas": self.store_deltas, "frames_per_segment": p.frames_per_segment}
        return Stage(self.stage, params, outputs, compute_audio, input_fingerprint=_audio_fingerprint, modality="audio", clips_per_task=CLIPS_PER_TASK, code_version=self.code_version)

    @classmethod
    def from_legacy(cls, prov: Provenance) -> AudioConfig:
        p, a = prov.params, prov.params["audio"]
        return cls(features=(p["feature"],), sr=a["sr"], n_bins=a["n_bins"], win_ms=a["win_ms"], hop_ms=a["hop_ms"], dtype=p["dtype"], store_deltas=p["store_deltas"], name=prov.group)


def _audio_fingerprint(row: dict[str, Any]) -> str:
    return row["audio_fingerprint"]


def extract_audio(
    store: Store,
    config: AudioConfig | None = None,
    *,
    clips: str | list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **config_fields: Any,
) -> StageReport:
    """Run extract-audio over ``store`` with ``config`` (or an :class:`AudioConfig` of ``config_fields``)."""
    stage = (config or AudioConfig(**config_fields)).build(store)
    return run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress)
