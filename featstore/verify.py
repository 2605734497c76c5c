"""Integrity of a store: every done chunk decodes and matches its recorded checksum; done-marks,
tables and array shapes agree; temp files of interrupted writes are cleaned.

Damage is found two ways: the chunk's crc32c codec refuses bytes that changed on disk, and the
CRC-32 of the decoded values must equal the one the ledger recorded when the clip was written. A
done float clip holding NaN is damage too. ``featstore verify --repair`` recomputes exactly the
damaged clips (see :mod:`featstore.pipelines.verify`).

Damaged files that are not chunks (a truncated ``zarr.json``, clips table, ledger, failures record,
lock, run record or model registry) are diagnosed first, by reading only, and reported as problems
naming each file; then every chunk that can still be checked is.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore.chunks import ClipReader
from featstore.errors import DamagedFile, NotFoundError
from featstore.ledger import FAILURES_DIR, LEGACY_FAILURES_NAME
from featstore.store import CLIPS_NAME, Store


@dataclass
class Damage:
    array: str
    clip_id: str
    reason: str


@dataclass
class VerifyReport:
    """What ``verify`` found: damaged clips, store-level problems, temp files removed."""

    arrays: list[str] = field(default_factory=list)
    clips_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    partial_files_removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "arrays": self.arrays,
            "clips_checked": self.clips_checked,
            "damaged": [d.__dict__ for d in self.damaged],
            "problems": self.problems,
            "partial_files_removed": self.partial_files_removed,
            "ok": self.ok,
        }


def _remove_partial_files(store: Store) -> int:
    """Delete ``*.partial`` temp files a hard kill can leave in a local store (docs/explanation/integrity.md)."""
    if not store.side.is_local:
        return 0
    removed = 0
    for dirpath, _, files in os.walk(store.url):
        for name in files:
            if name.endswith(".partial"):
                os.remove(os.path.join(dirpath, name))
                removed += 1
    return removed


def diagnose_files(store: Store) -> tuple[list[str], list[str]]:
    """(paths of the arrays whose metadata parses, one problem per damaged non-chunk file). Only reads."""
    side = store.side
    arrays, problems = side.scan_zarr_metadata()
    readers = {CLIPS_NAME: side.read_parquet, LEGACY_FAILURES_NAME: side.read_parquet}
    for folder, suffix, read in (("ledger", ".json", side.read_json), ("locks", ".json", side.read_json),
                                 ("runs", ".json", side.read_json), (FAILURES_DIR, ".parquet", side.read_parquet)):
        readers.update({f"{folder}/{n}": read for n in side.listdir(folder) if n.endswith(suffix)})
    readers["models.json"] = side.read_json
    for name, read in readers.items():
        try:
            read(name)
        except DamagedFile as exc:
            problems.append(str(exc))
    for folder, suffix in (("models", ".keras"), ("runs", ".keras"), ("runs", ".json"), ("ledger", ".json"), ("", "models.json")):
        for name in ([f"{folder}/{n}" for n in side.listdir(folder) if n.endswith(suffix)] if folder else [suffix]):
            raw = side.read(name)
            problem = None if raw is None else side.checksum_problem(name, raw)
            if problem and problem not in problems:
                problems.append(problem)
    try:
        from featstore.registry import model_bytes, registered_models

        for model in registered_models(store):
            try:
                model_bytes(store, model)
            except (DamagedFile, NotFoundError) as exc:
                if not any(str(exc).split(":")[0] in p for p in problems):
                    problems.append(str(exc))
    except (DamagedFile, ValueError):
        pass  # an unparsable registry is named above
    return arrays, problems


def verify_store(store: Store, arrays: list[str] | None = None, *, clean: bool = True) -> VerifyReport:
    """Check ``arrays`` (default: all) of ``store``; see the module docstring."""
    readable, report_problems = diagnose_files(store)
    report = VerifyReport(arrays=arrays or readable, problems=report_problems)
    if clean:
        report.partial_files_removed = _remove_partial_files(store)
    try:
        clips = store.clips
    except DamagedFile as exc:  # unreadable (named by the diagnosis) or not this store's table
        if str(exc) not in report.problems:
            report.problems.append(str(exc))
        return report  # no clip can be located without the table
    if clips["clip_id"].duplicated().any():
        report.problems.append("clips table: duplicate clip_id values")
    row_of = {cid: i for i, cid in enumerate(clips["clip_id"])}
    for path in report.arrays:
        try:
            array = store.array(path)
            prov = store.provenance(path)
            ledger = store.ledger(path)
        except DamagedFile:
            continue  # named by the diagnosis
        if array.shape[0] > len(clips):
            report.problems.append(f"{path}: {array.shape[0]} rows but {len(clips)} clips")
        if list(array.shape[1:]) != list(prov.get("per_clip_shape", array.shape[1:])):
            report.problems.append(f"{path}: shape {array.shape} differs from its provenance")
        reader = ClipReader(array)
        for clip_id, entry in ledger.entries.items():
            i = row_of.get(clip_id)
            if i is None or i >= array.shape[0]:
                report.problems.append(f"{path}: done-mark for unknown clip {clip_id!r}")
                continue
            report.clips_checked += 1
            try:  # one inner chunk (sharded) or chunk object per clip, its crc32c checked
                value = reader.read(i)
            except Exception as exc:  # noqa: BLE001 - a codec refusing damaged bytes
                report.damaged.append(Damage(path, clip_id, f"chunk unreadable: {type(exc).__name__}: {exc}"))
                continue
            if value.dtype.kind == "f" and np.isnan(value).any():
                report.damaged.append(Damage(path, clip_id, "done clip holds NaN (chunk missing or lost)"))
            elif zlib.crc32(np.ascontiguousarray(value).tobytes()) != entry["crc32"]:
                report.damaged.append(Damage(path, clip_id, "values differ from the checksum recorded when written"))
    return report
