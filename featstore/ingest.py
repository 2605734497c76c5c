r"""Read a dataset's metadata into a store's clips table.

Two formats:

* ``tau2021``: the TAU Urban Audio-Visual Scenes 2021 development layout (docs/guides/store.md): ``meta.csv`` with
  ``filename_audio, filename_video, scene_label, identifier`` and
  ``evaluation_setup/fold{N}_{train,evaluate,test}.csv``, tab-separated with a header, CRLF tolerated,
  columns read by name. The CSVs may also live in a sibling ``*.meta/`` folder: both are searched.
  clip_id = the audio file's stem; split from the fold files. A clip listed in both ``evaluate`` and
  ``test`` (the official ``fold1_test`` lists the evaluate clips without labels) gets ``evaluate``;
  one in no fold file gets ``""``.
* ``csv``: a generic comma-separated file with ``audio``, ``video`` (either may be empty, not both),
  ``label``, ``split`` and optional ``clip_id`` and ``location`` columns (the recording location,
  which the location-disjoint validation split keeps together; ``identifier`` is read the same way);
  paths are relative to the CSV's folder, ``\`` or ``/`` separated. Quoted fields are read as the
  csv module reads them.

Bad metadata raises :class:`IngestError` naming the file and line (header = line 1): a missing
column, a file with no rows, a field over csv's 128 KiB limit, a bad clip_id (see :mod:`featstore.names`), a media
path that is not inside the dataset root (an absolute path inside it is fine). Rows whose media
files are missing are ingested all the same and listed in :attr:`IngestReport.missing`, which the
caller records as failures.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from dataclasses import dataclass, field

import lazy_loader

from featstore import names
from featstore.clips import relative_source
from featstore.errors import ConfigError, IngestError, UnsafePath
from featstore.fingerprint import file_fingerprint
from featstore.media import probe_duration_s

#: pandas loads on first use (about 0.25 s): `featstore init` and the stores' metadata do not need it.
pd = lazy_loader.load("pandas")


@dataclass
class IngestReport:
    """What an ingest read: the clips table rows, the dataset root, and clips with missing files."""

    clips: pd.DataFrame
    root: str
    missing: list[tuple[str, str]] = field(default_factory=list)  # (clip_id, message)


def _read_table(path: str, sep: str, *, need_rows: bool = True) -> list[dict[str, str]]:
    """Rows of a delimited file as dicts with ``__line__`` (1-based file line) added.

    ``need_rows``: a file with a header and no rows is an error (a fold file may be empty).
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read().replace("\r\n", "\n").replace("\r", "\n")
    reader = csv.DictReader(io.StringIO(text), delimiter=sep)
    rows = []
    try:
        if reader.fieldnames is None:
            raise IngestError(f"{path}: line 1: empty file, expected a header")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        for row in reader:
            line = reader.line_num
            if None in row:
                raise IngestError(f"{path}: line {line}: more fields than the header has")
            rows.append({**{k: (v or "").strip() for k, v in row.items()}, "__line__": str(line)})
    except csv.Error as exc:  # e.g. a field over csv's own limit; line_num counts the lines read before
        raise IngestError(f"{path}: line {reader.line_num + 1}: {exc}") from None
    if need_rows and not rows:
        raise IngestError(f"{path}: line 2: no rows after the header")
    return rows


def _require_columns(path: str, rows: list[dict[str, str]], fieldnames: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in fieldnames]
    if missing:
        raise IngestError(f"{path}: line 1: missing column(s) {', '.join(missing)} (have: {', '.join(fieldnames)})")


