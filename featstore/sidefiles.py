"""Files that live inside a store beside its Zarr arrays: tables, ledgers, locks, models.

They sit under ``<store>/_featstore/`` and are read and written through fsspec, so the same code
serves a local directory, ``memory://`` and ``s3://``. Writes are atomic: on a local disk a temp file
in the same directory is renamed over the target (``os.replace``); on object stores a PUT is atomic.
"""

from __future__ import annotations

import os
import tempfile

import fsspec
from fsspec.implementations.local import LocalFileSystem

SIDE_DIR = "_featstore"


class SideFiles:
    """Atomic byte files under ``<root>/_featstore`` of a store at ``url``."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = root.rstrip("/") + "/" + SIDE_DIR
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            return self.fs.cat_file(self.path(name))
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """Replace the file's content atomically: a reader sees the old or the new bytes, never a mix."""
        target = self.path(name)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".partial")
        try:
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
        if self.exists(name):
            self.fs.rm(self.path(name))

    def listdir(self, name: str) -> list[str]:
        """Names of the files directly under ``name`` (empty when the folder does not exist)."""
        try:
            entries = self.fs.ls(self.path(name), detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(str(e).rstrip("/")) for e in entries)
