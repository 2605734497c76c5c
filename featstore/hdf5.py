"""HDF5 interchange: export arrays and the clips table to one .h5 file, import such a file back.

Layout of an exported file (same names as in the store)::

    /clips/<column>        one dataset per clips-table column (fixed-length UTF-8 bytes, float64, int64)
    /<array path>          e.g. /audio/mel, chunked one clip per chunk, gzip-compressed (from a
                           sharded array or not alike)
        attrs["featstore"]         the array's provenance, as JSON text
        attrs["featstore_done"]    JSON list of the clip_ids done in the store
        attrs["dims"]              dimension names

Arrays are copied clip by clip through numpy (a zarr array is never handed to h5py),
so memory stays at one clip. Importing registers each dataset as an array made by the
``import-h5`` stage: its provenance is marked external and keeps the original one, and the clips
listed as done are marked done. This is how features made by other tools enter a store: write the
same layout. No pickle is involved: attributes are JSON text, tables plain typed columns.

An imported file is untrusted input: its clips' media paths must lie inside the store's dataset
root and its clip ids and dataset names must be valid (:mod:`featstore.names`), all checked before
anything is written, so a refused file leaves the store as it was.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

from featstore import names
from featstore.chunks import ClipReader
from featstore.clips import CLIP_COLUMNS, checked_clips
from featstore.errors import ConfigError, IngestError, UnsafePath
from featstore.shards import write_clips
from featstore.store import Store

IMPORT_STAGE = "import-h5"


def export_h5(store: Store, path: str, arrays: Iterable[str] | None = None) -> list[str]:
    """Write ``arrays`` (default: all) and the clips table of ``store`` to ``path``; return the arrays."""
    import h5py

    chosen = list(arrays) if arrays else store.array_paths()
    clips = store.clips
    with h5py.File(path, "w") as f:
        group = f.create_group("clips")
        for col, dtype in CLIP_COLUMNS.items():
            values = clips[col].to_numpy()
            if dtype == "string":
                # fixed-length UTF-8 bytes (no object arrays); readers decode them
                group.create_dataset(col, data=np.array([str(v).encode("utf-8") for v in values], dtype=bytes))
            else:
                group.create_dataset(col, data=values.astype(dtype))
        for name in chosen:
            array = store.array(name)
            prov = store.provenance(name)
            ds = f.create_dataset(
                name, shape=array.shape, dtype=array.dtype, chunks=(1, *array.shape[1:]),
                compression="gzip", compression_opts=4, fillvalue=np.nan if array.dtype.kind == "f" else 0,
            )
            reader = ClipReader(array)
            for i in range(array.shape[0]):
                ds[i] = reader.read(i)
            ds.attrs["featstore"] = json.dumps(dict(prov))
            ds.attrs["featstore_done"] = json.dumps(sorted(store.ledger(name).entries))
            ds.attrs["dims"] = json.dumps(prov.get("dims", []))
    return chosen


#: Largest clip of an imported dataset, in bytes: a clip is read whole into memory.
MAX_CLIP_BYTES = 512 * 2**20


def _json_attr(path: str, ds, key: str, default: str):
    """Attribute ``key`` of dataset ``ds`` parsed as JSON, or :class:`IngestError` naming it."""
    try:
        return json.loads(ds.attrs.get(key, default))
    except (TypeError, ValueError) as exc:
        raise IngestError(f"{path}: dataset {ds.name} attribute {key!r} is not valid JSON ({exc})") from None


def _checked_dataset(path: str, ds, file_ids: list[str]) -> dict:
    """What importing ``ds`` needs (original provenance, done clip_ids, dims), every part checked:
    a numeric dataset with a row per clip of the file, clips of bounded size, JSON attributes that
    parse, done clips that are in the file."""
    if ds.ndim < 1 or ds.dtype.kind not in "biuf":
        raise IngestError(f"{path}: dataset {ds.name} is not a numeric array with one row per clip (dtype {ds.dtype}, shape {ds.shape})")
    if ds.shape[0] < len(file_ids):
        raise IngestError(f"{path}: dataset {ds.name} has {ds.shape[0]} rows for the file's {len(file_ids)} clips")
    clip_bytes = int(np.prod(ds.shape[1:], dtype=np.float64) * ds.dtype.itemsize)
    if clip_bytes > MAX_CLIP_BYTES:
        raise IngestError(f"{path}: dataset {ds.name} has clips of {clip_bytes / 2**20:.0f} MiB (shape {ds.shape}); at most {MAX_CLIP_BYTES // 2**20} MiB per clip can be imported")
    original = _json_attr(path, ds, "featstore", "{}")
    done = _json_attr(path, ds, "featstore_done", "null")
    dims = _json_attr(path, ds, "dims", "[]")
    if not isinstance(original, dict) or not (done is None or isinstance(done, list)) or not isinstance(dims, list):
        raise IngestError(f"{path}: dataset {ds.name}: attributes featstore, featstore_done and dims must be a JSON object, list and list")
    done = file_ids if done is None else done
    unknown = sorted(set(map(str, done)) - set(file_ids))
    if unknown:
        raise IngestError(f"{path}: dataset {ds.name} marks clips done that the file's clips table lacks: {', '.join(unknown[:5])}")
    dims = [str(d) for d in dims[1:]] or [f"dim{k}" for k in range(1, ds.ndim)]
    return {"original": original, "done": set(map(str, done)), "dims": tuple(dims)}


def import_h5(store: Store, path: str) -> list[str]:
    """Register the arrays of an exported (or externally written) HDF5 file in ``store``.

    Clips of the file that the store lacks are appended first; rows are matched by clip_id. Each
    dataset becomes an array made by ``import-h5`` whose parameters record the source file and the
    original provenance. Returns the imported array paths. The whole file is checked (clips table,
    dataset names, shapes, sizes, attributes) before the store changes: a refused file leaves the
    store as it was.
    """
    import h5py

    if not os.path.isfile(path):
        raise IngestError(f"{path}: no such file")
    imported = []
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise IngestError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if not isinstance(f.get("clips"), h5py.Group):
            raise IngestError(f"{path}: no /clips group (the clips table)")
        try:
            table = pd.DataFrame({col: [v.decode() if isinstance(v, bytes) else v for v in f["clips"][col][()]] for col in f["clips"]})
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise IngestError(f"{path}: the /clips table cannot be read ({exc})") from None
        datasets: list[str] = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) and not name.startswith("clips/") else None)
        try:  # everything checked before the store changes
            checked_clips(table, store.dataset_root)
            for name in datasets:
                names.array_path(name, f"{path}: dataset")
        except (ConfigError, UnsafePath) as exc:
            raise IngestError(f"{path}: {exc}") from None
        file_ids = [str(c) for c in table["clip_id"]]
        checked = {name: _checked_dataset(path, f[name], file_ids) for name in datasets}
        params_of = {name: {"source_file": os.path.basename(path), "external": True, "original_provenance": checked[name]["original"]}
                     for name in datasets}
        for name in datasets:  # an array the store already has, made otherwise: refused before any change
            if store.has_array(name):
                prov, ds, existing = store.provenance(name), f[name], store.array(name)
                if (prov.stage, prov.params, existing.shape[1:], str(existing.dtype)) != (IMPORT_STAGE, params_of[name], ds.shape[1:], str(ds.dtype)):
                    raise IngestError(f"{path}: dataset {name!r} is an array the store already has, made by {prov.stage or 'another source'} "
                                      "or from another file: import into another store, or rename the dataset in the file")
        store.add_clips(table)
        row_of = {cid: i for i, cid in enumerate(store.clips["clip_id"])}
        for name in datasets:
            ds, spec, params = f[name], checked[name], params_of[name]
            array = store.create_array(
                name, per_clip_shape=tuple(ds.shape[1:]), dtype=str(ds.dtype), dims=spec["dims"], stage=IMPORT_STAGE, params=params
            )
            ledger = store.ledger(name)
            rows, values = [], []
            for k, clip_id in enumerate(file_ids):
                if clip_id not in spec["done"]:
                    continue
                value = np.ascontiguousarray(ds[k])
                rows.append(row_of[clip_id])
                values.append(value)
                ledger.mark_done(clip_id, "external", zlib.crc32(value.tobytes()))
            write_clips(array, rows, values)  # whole shards, each once
            ledger.flush(store.side)
            imported.append(name)
    return imported
