"""The clips table and the segment grid.

The clips table has one row per clip; a clip's row position is its index along the first axis of
every per-clip array, and never changes (new clips are appended, a corrected clip keeps its row, a
removed one too). Columns:

====================  ==============================================================================
clip_id               stable id, the audio file's stem (the video's when there is no audio)
label                 scene label ("" when unknown, e.g. test clips)
split                 "train", "evaluate", "test" or "" (in no fold file)
fold                  fold number of the evaluation setup (0 when not from a fold file)
identifier            recording location, the unit of the official split
audio_path            audio file, relative to the store's dataset root ("" when none), inside it
video_path            video file, relative to the dataset root ("" when none)
duration_s            duration of the source in seconds (NaN when it could not be read)
audio_fingerprint     content fingerprint of the audio file ("" when missing)
video_fingerprint     content fingerprint of the video file ("" when missing)
removed               True once ``featstore remove-clips`` removed the clip (a table without the
                      column reads as no clip removed): its row stays, every stage skips it
====================  ==============================================================================

A clip ingested with a wrong path or metadata is corrected in place (``ingest --replace``,
:func:`merge_clips` with ``replace=True``; :mod:`featstore.clip_edits` clears its done-marks).

Every media path, however it enters the store (ingest, a CSV manifest, ``import-h5``, appended
clips, a re-pointed dataset root) and again whenever a stage opens it, goes through
:func:`resolve_source`: symlinks are resolved, then the file must lie inside the dataset root, so a
crafted table cannot make a stage read ``/etc/passwd`` nor a symlink swapped in later lead out.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field

import lazy_loader
import numpy as np

from featstore import names
from featstore.errors import ClipConflict, UnsafePath

#: pandas loads on first use (about 0.25 s): `featstore init` and the stores' metadata do not need it.
pd = lazy_loader.load("pandas")

CLIP_COLUMNS: dict[str, str] = {
    "clip_id": "string",
    "label": "string",
    "split": "string",
    "fold": "int64",
    "identifier": "string",
    "audio_path": "string",
    "video_path": "string",
    "duration_s": "float64",
    "audio_fingerprint": "string",
    "video_fingerprint": "string",
    "removed": "bool",
}

#: Columns that define a clip; re-ingesting a clip with other values here is a conflict (without ``replace``).
IDENTITY_COLUMNS = ("label", "split", "audio_path", "video_path")
#: Columns a re-ingest with ``replace`` compares: a clip whose source row differs in any is replaced.
SOURCE_COLUMNS = ("label", "split", "fold", "identifier", "audio_path", "video_path", "audio_fingerprint", "video_fingerprint")


def empty_clips() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CLIP_COLUMNS.items()})


def normalise_clips(df: pd.DataFrame) -> pd.DataFrame:
    """Give ``df`` exactly the clips table's columns and dtypes (missing ones filled with defaults)."""
    out = pd.DataFrame(index=range(len(df)))
    for col, dtype in CLIP_COLUMNS.items():
        if col in df.columns:
            values = df[col].to_numpy()
        elif dtype == "string":
            values = [""] * len(df)
        elif col == "duration_s":
            values = [np.nan] * len(df)
        elif dtype == "bool":
            values = [False] * len(df)
        else:
            values = [0] * len(df)
        if dtype == "bool":
            out[col] = pd.Series(values).fillna(False).astype(bool)
        else:
            out[col] = pd.Series(values, dtype=dtype).fillna("" if dtype == "string" else np.nan)
    return out


def resolve_source(root: str | None, path: str, where: str) -> str:
    """The real absolute path of media ``path`` (relative to ``root``, or absolute inside it).

    Symlinks are resolved first, then the result must lie inside the real ``root``; otherwise
    :class:`UnsafePath` names ``where`` (a file and line, or a clip) and the path. With no root yet
    (a store that was never ingested), only a relative path that does not climb with ``..`` passes,
    returned normalised and still relative.
    """
    if root is None:
        normal = os.path.normpath(path)
        if os.path.isabs(path) or normal == ".." or normal.startswith(".." + os.sep):
            raise UnsafePath(f"{where}: path {path!r} is absolute or climbs out with '..' and the store has no dataset root yet")
        return normal
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, path))
    if os.path.commonpath([full, real_root]) != real_root:
        via = "" if full == os.path.normpath(os.path.join(real_root, path)) else f" (it leads to {full})"
        raise UnsafePath(f"{where}: path {path!r} escapes the dataset root {real_root}{via}")
    return full