def _header(path: str, sep: str) -> list[str]:
    """The header's column names, read by the csv module (quoted fields, e.g. ``csv.QUOTE_ALL``, are fine)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f, delimiter=sep), [])
    return [c.strip() for c in first]


def _inside_root(root: str, path: str, where: str) -> str:
    """``path`` relative to ``root``, symlinks resolved; IngestError when it is not inside ``root``.

    Backslashes are folder separators (a manifest written on Windows) and become ``/``.
    """
    try:
        return relative_source(root, path.replace("\\", "/"), where)
    except UnsafePath as exc:
        raise IngestError(str(exc)) from None


def _clip_id(value: str, where: str) -> str:
    try:
        return names.clip_id(value, where)
    except ConfigError as exc:
        raise IngestError(str(exc)) from None


def _describe_sources(root: str, rows: list[dict]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Add durations and fingerprints; collect clips whose files are missing or unreadable."""
    missing = []
    for row in rows:
        problems = []
        for kind in ("audio", "video"):
            rel = row[f"{kind}_path"]
            row[f"{kind}_fingerprint"] = ""
            if not rel:
                continue
            full = os.path.join(root, rel)
            if not os.path.isfile(full):
                problems.append(f"{kind} file not found: {rel}")
                continue
            row[f"{kind}_fingerprint"] = file_fingerprint(full)
        present = [os.path.join(root, row[f"{kind}_path"]) for kind in ("audio", "video") if row[f"{kind}_fingerprint"]]
        row["duration_s"] = probe_duration_s(present[0]) if present else float("nan")
        if problems:
            missing.append((row["clip_id"], "; ".join(problems)))
    return pd.DataFrame(rows), missing


def _check_unique(rows: list[dict], where: str) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        if row["clip_id"] in seen:
            raise IngestError(
                f"{where}: line {row['__line__']}: duplicate clip_id {row['clip_id']!r} (first on line {seen[row['clip_id']]})"
            )
        seen[row["clip_id"]] = row["__line__"]


def _check_label(label: str, classes: list[str] | None, where: str) -> None:
    if label and classes is not None and label not in classes:
        raise IngestError(f"{where}: unknown label {label!r} (classes: {', '.join(classes)}; a store's classes are set by `featstore init --classes`)")


def _find_setup_file(root: str, name: str) -> str | None:
    candidates = [os.path.join(root, name), os.path.join(root, "evaluation_setup", name)]
    for meta_dir in sorted(glob.glob(os.path.join(root, "*.meta")) + glob.glob(os.path.join(os.path.dirname(root), "*.meta"))):
        candidates += [os.path.join(meta_dir, name), os.path.join(meta_dir, "evaluation_setup", name)]
    return next((c for c in candidates if os.path.isfile(c)), None)


def read_tau2021(root: str, *, fold: int = 1, classes: list[str] | None = None) -> IngestReport:
    """Read the TAU Urban Audio-Visual Scenes 2021 development layout under ``root``."""
    root = os.path.abspath(root)
    meta_path = _find_setup_file(root, "meta.csv")
    if meta_path is None:
        raise IngestError(f"{root}: no meta.csv (looked in the root, evaluation_setup/ and *.meta/)")
    meta_rows = _read_table(meta_path, "\t")
    _require_columns(meta_path, meta_rows, _header(meta_path, "\t"), ("filename_audio", "filename_video", "scene_label"))

    split_of: dict[str, str] = {}
    fold_files = {split: _find_setup_file(root, f"fold{fold}_{split}.csv") for split in ("test", "train", "evaluate")}
    if not any(fold_files.values()):  # every clip would get no split: a wrong --fold, or files not unpacked
        raise IngestError(f"{root}: no fold{fold}_train.csv, fold{fold}_evaluate.csv or fold{fold}_test.csv "
                          "(looked in the root, evaluation_setup/ and *.meta/): check --fold and the dataset's evaluation_setup folder")
    for split, path in fold_files.items():  # later splits win: evaluate over test
        if path is None:
            continue
        fold_rows = _read_table(path, "\t", need_rows=False)
        _require_columns(path, fold_rows, _header(path, "\t"), ("filename_audio",))
        for row in fold_rows:
            split_of[row["filename_audio"]] = split

    rows = []
    for row in meta_rows:
        where = f"{meta_path}: line {row['__line__']}"
        audio = _inside_root(root, row["filename_audio"], where)
        video = _inside_root(root, row["filename_video"], where)
        _check_label(row["scene_label"], classes, where)
        stem = os.path.splitext(os.path.basename(audio or video))[0]
        if not stem:
            raise IngestError(f"{where}: neither filename_audio nor filename_video is given")
        _clip_id(stem, where)
        identifier = row.get("identifier") or "-".join(stem.split("-")[:3])
        split = split_of.get(row["filename_audio"], "")
        rows.append(
            {
                "clip_id": stem,
                "label": row["scene_label"],
                "split": split,
                "fold": fold if split else 0,
                "identifier": identifier,
                "audio_path": audio,
                "video_path": video,
                "__line__": row["__line__"],
            }
        )
    _check_unique(rows, meta_path)
    table, missing = _describe_sources(root, rows)
    return IngestReport(table.drop(columns="__line__"), root, missing)


