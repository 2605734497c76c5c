"""Stable hashes: of parameters (JSON-canonical), of source files, and library versions.

A fingerprint is a short hex digest (BLAKE2b, 16 bytes). Parameters are hashed from their canonical
JSON (sorted keys, no whitespace), so the same parameters give the same fingerprint on any machine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from typing import Any

#: Bytes read from each of the start, middle and end of a source file by :func:`file_fingerprint`.
SAMPLE_BYTES = 1 << 20


def stable_hash(obj: Any) -> str:
    """Fingerprint of any JSON-serialisable object (dict key order does not matter).

    >>> stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    True
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def bytes_digest(data: bytes) -> str:
    """BLAKE2b (16 bytes, hex) of ``data``: the fingerprint of a registered ``.keras`` file, the
    digest of a weights file."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """:func:`bytes_digest` of a file's whole content, read in 1 MiB blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_fingerprint(stage: str, params: dict[str, Any], per_clip_shape: tuple[int, ...] | list[int], dtype: str, code_version: int = 1) -> str:
    """Fingerprint of a per-clip array: its stage, parameters, shape, dtype and the stage's code version.

    Code version 1 is hashed without it, as arrays were before code versions existed, so that those
    arrays keep their fingerprints (:func:`featstore.upgrade.code_version_of`); any later version is
    part of the hash.
    """
    record: dict[str, Any] = {"stage": stage, "params": params, "per_clip_shape": list(per_clip_shape), "dtype": dtype}
    if code_version != 1:
        record["code_version"] = int(code_version)
    return stable_hash(record)


def file_fingerprint(path: str | os.PathLike) -> str:
    """Content fingerprint of a source file: its size and up to three 1 MiB samples of its bytes.

    Files up to 3 MiB are hashed whole. Larger ones are hashed from their first, middle and last MiB
    plus the size, so that ingesting 12k videos does not read 100+ GB; any edit that changes the
    length or touches a sampled region changes the fingerprint (re-encodes always do).
    """
    size = os.path.getsize(path)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 3 * SAMPLE_BYTES:
            h.update(f.read())
        else:
            for offset in (0, size // 2 - SAMPLE_BYTES // 2, size - SAMPLE_BYTES):
                f.seek(offset)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"missing"`` for one not installed)."""
    return {name: _version(name) for name in names}


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str:
    """One distribution's version, looked up once per process (a lookup scans site-packages, ~1 ms)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