def relative_source(root: str | None, path: str, where: str) -> str:
    """``path`` as the clips table stores it: relative to the real ``root`` ("" stays ""); see :func:`resolve_source`."""
    if not path:
        return ""
    full = resolve_source(root, path, where)
    return full if root is None else os.path.relpath(full, os.path.realpath(root))


def checked_clips(table: pd.DataFrame, root: str | None) -> pd.DataFrame:
    """``table`` normalised, with valid clip ids and media paths made relative to ``root``.

    Raises :class:`~featstore.errors.ConfigError` for a bad clip id and :class:`UnsafePath` for a
    path outside the root, naming the clip.
    """
    table = normalise_clips(table)
    for clip_id in table["clip_id"]:
        names.clip_id(clip_id, "clips table")
    for col in ("audio_path", "video_path"):
        table[col] = pd.Series(
            [relative_source(root, p, f"clip {cid!r} {col}") for cid, p in zip(table["clip_id"], table[col])], dtype="string"
        )
    return table


@dataclass
class MergedClips:
    """What :func:`merge_clips` made: the table, the clips appended and the clip ids replaced."""

    table: pd.DataFrame
    added: int
    replaced: list[str] = field(default_factory=list)


def merge_clips(existing: pd.DataFrame, new: pd.DataFrame, *, replace: bool = False) -> MergedClips:
    """Append the clips of ``new`` that ``existing`` lacks.

    A clip_id present in both with the same identity columns is skipped (re-ingest is a no-op); with
    different ones, :class:`ClipConflict` names the clip and the differing columns. With
    ``replace``, a clip whose row differs in any of :data:`SOURCE_COLUMNS` (or that was removed)
    gets the new row at its own position instead, no longer removed.
    """
    new = normalise_clips(new)
    table = existing.copy()
    position = {str(cid): i for i, cid in enumerate(existing["clip_id"])}
    fresh, replaced = [], []
    for row in new.itertuples(index=False):
        i = position.get(row.clip_id)
        if i is None:
            fresh.append(row)
            continue
        old = existing.iloc[i]
        if replace:
            if bool(old["removed"]) or any(str(old[c]) != str(getattr(row, c)) for c in SOURCE_COLUMNS):
                table.iloc[i] = [getattr(row, c) if c != "removed" else False for c in table.columns]
                replaced.append(str(row.clip_id))
            continue
        diffs = [c for c in IDENTITY_COLUMNS if str(old[c]) != str(getattr(row, c))]
        if diffs:
            details = ", ".join(f"{c}: {old[c]!r} -> {getattr(row, c)!r}" for c in diffs)
            raise ClipConflict(f"clip {row.clip_id!r} is already in the store with other metadata ({details}); "
                               "re-ingest with --replace to correct it")
    if fresh:
        added = normalise_clips(pd.DataFrame(fresh, columns=new.columns))
        table = added if existing.empty else pd.concat([table, added], ignore_index=True)
    return MergedClips(normalise_clips(table) if replaced else table, len(fresh), replaced)


def table_checksum(raw: bytes | None) -> str:
    """Checksum of the clips table's file bytes (BLAKE2b, hex; ``""`` when there is no file yet)."""
    return "" if raw is None else hashlib.blake2b(raw, digest_size=16).hexdigest()


def segments_per_clip(clip_duration_s: float, segment_s: float) -> int:
    """Number of whole segments in a clip (the grid drops a final partial segment)."""
    return int(math.floor(clip_duration_s / segment_s + 1e-9))


def segment_table(clips: pd.DataFrame, clip_duration_s: float, segment_s: float) -> pd.DataFrame:
    """The segment grid: one row per (clip, segment) with start/end times in seconds.

    Columns: clip_index, clip_id, segment, start_s, end_s, label, split. Segment ``k`` of a clip covers
    ``[k * segment_s, (k + 1) * segment_s)``.
    """
    n_seg = segments_per_clip(clip_duration_s, segment_s)
    n_clips = len(clips)
    seg = np.tile(np.arange(n_seg), n_clips)
    clip_index = np.repeat(np.arange(n_clips), n_seg)
    return pd.DataFrame(
        {
            "clip_index": clip_index,
            "clip_id": clips["clip_id"].to_numpy()[clip_index],
            "segment": seg,
            "start_s": seg * segment_s,
            "end_s": (seg + 1) * segment_s,
            "label": clips["label"].to_numpy()[clip_index],
            "split": clips["split"].to_numpy()[clip_index],
        }
    )
