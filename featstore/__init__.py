"""featstore: a feature store and embedding cache for audio-visual scene classification.

The store library: open or create a store, read its clips table, segment grid and arrays. Importing
featstore does not import TensorFlow (nor librosa or dask: those load where a stage needs them).

>>> import featstore
>>> featstore.CLASSES[:3]
('airport', 'bus', 'metro')
"""

from featstore.constants import CLASSES, META_CLASSES
from featstore.errors import ClipConflict, ConfigError, FeatstoreError, IngestError, LockHeld, MediaError, NotFoundError, ParamsMismatch, StoreError
from featstore.store import Store, init_store, open_store
from featstore.system import System

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