def is_tau2021_eval(root: str, *, fold: int = 1) -> bool:
    """Whether ``root`` has the evaluation layout: a ``fold{fold}_test.csv`` and no train fold file
    (the development layout has both)."""
    root = os.path.abspath(root)
    return _find_setup_file(root, f"fold{fold}_test.csv") is not None and _find_setup_file(root, f"fold{fold}_train.csv") is None


def read_tau2021_eval(root: str, *, fold: int = 1) -> IngestReport:
    """Read the TAU Urban Audio-Visual Scenes 2021 *evaluation* layout under ``root``.

    The challenge's evaluation set holds ``audio/``, ``video/`` and ``evaluation_setup/fold1_test.csv``
    (tab-separated, header ``filename_audio filename_video``, no labels; a ``meta.csv`` without
    ``scene_label`` may sit beside it), 1 s clips named by a number (``audio/123.wav``). Every listed
    clip gets split ``test``, no label and no identifier (the recording location is not published);
    its clip_id is the file stem.
    """
    root = os.path.abspath(root)
    path = _find_setup_file(root, f"fold{fold}_test.csv")
    if path is None:
        raise IngestError(f"{root}: no fold{fold}_test.csv (looked in the root, evaluation_setup/ and *.meta/)")
    fold_rows = _read_table(path, "\t")
    _require_columns(path, fold_rows, _header(path, "\t"), ("filename_audio", "filename_video"))
    rows = []
    for row in fold_rows:
        where = f"{path}: line {row['__line__']}"
        audio = _inside_root(root, row["filename_audio"], where)
        video = _inside_root(root, row["filename_video"], where)
        stem = os.path.splitext(os.path.basename(audio or video))[0]
        if not stem:
            raise IngestError(f"{where}: neither filename_audio nor filename_video is given")
        _clip_id(stem, where)
        rows.append({"clip_id": stem, "label": "", "split": "test", "fold": fold, "identifier": "", "audio_path": audio, "video_path": video, "__line__": row["__line__"]})
    _check_unique(rows, path)
    table, missing = _describe_sources(root, rows)
    return IngestReport(table.drop(columns="__line__"), root, missing)


def csv_labels(path: str) -> list[str]:
    """The ``label`` column of a CSV manifest (nothing else is checked here)."""
    return [row.get("label", "") for row in _read_table(os.path.abspath(path), ",")]


def read_csv_manifest(path: str, *, classes: list[str] | None = None) -> IngestReport:
    """Read a generic CSV manifest (``audio, video, label, split[, clip_id]``)."""
    path = os.path.abspath(path)
    root = os.path.dirname(path)
    rows_in = _read_table(path, ",")
    _require_columns(path, rows_in, _header(path, ","), ("audio", "video", "label", "split"))
    rows = []
    for row in rows_in:
        where = f"{path}: line {row['__line__']}"
        audio = _inside_root(root, row["audio"], where)
        video = _inside_root(root, row["video"], where)
        _check_label(row["label"], classes, where)
        if row["split"] not in ("train", "evaluate", "test", ""):
            raise IngestError(f"{where}: unknown split {row['split']!r} (train, evaluate, test or empty)")
        if not audio and not video:
            raise IngestError(f"{where}: neither audio nor video is given (a clip needs at least one media file)")
        clip_id = row.get("clip_id") or os.path.splitext(os.path.basename(audio or video))[0]
        _clip_id(clip_id, where)
        rows.append(
            {
                "clip_id": clip_id,
                "label": row["label"],
                "split": row["split"],
                "fold": 0,
                "identifier": row.get("location") or row.get("identifier", ""),
                "audio_path": audio,
                "video_path": video,
                "__line__": row["__line__"],
            }
        )
    _check_unique(rows, path)
    table, missing = _describe_sources(root, rows)
    return IngestReport(table.drop(columns="__line__"), root, missing)
