"""`featstore extract-frames`: video frames at ``fps`` per second, ``size`` x ``size`` RGB, on the stage runner.

Writes ``{name}/rgb`` (clip, frame, size, size, 3) uint8 and ``{name}/time_s`` (clip, frame) float32,
the presentation time of each kept frame, one chunk per clip (see :mod:`featstore.video` for the
frame-selection and resize rules). The clip's source resolution, frame rate, rotation and padding
are recorded in the ledger notes (``store.ledger("frames/rgb").info_table()``).
"""

from __future__ import annotations

from typing import Any

from featstore.store import Store
from featstore.video import RESIZE_MODES, decode_frames
from featstore.pipelines.runner import ClipResult, ClipTask, OutputSpec, Stage, StageReport, run_stage

#: Clips per dask task: a clip's write overlaps the next one's compute (featstore.pipelines.runner.iter_clips).
CLIPS_PER_TASK = 4
STAGE = "extract-frames"


def compute_frames(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side: decode one clip's video into its kept frames and their times."""
    path = task.source("video_path")
    if not path:
        raise ValueError(f"clip {task.clip_id} has no video file")
    decoded = decode_frames(path, fps=params["fps"], duration_s=params["clip_duration_s"], size=params["size"], resize=params["resize"])
    return ClipResult({"rgb": decoded.rgb, "time_s": decoded.times_s}, decoded.notes)


def frames_stage(store: Store, *, fps: float = 2.0, size: int = 224, resize: str = "squash", name: str = "frames") -> Stage:
    """The extract-frames :class:`Stage` for ``store`` (arrays ``{name}/rgb`` and ``{name}/time_s``)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize}")
    n_frames = int(round(fps * store.clip_duration_s))
    frames_per_segment = fps * store.segment_s
    if n_frames < 1 or abs(frames_per_segment - round(frames_per_segment)) > 1e-9:
        raise ValueError(f"--fps {fps} must give a whole number of frames per {store.segment_s} s segment")
    params = {
        "fps": fps,
        "size": size,
        "resize": resize,
        "clip_duration_s": store.clip_duration_s,
        "segment_s": store.segment_s,
        "frames_per_segment": int(round(frames_per_segment)),
    }
    outputs = (
        OutputSpec("rgb", f"{name}/rgb", (n_frames, size, size, 3), "uint8", ("frame", "height", "width", "rgb")),
        OutputSpec("time_s", f"{name}/time_s", (n_frames,), "float32", ("frame",)),
    )
    return Stage(STAGE, params, outputs, compute_frames, input_fingerprint=lambda row: row["video_fingerprint"], clips_per_task=CLIPS_PER_TASK)


def extract_frames(
    store: Store,
    *,
    clips: str | list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **stage_options: Any,
) -> StageReport:
    """Run extract-frames over ``store``; ``stage_options`` are :func:`frames_stage`'s keywords."""
    stage = frames_stage(store, **stage_options)
    return run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress)


def stage_for_array(store: Store, path: str) -> Stage:
    """The stage that made array ``path``, rebuilt from its provenance (used by ``verify --repair``)."""
    p = store.provenance(path)["params"]
    return frames_stage(store, fps=p["fps"], size=p["size"], resize=p["resize"], name=path.rsplit("/", 1)[0])
