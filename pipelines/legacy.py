"""The configs of arrays made before stage configs were recorded (featstore 0.1), rebuilt from the
parameters their provenance holds.

An array's provenance records the config that made it (:meth:`StageConfig.to_dict
<featstore.pipelines.config.StageConfig.to_dict>`); arrays written before that record only their
fingerprinted parameters. :func:`legacy_config` rebuilds their config, so that ``verify --repair``,
``predict`` and ``export-system`` handle them like any other array
(:func:`featstore.pipelines.stages.config_for_array`). Older layouts of the store itself are read in
:mod:`featstore.upgrade`; these live here because only the pipelines know the stage configs, and
the library does not import the pipelines.
"""

from __future__ import annotations

from collections.abc import Callable

from featstore.errors import StoreError
from featstore.pipelines.config import StageConfig
from featstore.pipelines.embed import EmbedConfig
from featstore.pipelines.extract_audio import AudioConfig
from featstore.pipelines.extract_frames import FramesConfig
from featstore.provenance import Provenance


def _audio(prov: Provenance) -> AudioConfig:
    """One feature's array; 0.1 recorded one parameter set for every feature (``params["audio"]``)."""
    p, a = prov.params, prov.params["audio"]
    return AudioConfig(features=(p["feature"],), sr=a["sr"], n_bins=a["n_bins"], win_ms=a["win_ms"], hop_ms=a["hop_ms"], dtype=p["dtype"],
                       store_deltas=p["store_deltas"], name=prov.group)


def _frames(prov: Provenance) -> FramesConfig:
    p = prov.params
    return FramesConfig(fps=p["fps"], size=p["size"], resize=p["resize"], name=prov.group)


def _embed(prov: Provenance) -> EmbedConfig:
    """One layer's embeddings, or (``layer`` softmax) the predictions alone."""
    layer = prov.params["layer"]
    return EmbedConfig(model=prov.params["model"], layers=() if layer == "softmax" else (layer,))


#: Stage name -> the rebuild of its 0.1 arrays' config.
_REBUILDS: dict[str, Callable[[Provenance], StageConfig]] = {
    AudioConfig.stage: _audio, FramesConfig.stage: _frames, EmbedConfig.stage: _embed,
}


def legacy_config(prov: Provenance) -> StageConfig:
    """The config that makes exactly the array ``prov`` describes, for an array whose provenance
    records no config; :class:`~featstore.errors.StoreError` for a stage with no such arrays."""
    rebuild = _REBUILDS.get(prov.stage)
    if rebuild is None:
        raise StoreError(f"{prov.path}: made by {prov.stage!r} before stage configs were recorded; recompute it")
    return rebuild(prov)
