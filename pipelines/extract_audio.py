"""`featstore extract-audio`: MEL / GAM / CQT log spectrograms of every clip, on the stage runner.

Writes ``{name}/{feature}`` (default ``audio/mel``, ``audio/gam``, ``audio/cqt``), each
(clip, channel=2, bin, frame), frame = segments per clip x frames per segment (see
:mod:`featstore.audio` for the framing rule). With ``store_deltas`` the arrays hold 6 channels
(static, delta, delta-delta); otherwise deltas are derived at read time.

>>> from featstore.pipelines.extract_audio import extract_audio            # doctest: +SKIP
>>> report = extract_audio(store, features=("mel",), workers=2)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from featstore.audio import FEATURES, AudioParams, add_deltas, prepare_waveform, spectrograms
from featstore.media import load_audio
from featstore.store import Store
from featstore.pipelines.runner import ClipResult, ClipTask, OutputSpec, Stage, StageReport, run_stage

#: Clips per dask task: a clip's write overlaps the next one's compute (featstore.pipelines.runner.iter_clips).
CLIPS_PER_TASK = 4
STAGE = "extract-audio"
#: Decoding stops this far past the clip's nominal length (a 2-hour file is never read whole).
READ_MARGIN_S = 1.0


def compute_audio(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side: decode, resample, frame and transform one clip into the requested features."""
    path = task.source("audio_path")
    if not path:
        raise ValueError(f"clip {task.clip_id} has no audio file")
    p = AudioParams(**params["audio"])
    samples, sr = load_audio(path, max_duration_s=p.n_segments * p.segment_s + READ_MARGIN_S)
    windows, notes = prepare_waveform(samples, sr, p)
    specs = spectrograms(windows, p, names)
    if params["store_deltas"]:
        specs = {k: add_deltas(v, p.frames_per_segment, p.delta_width) for k, v in specs.items()}
    dtype = params["dtype"]
    return ClipResult({k: v.astype(dtype) for k, v in specs.items()}, notes)


def audio_stage(
    store: Store,
    *,
    features: tuple[str, ...] = FEATURES,
    sr: int = 32_000,
    n_bins: int = 128,
    win_ms: float = 80.0,
    hop_ms: float = 14.0,
    dtype: str = "float16",
    store_deltas: bool = False,
    name: str = "audio",
) -> Stage:
    """The extract-audio :class:`Stage` for ``store`` (arrays ``{name}/{feature}``)."""
    unknown = set(features) - set(FEATURES)
    if unknown or not features:
        raise ValueError(f"--features must be a subset of {', '.join(FEATURES)}, got {', '.join(features)}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"--dtype must be float16 or float32, got {dtype}")
    p = AudioParams(sr=sr, n_bins=n_bins, win_ms=win_ms, hop_ms=hop_ms, segment_s=store.segment_s, n_segments=store.n_segments)
    channels = 3 * p.channels if store_deltas else p.channels
    outputs = tuple(
        OutputSpec(
            name=f,
            path=f"{name}/{f}",
            per_clip_shape=(channels, p.n_bins, p.n_frames),
            dtype=dtype,
            dims=("channel", "bin", "frame"),
            params={"feature": f},
        )
        for f in features
    )
    params = {"audio": p.to_dict(), "dtype": dtype, "store_deltas": store_deltas, "frames_per_segment": p.frames_per_segment}
    return Stage(STAGE, params, outputs, compute_audio, input_fingerprint=lambda row: row["audio_fingerprint"], clips_per_task=CLIPS_PER_TASK)


def extract_audio(
    store: Store,
    *,
    clips: str | list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **stage_options: Any,
) -> StageReport:
    """Run extract-audio over ``store``; ``stage_options`` are :func:`audio_stage`'s keywords."""
    stage = audio_stage(store, **stage_options)
    return run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress)


def stage_for_array(store: Store, path: str) -> Stage:
    """The stage that made array ``path``, rebuilt from its provenance (used by ``verify --repair``)."""
    p = store.provenance(path)["params"]
    a = p["audio"]
    return audio_stage(
        store, features=(p["feature"],), sr=a["sr"], n_bins=a["n_bins"], win_ms=a["win_ms"], hop_ms=a["hop_ms"],
        dtype=p["dtype"], store_deltas=p["store_deltas"], name=path.rsplit("/", 1)[0],
    )
