"""featstore: a feature store and embedding cache for audio-visual scene classification.

The store library: open or create a store, read its clips table, segment grid and arrays. Importing
featstore imports none of its dependencies: ``Store``, ``init_store``, ``open_store`` and ``System``
load zarr and pandas on first use (PEP 562), so ``featstore --version`` and ``--help`` answer at
Python's start-up cost, and TensorFlow, librosa and dask load only where a stage needs them.

>>> import featstore
>>> featstore.CLASSES[:3]
('airport', 'bus', 'metro')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from featstore.constants import CLASSES, META_CLASSES
from featstore.errors import ClipConflict, ConfigError, FeatstoreError, IngestError, LockHeld, MediaError, NotFoundError, ParamsMismatch, StoreError

if TYPE_CHECKING:
    from featstore.store import Store, init_store, open_store
    from featstore.system import System

#: Public names whose modules import zarr and pandas: loaded on first access.
_LAZY = {"Store": "featstore.store", "init_store": "featstore.store", "open_store": "featstore.store", "System": "featstore.system"}

__version__ = "0.1.0"
__all__ = [
    "CLASSES",
    "META_CLASSES",
    "ClipConflict",
    "ConfigError",
    "FeatstoreError",
    "IngestError",
    "LockHeld",
    "MediaError",
    "NotFoundError",
    "ParamsMismatch",
    "Store",
    "StoreError",
    "System",
    "init_store",
    "open_store",
]


def __getattr__(name: str):
    """Load ``Store``, ``init_store``, ``open_store`` and ``System`` from their modules on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
