"""Correcting and removing clips of a store: ``ingest --replace`` and ``remove-clips``.

A clip's row position is its index along every array's first axis, so neither edit moves a row:
a corrected clip gets its new row at its own position, a removed one keeps its row, marked
``removed`` (see :mod:`featstore.clips`). Either way the clip's done-marks are cleared in every
array's ledger and its failures forgotten, so each stage recomputes exactly the corrected clips
(and never a removed one: :func:`featstore.pipelines.runner.select_clips` skips them, and every
reader reads only done clips).

Both hold the clips table's lock (:meth:`~featstore.store.Store.changing_clips`) and the writer
lock of every array: a stage writing one meanwhile would mark a clip done from its old row, so
the edit is refused while one runs (:class:`~featstore.errors.LockHeld`). The marks are cleared
before the table is written: a crash in between leaves clips recomputed from their old row, never
a mark that outlives its row.
"""

from __future__ import annotations

from collections.abc import Iterable

import lazy_loader

from featstore import clips as clips_mod
from featstore import names
from featstore.errors import NotFoundError
from featstore.lock import WriterLock
from featstore.store import Store

#: pandas loads on first use (about 0.25 s): `featstore init` and the stores' metadata do not need it.
pd = lazy_loader.load("pandas")


def replace_clips(store: Store, new: pd.DataFrame) -> clips_mod.MergedClips:
    """Append the clips of ``new`` the store lacks and replace, in place, those whose source row
    differs (:data:`featstore.clips.SOURCE_COLUMNS`) or that were removed; their done-marks and
    failures are cleared."""
    with store.changing_clips("ingest --replace"):
        merged = clips_mod.merge_clips(store.clips, clips_mod.checked_clips(new, store.dataset_root), replace=True)
        if merged.replaced:
            _rewrite(store, merged.table, merged.replaced, "ingest --replace")
        elif merged.added:
            store.write_clips(merged.table)
    return merged


def remove_clips(store: Store, clip_ids: Iterable[str]) -> list[str]:
    """Mark ``clip_ids`` removed and clear their done-marks and failures; return the ids that were
    not removed already. An id not in the store is a :class:`NotFoundError` naming the closest ones,
    before anything changes."""
    wanted = list(dict.fromkeys(str(c) for c in clip_ids))
    with store.changing_clips("remove-clips"):
        table = store.clips
        position = {str(cid): i for i, cid in enumerate(table["clip_id"])}
        unknown = [c for c in wanted if c not in position]
        if unknown:
            more = f" ({len(unknown) - 5} more unknown ids)" if len(unknown) > 5 else ""
            raise NotFoundError("; ".join(f"no clip {c!r} in the store{names.closest(c, position)}" for c in unknown[:5]) + more)
        removed = store.removed
        now = [c for c in wanted if not removed[position[c]]]
        if now:
            table = table.copy()
            table.loc[[position[c] for c in now], "removed"] = True
            _rewrite(store, table, now, "remove-clips")
    return now


def _rewrite(store: Store, table: pd.DataFrame, edited: list[str], command: str) -> None:
    """Write ``table`` (same rows, ``edited`` clips changed) under every array's writer lock, the
    edited clips' marks and failures cleared first."""
    with WriterLock(store.side, store.array_paths(), command):
        forget_clips(store, edited)
        store.write_clips(table)


def forget_clips(store: Store, clip_ids: list[str]) -> None:
    """Clear the done-marks of ``clip_ids`` in every array's ledger and drop their failures (call
    holding every array's writer lock and the clips lock)."""
    for path in store.array_paths():
        ledger = store.ledger(path)
        for clip_id in clip_ids:
            ledger.unmark(clip_id)
        ledger.flush(store.side)
    failures = store.failures_record()
    failures.forget(clip_ids)
    failures.flush()
