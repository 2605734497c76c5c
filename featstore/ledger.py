"""The completion ledger of an array and the store's failures record.

Completion is recorded by the driver only, after a worker reports that a clip's chunk is written
whole (DESIGN 7.6). The ledger of an array is one JSON file, rewritten atomically, that maps each
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

import pandas as pd

from featstore.sidefiles import SideFiles


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
        raw = side.read(ledger_name(array_path))
        if raw is not None:
            doc = json.loads(raw)
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
FAILURES_NAME = "failures.parquet"


class Failures:
    """Failed clips of every stage: (stage, array, clip_id, error_type, message, time).

    One row per (stage, clip_id); a later failure replaces it and a later success clears it.
    """

    def __init__(self, side: SideFiles):
        self.side = side
        raw = side.read(FAILURES_NAME)
        self.table = (
            pd.read_parquet(io.BytesIO(raw)) if raw is not None else pd.DataFrame(columns=FAILURE_COLUMNS)
        )
        self._keys = set(zip(self.table["stage"], self.table["clip_id"]))  # fast no-op clears
        self._dirty = False

    def record(self, stage: str, array: str, clip_id: str, error_type: str, message: str) -> None:
        self.clear(stage, clip_id)
        row = pd.DataFrame(
            [[stage, array, clip_id, error_type, message, pd.Timestamp(time.time(), unit="s", tz="UTC")]],
            columns=FAILURE_COLUMNS,
        )
        self.table = row if self.table.empty else pd.concat([self.table, row], ignore_index=True)
        self._keys.add((stage, clip_id))
        self._dirty = True

    def clear(self, stage: str, clip_id: str) -> None:
        if (stage, clip_id) not in self._keys:
            return
        self._keys.discard((stage, clip_id))
        hit = (self.table["stage"] == stage) & (self.table["clip_id"] == clip_id)
        if hit.any():
            self.table = self.table[~hit].reset_index(drop=True)
            self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        buf = io.BytesIO()
        self.table.astype({c: "string" for c in FAILURE_COLUMNS if c != "time"}).to_parquet(buf, index=False)
        self.side.write(FAILURES_NAME, buf.getvalue())
        self._dirty = False
