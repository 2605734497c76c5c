"""`featstore extract-frames`: video frames at ``fps`` per second, ``size`` x ``size`` RGB, on the stage runner.

Writes ``{name}/rgb`` (clip, frame, size, size, 3) uint8 and ``{name}/time_s`` (clip, frame) float32,
the presentation time of each kept frame, one chunk per clip (see :mod:`featstore.video` for the
frame-selection and resize rules). The clip's source resolution, frame rate, rotation and padding
are recorded in the ledger notes (``store.ledger("frames/rgb").info_table()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from featstore.coords import Coordinate
from featstore.errors import ConfigError, MediaError
from featstore.pipelines.config import StageConfig, option
from featstore.pipelines.stage import ClipResult, ClipTask, OutputSpec, Stage, StageReport
from featstore.pipelines.runner import run_stage
from featstore.store import Store
from featstore.video import RESIZE_MODES, decode_frames

#: Clips per dask task: a clip's write overlaps the next one's compute (featstore.pipelines.worker.iter_clips).
CLIPS_PER_TASK = 4


def compute_frames(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side: decode one clip's video into its kept frames and their times."""
    path = task.source("video_path")
    if not path:
        raise MediaError(f"clip {task.clip_id} has no video file")
    decoded = decode_frames(path, fps=params["fps"], duration_s=params["clip_duration_s"], size=params["size"], resize=params["resize"], start_s=params.get("source_start_s", 0.0))
    return ClipResult({"rgb": decoded.rgb, "time_s": decoded.times_s}, decoded.notes)


@dataclass(frozen=True)
class FramesConfig(StageConfig):
    """Options of extract-frames, with their only defaults (the papers': 2 frames per second,
    224 x 224). Writes ``{name}/rgb`` and ``{name}/time_s``."""

    stage: ClassVar[str] = "extract-frames"

    fps: float = option(2.0, "Frames kept per second of video.", above=0)
    size: int = option(224, "Output frames are SIZE x SIZE RGB.", min=1)
    resize: str = option("squash", "squash: scale the whole frame (the papers); crop: centre-crop to square first.", choices=RESIZE_MODES)
    name: str = option("frames", "Array group: writes NAME/rgb and NAME/time_s.")

    def build(self, store: Store) -> Stage:
        n_frames = int(round(self.fps * store.clip_duration_s))
        frames_per_segment = self.fps * store.segment_s
        if n_frames < 1 or abs(frames_per_segment - round(frames_per_segment)) > 1e-9:
            raise ConfigError(f"--fps {self.fps} must give a whole number of frames per {store.segment_s} s segment")
        params = {
            "fps": self.fps,
            "size": self.size,
            "resize": self.resize,
            "clip_duration_s": store.clip_duration_s,
            "segment_s": store.segment_s,
            "frames_per_segment": int(round(frames_per_segment)),
        }
        config = self.to_dict()
        frame = {"frame": frame_coordinate(self.fps, n_frames)}
        outputs = (
            OutputSpec("rgb", f"{self.name}/rgb", (n_frames, self.size, self.size, 3), "uint8", ("frame", "height", "width", "channel"), config=config, coords=frame),
            OutputSpec("time_s", f"{self.name}/time_s", (n_frames,), "float32", ("frame",), config=config, coords=frame),
        )
        return Stage(self.stage, params, outputs, compute_frames, input_fingerprint=_video_fingerprint, modality="visual", clips_per_task=CLIPS_PER_TASK, code_version=self.code_version)


def frame_coordinate(fps: float, n_frames: int) -> Coordinate:
    """The ``frame`` axis: each kept frame's target time within the clip, ``k / fps`` seconds
    (``time_s`` holds the presentation time of the frame kept for it)."""
    return Coordinate(np.arange(n_frames) / fps, "s", "frame target time within the clip")


def _video_fingerprint(row: dict[str, Any]) -> str:
    return row["video_fingerprint"]


def extract_frames(
    store: Store,
    config: FramesConfig | None = None,
    *,
    clips: str | list[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **config_fields: Any,
) -> StageReport:
    """Run extract-frames over ``store`` with ``config`` (or a :class:`FramesConfig` of ``config_fields``)."""
    stage = (config or FramesConfig(**config_fields)).build(store)
    return run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress)
