"""Files that live inside a store beside its Zarr arrays: tables, ledgers, locks, models.

They sit under ``<store>/_featstore/`` and are read and written through fsspec, so the same code
serves a local directory, ``memory://`` and ``s3://``. Writes are atomic: on a local disk a temp file
in the same directory is renamed over the target (``os.replace``); on object stores a PUT is atomic.
A local file gets the mode the process's umask gives a new file (as Zarr's chunks do), so a store
shared by a group is readable by its members.

A file that exists but cannot be parsed (truncated, overwritten) raises
:class:`~featstore.errors.DamagedFile` naming the file and what is wrong; nothing is rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
from typing import Any

import fsspec
import lazy_loader
from fsspec.implementations.local import LocalFileSystem

from featstore.coords import is_coordinate
from featstore.errors import DamagedFile

#: pandas loads on first use (about 0.25 s): `featstore init` and the stores' metadata do not need it.
pd = lazy_loader.load("pandas")

SIDE_DIR = "_featstore"
#: Side files that get a checksum file beside them (``NAME.b2sum``, BLAKE2b of the bytes), checked by
#: ``verify``, by :meth:`SideFiles.read_verified` and before ``export-system`` copies a file: models,
#: the model registry, runs (records and heads) and ledgers. The clips table's checksum lives in the
#: store's root metadata instead (it is the store's identity).
CHECKSUMMED = ("models/", "models.json", "runs/", "ledger/")
SUM_SUFFIX = ".b2sum"


def checksum(data: bytes) -> str:
    """BLAKE2b (16 bytes, hex) of ``data``: the checksum of a side file."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@functools.cache
def new_file_mode() -> int:
    """Mode ``open()`` gives a new file under this process's umask (0o644 under umask 022).

    Linux reports the umask in ``/proc/self/status``; elsewhere it is read by setting it, once.
    """
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def parse_json(data: bytes, where: str) -> Any:
    """``data`` parsed as JSON; :class:`DamagedFile` naming ``where`` when it is not."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedFile(f"{where}: damaged, not valid JSON ({exc}); restore or delete it") from None


class SideFiles:
    """Atomic byte files under ``<root>/_featstore`` of a store at ``url``."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.store_root = root.rstrip("/")
        self.root = self.store_root + "/" + SIDE_DIR
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            if self.is_local:
                return self.fs.cat_file(self.path(name))
            # ranged from byte 0: for a whole-object read s3fs sends a HEAD first (to learn the size)
            try:
                return self.fs.cat_file(self.path(name), start=0)
            except FileNotFoundError:
                raise
            except OSError:  # an empty object has no byte 0 to read from
                return self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            return None

    def read_json(self, name: str) -> Any:
        """The file parsed as JSON, or None when it does not exist; :class:`DamagedFile` when unparsable."""
        raw = self.read(name)
        return None if raw is None else parse_json(raw, self.path(name))

    def read_parquet(self, name: str, raw: bytes | None = None) -> pd.DataFrame | None:
        """The file read as a Parquet table, or None when it does not exist; :class:`DamagedFile` when unreadable.

        ``raw``: the file's bytes when the caller has read them already.
        """
        raw = self.read(name) if raw is None else raw
        if raw is None:
            return None
        try:
            return pd.read_parquet(io.BytesIO(raw))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            reason = str(exc).replace("Could not open Parquet input source '<Buffer>': ", "")  # names no file
            raise DamagedFile(f"{self.path(name)}: damaged, not a readable Parquet table ({reason}); restore or delete it") from None

    def read_verified(self, name: str) -> bytes | None:
        """The file's bytes (None when absent), checked against its checksum file;
        :class:`DamagedFile` when they differ. A file written before checksums has none and is not checked."""
        raw = self.read(name)
        problem = None if raw is None else self.checksum_problem(name, raw)
        if problem:
            raise DamagedFile(problem)
        return raw

    def checksum_problem(self, name: str, raw: bytes) -> str | None:
        """Why ``raw`` (the bytes of ``name``) does not match its checksum file, or None when it does or has none."""
        recorded = self.read(name + SUM_SUFFIX)
        if recorded is None or recorded.decode(errors="replace").strip() == checksum(raw):
            return None
        return f"{self.path(name)}: damaged, its bytes differ from the checksum recorded when it was written; restore it or make it again"

    def write(self, name: str, data: bytes) -> None:
        """Replace the file's content atomically: a reader sees the old or the new bytes, never a mix.

        A file under :data:`CHECKSUMMED` gets its checksum file first (a crash between the two writes
        leaves a mismatch that ``verify`` reports, never a damaged file taken as sound)."""
        if name.startswith(CHECKSUMMED) and not name.endswith(SUM_SUFFIX):
            self._write(name + SUM_SUFFIX, checksum(data).encode())
        self._write(name, data)

    def _write(self, name: str, data: bytes) -> None:
        target = self.path(name)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".partial")
        try:
            os.fchmod(fd, new_file_mode())  # mkstemp makes 0600
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def delete(self, name: str) -> None:
        for each in (name, name + SUM_SUFFIX):
            if self.exists(each):
                self.fs.rm(self.path(each))

    def listdir(self, name: str) -> list[str]:
        """Names of the files directly under ``name`` (empty when the folder does not exist)."""
        try:
            entries = self.fs.ls(self.path(name), detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(str(e).rstrip("/")) for e in entries)

    def scan_zarr_metadata(self) -> tuple[list[str], list[str]]:
        """(paths of the per-clip arrays whose ``zarr.json`` parses, one message per ``zarr.json`` that
        does not; coordinate arrays, :mod:`featstore.coords`, are checked but not listed).

        zarr itself reports a truncated ``zarr.json`` as a bare JSON error naming no file; this
        names it. Lists every file of the store once, so call it when something went wrong, or
        from ``verify``. Only reads.
        """
        arrays, damaged = [], []
        for path in sorted(self.fs.find(self.store_root)):
            if os.path.basename(path) != "zarr.json" or path.startswith(self.root + "/"):
                continue
            try:
                doc = parse_json(self.fs.cat_file(path), path)
            except DamagedFile as exc:
                damaged.append(str(exc))
                continue
            is_array = isinstance(doc, dict) and doc.get("node_type") == "array"
            required = ("zarr_format", "node_type") + (("shape", "data_type", "chunk_grid", "codecs") if is_array else ())
            lacking = [k for k in required if not isinstance(doc, dict) or k not in doc]
            if lacking:
                damaged.append(f"{path}: damaged, not Zarr v3 metadata (no {', '.join(lacking)})")
            elif is_array and not is_coordinate(doc.get("attributes", {})):
                arrays.append(os.path.dirname(path)[len(self.store_root) + 1 :])
        return sorted(arrays), damaged
