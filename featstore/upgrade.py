"""The one place where featstore reads older layouts of a store.

A store records ``format_version`` in its root metadata. :data:`FORMAT_VERSION` is the version this
featstore writes; a store of a newer version is refused on open (:func:`check_format_version`), one
of an older version is read through the functions below, each of which names the layout it reads
and what it does with it. Nothing here rewrites a store behind the user's back: an older record is
read as the current one means, and the current layout is written the next time that record is
written anyway.

Store layout upgrades (format version 1, before the clips table was checksummed)
    :func:`clips_checksum_recorded`: a store made before the clips table's checksum was recorded in
    the root metadata has none; its table is accepted as it is, and its checksum recorded at the next
    change of the table.

Clips tables made before clips could be removed
    A table without the ``removed`` column reads as no clip removed
    (:func:`featstore.clips.normalise_clips` gives a missing column its default); the column is
    written with the next change of the table.

Provenance of arrays made before stage code versions were recorded
    :func:`code_version_of`: no ``code_version`` in an array's provenance means version 1, the code
    as it was when code versions were introduced; version 1 also fingerprints as before
    (:func:`featstore.fingerprint.array_fingerprint`), so those arrays keep their fingerprints.

The failures record of stores made before one file per array
    :func:`legacy_failures`: a store's single ``failures.parquet`` is read as the first content of
    each per-array file (:class:`featstore.ledger.Failures`); it is never written again.

Arrays made before their axes were named for xarray
    :func:`renamed_axes`: an array made with the older dimension names (an audio feature's
    ``bin`` and ``frame`` shared by every feature of the group, an embedding's axis named like the
    array, ``rgb`` for the frames' colour axis) gets the current ones when its stage next reuses it,
    in its ``zarr.json`` and provenance, so that its group's coordinates apply to it.

Side files made before they were checksummed
    A model, run or ledger written without its ``.b2sum`` beside it is read unchecked
    (:meth:`featstore.sidefiles.SideFiles.read_verified`).
"""

from __future__ import annotations

from typing import Any

from featstore.errors import StoreError

#: The store layout this featstore writes. Version 2: the clips table's checksum is recorded in the
#: root metadata (``clips_checksum``), side files have checksums beside them, arrays record their
#: stage's code version.
FORMAT_VERSION = 2


def check_format_version(settings: dict[str, Any], url: str) -> int:
    """The store's format version; :class:`StoreError` for one newer than this featstore reads."""
    version = settings.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"{url}: store format version {version!r} is newer than this featstore reads ({FORMAT_VERSION}); "
            "upgrade featstore (pip install -U featstore) to open it"
        )
    return version


def clips_checksum_recorded(settings: dict[str, Any]) -> bool:
    """Whether the root metadata records the clips table's checksum (format 1 stores may not)."""
    return "clips_checksum" in settings


def code_version_of(raw_provenance: dict[str, Any]) -> int:
    """The stage code version that made an array: 1 when its provenance predates code versions."""
    return int(raw_provenance.get("code_version", 1))


def legacy_failures(side: Any, only: set[str] | None) -> dict[str, Any]:
    """``{scope: rows}`` of the single ``failures.parquet`` of an older store, split by the scope
    each row lives in now (only the scopes in ``only``, when given); empty when there is none."""
    from featstore.ledger import LEGACY_FAILURES_NAME, failures_scope

    legacy = side.read_parquet(LEGACY_FAILURES_NAME)
    if legacy is None or legacy.empty:
        return {}
    legacy = legacy.assign(array=legacy["array"].astype(str).str.split(",")).explode("array", ignore_index=True)
    scopes = [failures_scope(stage, array) for stage, array in zip(legacy["stage"], legacy["array"])]
    return {scope: rows.reset_index(drop=True) for scope, rows in legacy.groupby(scopes, sort=True) if only is None or scope in only}


def renamed_axes(side: Any, path: str, names: tuple[str, ...], dims: tuple[str, ...]) -> bool:
    """Give array ``path`` the dimension names ``names`` (provenance ``dims``) when its
    ``zarr.json`` records others; returns whether it did (reopen the array then). The Zarr v3
    metadata document is edited as the format defines it, nothing else in it changes."""
    import json

    where = f"{side.store_root}/{path}/zarr.json"
    doc = json.loads(side.fs.cat_file(where))
    if tuple(doc.get("dimension_names") or ()) == tuple(names):
        return False
    doc["dimension_names"] = list(names)
    doc.setdefault("attributes", {}).setdefault("featstore", {})["dims"] = list(dims)
    side.fs.pipe_file(where, json.dumps(doc, indent=2).encode())
    return True
