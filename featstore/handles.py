"""Zarr handles on a store: a store URL resolved to a zarr store, and writing handles on its arrays.

Every node featstore makes (the root group, each per-clip array) keeps featstore's own metadata
under one attribute key, :data:`ATTRS_KEY`. Every array handle featstore writes through carries
:data:`WRITE_CONFIG` (:func:`open_array` on the workers, :meth:`featstore.store.Store.array` on the
driver).
"""

from __future__ import annotations

import os
from typing import Any

import zarr
import zarr.storage

#: The attribute under which a Zarr node keeps featstore's metadata: the store's settings on the
#: root group, the provenance on a per-clip array.
ATTRS_KEY = "featstore"
#: Runtime configuration of every array handle featstore writes through. ``write_empty_chunks`` is
#: not stored in the array's metadata, so each handle must carry it: with zarr's default a
#: clip whose values all equal the fill value (a black video's frames) would leave no chunk behind,
#: and the check itself costs ~18 ms per 3 MB chunk, as much as compressing it.
WRITE_CONFIG = {"write_empty_chunks": True}


def is_url(path_or_url: str | os.PathLike) -> bool:
    """Whether ``path_or_url`` is a URL (``scheme://...``) rather than a local path."""
    return "://" in str(path_or_url)


def normalise_url(path_or_url: str | os.PathLike) -> str:
    """Absolute local path, or the URL unchanged."""
    text = str(path_or_url)
    return text.rstrip("/") if is_url(text) else os.path.abspath(text)


def zarr_store(url: str, storage_options: dict[str, Any] | None = None) -> zarr.abc.store.Store:
    """The one resolver from a store URL to a zarr store: a local directory (a path or
    ``file://``) is a ``LocalStore``, anything else an ``FsspecStore``, which takes
    ``storage_options`` (credentials, ``endpoint_url``...) as fsspec does."""
    if is_url(url) and not url.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(url, storage_options=storage_options or None)
    return zarr.storage.LocalStore(url.removeprefix("file://"))


def open_array(url: str, path: str, storage_options: dict[str, Any] | None = None) -> zarr.Array:
    """A writing handle on array ``path`` of the store at ``url``, with :data:`WRITE_CONFIG`.

    The only way featstore opens an array for writing (the driver through
    :meth:`featstore.store.Store.array`, the workers through this function): every handle carries
    ``write_empty_chunks``.
    """
    return zarr.open_array(zarr_store(url, storage_options), path=path, mode="r+").with_config(WRITE_CONFIG)
