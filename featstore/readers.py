"""Reading features back: whole clips, or windows aligned to the segment grid.

Each read takes a clip's whole chunk (one object per clip, :class:`featstore.chunks.ClipReader`), so a reader never costs more than one
store request per clip. A clip not yet written reads as NaN (the arrays' fill value); the readers
refuse it rather than hand NaN to a model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from featstore.chunks import ClipReader
from featstore.errors import ConfigError
from featstore.packed import packed_segment_embeddings
from featstore.store import Store


@dataclass
class SegmentBatch:
    """Windows of the segment grid: ``x`` (window, ...) float32, ``labels`` (window,) class index
    (-1 when unlabelled), ``clip_index`` (window,) and ``segment`` (window,): the first grid
    segment of each window."""

    x: np.ndarray
    labels: np.ndarray
    clip_index: np.ndarray
    segment: np.ndarray


def _frames_per_segment(store: Store, path: str) -> int:
    return int(store.provenance(path)["params"]["frames_per_segment"])


def _clip(store: Store, path: str, clip_id: str) -> np.ndarray:
    """The whole chunk of ``clip_id`` in ``path``, through the read path's :class:`ClipReader`."""
    return ClipReader(store.array(path)).read(store.clip_index(clip_id))


def _checked(values: np.ndarray, path: str, clip_id: str) -> np.ndarray:
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise ConfigError(f"clip {clip_id!r} is not written in {path!r} (run the stage that makes it)")
    return values


def read_audio(store: Store, feature: str, clip_id: str, *, deltas: bool = False, group: str = "audio") -> np.ndarray:
    """(channel, bin, frame) float32 log spectrogram of ``clip_id``.

    With ``deltas``: (6, bin, frame), static, delta and delta-delta channels (derived here unless
    the array was stored with them; see :func:`featstore.audio.add_deltas`).
    """
    from featstore.audio import add_deltas

    path = f"{group}/{feature}"
    spec = _checked(_clip(store, path, clip_id), path, clip_id).astype(np.float32)
    params = store.provenance(path)["params"]
    if deltas and not params["store_deltas"]:
        spec = add_deltas(spec, params["frames_per_segment"], params["audio"]["delta_width"])
    return spec


def audio_segments(
    store: Store,
    feature: str,
    *,
    window_s: float | None = None,
    deltas: bool = True,
    split: str | None = None,
    batch_size: int | None = None,
    group: str = "audio",
) -> Iterator[SegmentBatch]:
    """Yield batches of spectrogram windows aligned to the segment grid.

    ``window_s`` (default: the store's segment length) must be a whole number ``k`` of segments:
    each clip gives ``n_segments // k`` non-overlapping windows of ``k * frames_per_segment``
    frames, starting at segments 0, k, 2k... ``split`` restricts to one split; ``batch_size``
    windows per batch (default: all in one batch). Windows have 6 channels with ``deltas``. Clips
    not done in the array (failed, or not extracted yet) are skipped.
    """
    path = f"{group}/{feature}"
    return _segment_windows(
        store,
        path,
        lambda clip_id: read_audio(store, feature, clip_id, deltas=deltas, group=group),
        per_segment=_frames_per_segment(store, path),
        time_axis=-1,
        window_s=window_s,
        split=split,
        batch_size=batch_size,
    )


