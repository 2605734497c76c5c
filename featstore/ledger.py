"""The completion ledger of an array and the store's failures record.

Completion is recorded by the driver only, after a worker reports that a clip's chunk is written
whole (docs/explanation/integrity.md). The ledger of an array is one JSON file, rewritten atomically, that maps each
done clip_id to the fingerprint of the inputs it was computed from, a CRC-32 of the chunk's values
(what ``verify`` compares against) and the stage's per-clip notes (e.g. the real audio length).
A clip is *done* for an array with fingerprint F when the ledger's fingerprint is F and the clip's
entry names the clip's current input fingerprint. A crash loses at most the marks not yet flushed;
those clips are simply computed again (tasks are idempotent).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import lazy_loader

from featstore.errors import DamagedFile, StoreError
from featstore.sidefiles import SideFiles

#: pandas loads on first use (about 0.25 s): `featstore init` and the stores' metadata do not need it.
pd = lazy_loader.load("pandas")


def ledger_name(array_path: str) -> str:
    return "ledger/" + array_path.replace("/", "--") + ".json"


@dataclass
class Ledger:
    """Done-marks of one array. Load with :meth:`load`, persist with :meth:`flush`."""

    array_path: str
    fingerprint: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    _dirty: bool = False

    @classmethod
    def load(cls, side: SideFiles, array_path: str, fingerprint: str) -> "Ledger":
        """The ledger of ``array_path``; empty when missing or written for another fingerprint."""
        doc = side.read_json(ledger_name(array_path))
        if doc is not None:
            if not isinstance(doc, dict) or not isinstance(doc.get("clips", {}), dict):
                raise DamagedFile(f"{side.path(ledger_name(array_path))}: damaged, not a ledger")
            if doc.get("fingerprint") == fingerprint:
                return cls(array_path, fingerprint, doc["clips"])
        return cls(array_path, fingerprint)

    def is_done(self, clip_id: str, input_fingerprint: str) -> bool:
        entry = self.entries.get(clip_id)
        return entry is not None and entry["input"] == input_fingerprint

    def mark_done(self, clip_id: str, input_fingerprint: str, crc32: int, info: dict | None = None) -> None:
        self.entries[clip_id] = {"input": input_fingerprint, "crc32": int(crc32), "info": info or {}}
        self._dirty = True

    def unmark(self, clip_id: str) -> None:
        if self.entries.pop(clip_id, None) is not None:
            self._dirty = True

    def flush(self, side: SideFiles) -> None:
        """Write the ledger atomically (a no-op when nothing changed since the last flush)."""
        if not self._dirty:
            return
        doc = {"array": self.array_path, "fingerprint": self.fingerprint, "clips": self.entries}
        side.write(ledger_name(self.array_path), json.dumps(doc, separators=(",", ":")).encode())
        self._dirty = False

    def info_table(self) -> pd.DataFrame:
        """The per-clip notes as a DataFrame indexed by clip_id."""
        rows = {cid: e.get("info", {}) for cid, e in self.entries.items()}
        return pd.DataFrame.from_dict(rows, orient="index")


FAILURE_COLUMNS = ["stage", "array", "clip_id", "error_type", "message", "time"]
FAILURES_DIR = "failures"
#: The single failures file of stores made before per-array files; read, never written.
LEGACY_FAILURES_NAME = "failures.parquet"


def failures_scope(stage: str, array: str) -> str:
    """Name of the failures file a row lives in: one per array, or per stage for rows of no array."""
    return f"array.{array.replace('/', '--')}" if array else f"stage.{stage}"


def _empty_failures() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="string") for c in FAILURE_COLUMNS[:-1]} | {"time": pd.Series(dtype="datetime64[ns, UTC]")})


class Failures:
    """Failed clips of every stage: (stage, array, clip_id, error_type, message, time).

    One row per (stage, array, clip_id); a later failure replaces it and a later success clears it.
    Rows live in one file per array, ``failures/array.{path}.parquet`` (``stage.{stage}.parquet`` for
    rows of no array, e.g. ingest's missing files), so two stages writing different arrays, each
    under its writer lock, never rewrite the same file; :attr:`table` merges them. ``arrays`` limits
    the record to those arrays' files (what a stage run opens); None opens every file. A store made
    before these files keeps its ``failures.parquet``: it is read as the first content of each file.
    """

    def __init__(self, side: SideFiles, arrays: list[str] | None = None):
        self.side = side
        self._only = None if arrays is None else {failures_scope("", a) for a in arrays}
        if self._only is None:
            names = [n for n in side.listdir(FAILURES_DIR) if n.endswith(".parquet")]
            scopes = [n[: -len(".parquet")] for n in names]
        else:
            scopes = sorted(self._only)
        self._tables: dict[str, pd.DataFrame] = {}
        for scope in scopes:
            table = side.read_parquet(f"{FAILURES_DIR}/{scope}.parquet")
            if table is not None:
                self._tables[scope] = table
        self._seed_from_legacy()
        self._scopes_of: dict[tuple[str, str], set[str]] = {}  # (stage, clip_id) -> scopes: fast no-op clears
        for scope, table in self._tables.items():
            for key in zip(table["stage"], table["clip_id"]):
                self._scopes_of.setdefault(key, set()).add(scope)
        self._dirty: set[str] = set()
        self._pending: dict[str, list[list]] = {}  # rows recorded since the scope's table was last built

    def _seed_from_legacy(self) -> None:
        from featstore.upgrade import legacy_failures

        for scope, rows in legacy_failures(self.side, self._only).items():
            self._tables.setdefault(scope, rows)

    @property
    def table(self) -> pd.DataFrame:
        """Every row of the opened files, one table."""
        self._materialise()
        tables = [t for _, t in sorted(self._tables.items()) if not t.empty]
        return pd.concat(tables, ignore_index=True) if tables else _empty_failures()

    def record(self, stage: str, array: str, clip_id: str, error_type: str, message: str) -> None:
        """Record that ``clip_id`` failed in ``stage`` for ``array`` ("" for none), replacing an older row."""
        scope = failures_scope(stage, array)
        if self._only is not None and scope not in self._only:
            raise StoreError(f"this failures record holds arrays {sorted(self._only)}, not {array!r}")
        if scope in self._scopes_of.get((stage, clip_id), ()):
            self._drop(scope, stage, clip_id)
        # kept as a plain row until the table is read or flushed: a concat per failure is O(n^2) over a run
        self._pending.setdefault(scope, []).append([stage, array, clip_id, error_type, message, pd.Timestamp(time.time(), unit="s", tz="UTC")])
        self._scopes_of.setdefault((stage, clip_id), set()).add(scope)
        self._dirty.add(scope)

    def clear(self, stage: str, clip_id: str) -> None:
        """Forget the failures of ``clip_id`` in ``stage`` (for every opened array)."""
        for scope in self._scopes_of.pop((stage, clip_id), set()):
            self._drop(scope, stage, clip_id)

    def forget(self, clip_ids: list[str]) -> None:
        """Forget every failure of ``clip_ids``, of every stage (a clip replaced or removed)."""
        ids = set(clip_ids)
        for stage, clip_id in [key for key in self._scopes_of if key[1] in ids]:
            self.clear(stage, clip_id)

    def _materialise(self, scope: str | None = None) -> None:
        """Append the pending rows of ``scope`` (None: of every scope) to its table."""
        for name in [scope] if scope is not None else list(self._pending):
            rows = self._pending.pop(name, None)
            if rows:
                new = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
                old = self._tables.get(name)
                self._tables[name] = new if old is None or old.empty else pd.concat([old, new], ignore_index=True)

    def _drop(self, scope: str, stage: str, clip_id: str) -> None:
        self._materialise(scope)
        table = self._tables.get(scope)
        if table is None:
            return
        hit = (table["stage"] == stage) & (table["clip_id"] == clip_id)
        if hit.any():
            self._tables[scope] = table[~hit].reset_index(drop=True)
            self._dirty.add(scope)

    def flush(self) -> None:
        """Write each changed file atomically (an emptied file stays, so an old record cannot show through)."""
        self._materialise()
        for scope in sorted(self._dirty):
            buf = io.BytesIO()
            table = self._tables[scope]
            table.astype({c: "string" for c in FAILURE_COLUMNS if c != "time"}).to_parquet(buf, index=False)
            self.side.write(f"{FAILURES_DIR}/{scope}.parquet", buf.getvalue())
        self._dirty.clear()
