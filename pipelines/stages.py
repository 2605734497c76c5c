"""The registry of batch stages: ``STAGES = {name: config class}``, and rebuilding any array's stage.

A stage is added here once; the CLI, ``verify --repair``, ``predict`` and system export find it
through this registry. To add a stage: write its module (a :class:`~featstore.pipelines.config.StageConfig`
subclass whose ``build`` returns the runner's stage, and a module-level per-clip function), then
list its config class below.
"""

from __future__ import annotations

from featstore.errors import StoreError
from featstore.pipelines.config import StageConfig
from featstore.pipelines.embed import EmbedConfig
from featstore.pipelines.extract_audio import AudioConfig
from featstore.pipelines.extract_frames import FramesConfig
from featstore.pipelines.legacy import legacy_config
from featstore.store import Store
from featstore.system import System

#: Stage name (as users type it and provenance records it) -> its config class.
STAGES: dict[str, type[StageConfig]] = {c.stage: c for c in (AudioConfig, FramesConfig, EmbedConfig)}


def config_for_array(store: Store, path: str) -> StageConfig:
    """The config of the stage that made array ``path``, rebuilt from its provenance (for an array
    made before configs were recorded, by :func:`~featstore.pipelines.legacy.legacy_config`).

    Raises :class:`~featstore.errors.StoreError` for an array no batch stage made (an HDF5 import,
    a fusion run's predictions: those are rebuilt by their own commands).
    """
    prov = store.provenance(path)
    config_class = STAGES.get(prov.stage)
    if config_class is None:
        raise StoreError(f"{path}: made by {prov.stage!r}, which is not a batch stage featstore can re-run; re-import or recompute it")
    return config_class.from_dict(prov.config) if prov.config is not None else legacy_config(prov)


def system_from_run(store: Store, run: str) -> System:
    """:meth:`System.from_run <featstore.system.System.from_run>` with this registry's
    :func:`config_for_array`: the system run ``run`` of ``store`` applies, ready to export."""
    return System.from_run(store, run, config_for_array)