def _segment_windows(store, path, read_clip, *, per_segment: int, time_axis: int, window_s, split, batch_size) -> Iterator[SegmentBatch]:
    """Cut each clip read by ``read_clip(clip_id)`` into windows of whole grid segments.

    ``per_segment`` is the number of elements per segment along ``time_axis``. Only clips done in
    array ``path`` are read (failed or not yet extracted clips are skipped).
    """
    window_s = store.segment_s if window_s is None else window_s
    k = int(round(window_s / store.segment_s))
    if k < 1 or abs(k * store.segment_s - window_s) > 1e-9 or k > store.n_segments:
        raise ConfigError(f"window_s={window_s} must be a whole number of {store.segment_s} s segments, at most the clip")
    clips = store.clips
    selected = np.ones(len(clips), bool) if split is None else clips["split"].to_numpy() == split
    done = store.done_in(path)
    labels = store.label_indices(clips["label"])
    buffer: list[tuple[np.ndarray, int, int, int]] = []
    for i in np.flatnonzero(selected & done):
        data = read_clip(str(clips["clip_id"].iloc[i]))
        for s in range(0, store.n_segments - k + 1, k):
            window = np.take(data, np.arange(s * per_segment, (s + k) * per_segment), axis=time_axis)
            buffer.append((window, int(labels[i]), int(i), int(s)))
            if batch_size is not None and len(buffer) == batch_size:
                yield _batch(buffer)
                buffer = []
    if buffer:
        yield _batch(buffer)


def _batch(items: list[tuple[np.ndarray, int, int, int]]) -> SegmentBatch:
    x, labels, clip_index, segment = zip(*items)
    return SegmentBatch(np.stack(x), np.array(labels), np.array(clip_index), np.array(segment))


def read_frames(store: Store, clip_id: str, *, group: str = "frames") -> tuple[np.ndarray, np.ndarray]:
    """(frames (frame, size, size, 3) uint8, times (frame,) float32 seconds) of ``clip_id``."""
    times = _checked(_clip(store, f"{group}/time_s", clip_id), f"{group}/time_s", clip_id)
    return _clip(store, f"{group}/rgb", clip_id), times


def frame_segments(
    store: Store, *, window_s: float | None = None, split: str | None = None, batch_size: int | None = None, group: str = "frames"
) -> Iterator[SegmentBatch]:
    """Yield batches of frames grouped by the segment grid, aligned in time with ``audio_segments``.

    Frame ``k`` (target time ``k / fps``) belongs to segment ``floor(k / (fps * segment_s))``; a window
    of ``k`` segments (``window_s``, default one segment) holds ``k * fps * segment_s`` frames:
    ``x`` is (window, frame, size, size, 3) uint8 (2 frames per 1 s segment at the defaults).
    """
    return _segment_windows(
        store,
        f"{group}/rgb",
        lambda clip_id: read_frames(store, clip_id, group=group)[0],
        per_segment=_frames_per_segment(store, f"{group}/rgb"),
        time_axis=0,
        window_s=window_s,
        split=split,
        batch_size=batch_size,
    )


def embeddings(store: Store, model: str, layer: str = "fc1024", *, per: str = "segment", split: str | None = None) -> SegmentBatch:
    """Cached embeddings of ``model`` aligned to the segment grid, read whole (they are small).

    ``layer``: ``fc1024``, ``fc10`` or ``predictions``. ``per="segment"``: one row per (clip,
    segment), a visual model's frames of each segment averaged; ``per="clip"``: the mean over the
    clip's segments (``segment`` is then 0). Only clips done in the array are returned, read through
    the packed cache (:func:`featstore.packed.packed_segment_embeddings`).
    """
    if per not in ("segment", "clip"):
        raise ConfigError(f"per must be 'segment' or 'clip', got {per!r}")
    path = f"predictions/{model}" if layer == "predictions" else f"embeddings/{model}/{layer}"
    segments, rows = packed_segment_embeddings(store, path)
    labels = store.label_indices(store.clips["label"])[rows]
    if split is not None:
        keep = store.clips["split"].to_numpy()[rows] == split
        segments, rows, labels = segments[keep], rows[keep], labels[keep]
    if per == "clip":
        return SegmentBatch(segments.mean(axis=1), labels, rows, np.zeros(len(rows), np.int64))
    n_seg, dim = segments.shape[1:]
    return SegmentBatch(segments.reshape(-1, dim), np.repeat(labels, n_seg), np.repeat(rows, n_seg), np.tile(np.arange(n_seg), len(rows)))
