"""The packed read cache of small per-clip arrays (embeddings, predictions): one ``.npz`` per array.

Phase II reads every embedding of a store many times (each fusion method, each ensemble, each
report). Read from the arrays, that costs a chunk decode per clip and, on an object store, a
request per clip (one object per clip) or per run of neighbouring clips of a shard; this module keeps each array's segment means packed in one side file,
``_featstore/packed/{path}.npz``, keyed so that it can never be stale. It owns that file: it is the
only module that writes or reads it.
"""

from __future__ import annotations

import io
import json

import numpy as np

from featstore.chunks import ClipReader
from featstore.fingerprint import bytes_digest, stable_hash
from featstore.ledger import ledger_name
from featstore.store import Store


def packed_segment_embeddings(store: Store, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(values (clip, segment, dim) float32, rows (clip,) int64) of embedding or prediction array ``path``.

    Only clips done in ``path`` are returned (``rows`` are their rows in the clips table); a visual
    model's frames of each segment are averaged. Reading an embedding array costs one store request
    per clip (one chunk per clip); so the result is also kept
    packed, as one ``.npz`` side file per array (``_featstore/packed/...``), written here when it is
    missing or stale (a read through the cache), keyed by the array's
    fingerprint and the bytes of its ledger (every done clip and its checksum). A re-embedded clip,
    a new clip or a new model changes the key, and the packed copy is rebuilt on the next read: it
    can never be stale.
    """
    prov = store.provenance(path)
    # the key: the array's fingerprint and the ledger file's bytes (every done clip and its checksum);
    # hashing the bytes is ~50x cheaper than parsing them, and any change of a mark changes them
    ledger_bytes = store.side.read(ledger_name(path)) or b""
    key = stable_hash({"fingerprint": prov["fingerprint"], "ledger": bytes_digest(ledger_bytes)})
    name = "packed/" + path.replace("/", "--") + ".npz"
    packed = _read_packed(store, name, key)
    if packed is not None:
        return packed
    doc = json.loads(ledger_bytes) if ledger_bytes else {}
    done = doc.get("clips", {}) if doc.get("fingerprint") == prov["fingerprint"] else {}  # the bytes hashed
    rows = np.flatnonzero(store.clips["clip_id"].isin(list(done)).to_numpy())
    # the done clips only, through the read path: on an object store one request per run of
    # neighbouring clips of a shard (zarr's own read sends one per inner chunk)
    values = np.asarray(ClipReader(store.array(path)).read_clips(rows), dtype=np.float32)  # (clip, unit, dim)
    per_segment_units = prov.frames_per_segment  # units per grid segment
    units, dim = store.array(path).shape[1:]
    segments = np.ascontiguousarray(values.reshape(len(rows), units // per_segment_units, per_segment_units, dim).mean(axis=2))
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), values=segments, rows=rows)
    store.side.write(name, buffer.getvalue())
    return segments, rows


def _read_packed(store: Store, name: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    if store.side.is_local:
        source = store.side.path(name) if store.side.exists(name) else None
    else:
        raw = store.side.read(name)
        source = io.BytesIO(raw) if raw is not None else None
    if source is None:
        return None
    with np.load(source) as packed:
        if str(packed["key"]) != key:
            return None
        return packed["values"], packed["rows"]
