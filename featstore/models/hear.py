"""PyTorch audio embedding models on raw audio: any HEAR-API package, or a plain ``torch.nn.Module``
factory (imports torch, and the model's package, only when a model is loaded).

Two spellings, as ``embed --model`` takes them:

- ``hear:MODULE``: an installed module implementing the HEAR 2021 API: ``load_model(path)``,
  ``get_scene_embeddings(audio, model)`` (sound, dim), ``get_timestamp_embeddings(audio, model)``
  ((sound, timestamp, dim), timestamps) and ``model.sample_rate``. Its layers are ``scene`` (the
  scene embedding of each segment) and ``timestamp`` (the timestamp embeddings of each segment,
  averaged over the segment's timestamps).
- ``torch:PKG.MODULE:FACTORY``: ``FACTORY()`` returns a ``torch.nn.Module`` taking (batch, samples)
  float32 mono audio at its ``sample_rate`` attribute (:data:`DEFAULT_SAMPLE_RATE` without one);
  a weights file is a ``state_dict`` (``torch.save``), loaded with ``weights_only=True``. A tensor
  output is the layer ``embedding``; a dict output (PANNs' ``{"embedding": ..., "clipwise_output":
  ...}``) gives one layer per tensor entry. An output of more than two axes (batch, channel, ...) is
  averaged over the axes after the channel (PyTorch's channels-first convention).

Either way :func:`load_waveform_model` gives a :class:`WaveformEmbedder`: (sound, samples) float32
at ``sample_rate`` -> ``{layer: (sound, dim) float32}``, one call for a batch of sounds.

The fingerprint (:func:`model_fingerprint`) covers the spelling, the version of the package that
provides the module (its distribution's version, else ``__version__``, else the module file's
bytes) and the weights file's bytes: a new release or new weights make a new model. An exported
system records it with the version, and :func:`check_installed` refuses a system whose installed
package gives another fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from featstore.audio import DEFAULT_SR
from featstore.errors import ConfigError
from featstore.fingerprint import file_digest

HEAR_PREFIX = "hear:"
TORCH_PREFIX = "torch:"
PREFIXES = (HEAR_PREFIX, TORCH_PREFIX)
#: The registry's (and a system manifest's) ``kind`` of these models.
KINDS = ("hear", "torch")
#: What such a model's ``input`` names: the clips' source audio files, not an array.
SOURCE_AUDIO = "source audio"
#: A torch module's input rate when it has no ``sample_rate`` attribute (featstore's analysis rate).
DEFAULT_SAMPLE_RATE = DEFAULT_SR


@dataclass
class WaveformEmbedder:
    """A loaded model: ``embed(audio)`` maps (sound, samples) float32 at ``sample_rate`` Hz to
    ``{layer: (sound, dim) float32}`` for every layer in ``layers``."""

    sample_rate: int
    layers: tuple[str, ...]
    embed: Callable[[np.ndarray], dict[str, np.ndarray]]


def split_spec(model: str) -> tuple[str, str]:
    """``"hear:MODULE"`` -> ("hear", "MODULE"); ``"torch:PKG.MODULE:FACTORY"`` -> ("torch", "PKG.MODULE:FACTORY")."""
    kind, _, spec = model.partition(":")
    if kind + ":" not in PREFIXES or not spec:
        raise ConfigError(f"--model {model!r}: expected hear:MODULE or torch:PKG.MODULE:FACTORY")
    if kind == "torch" and spec.count(":") != 1:
        raise ConfigError(f"--model {model!r}: a torch model is torch:PKG.MODULE:FACTORY (the module, a colon, the factory's name)")
    return kind, spec


def model_name(kind: str, spec: str) -> str:
    """The name the model is registered and its arrays are written under: the module's dotted name
    (``hear_tiny``), for a factory followed by its name (``mypkg.nets.cnn14``)."""
    return spec.replace(":", ".")


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module!r} ({exc}); install the package that provides it") from None


def module_of(spec: str) -> str:
    """The module a spec imports: ``"MODULE"`` -> ``"MODULE"``, ``"PKG.MODULE:FACTORY"`` -> ``"PKG.MODULE"``."""
    return spec.split(":")[0]


def module_version(module_name: str) -> str:
    """The version of what provides ``module_name``: its distribution's version, else the module's
    ``__version__``, else a digest of its source file."""
    top = module_name.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        return f"{dist}=={importlib.metadata.version(dist)}"
    module = _import(module_name)
    if getattr(module, "__version__", None):
        return f"{module_name}=={module.__version__}"
    source = inspect.getsourcefile(module)
    with open(source, "rb") as f:
        return "source:" + hashlib.blake2b(f.read(), digest_size=16).hexdigest()


def weights_suffix(weights_file: str) -> str:
    """The suffix a copy of ``weights_file`` keeps (in a store's ``models/``, a system's
    ``backbones/``): its own extension (``.pt``, ``.ckpt``), else ``.weights``."""
    return os.path.splitext(weights_file)[1] or ".weights"


def fingerprint_of(kind: str, spec: str, version: str, weights_digest: str | None) -> str:
    """The fingerprint of ``kind``/``spec`` at module ``version`` (:func:`module_version`) with
    weights of BLAKE2b ``weights_digest`` (:func:`file_digest`; None without weights)."""
    parts = [kind, spec, version, weights_digest or "no weights"]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def model_fingerprint(kind: str, spec: str, weights_file: str | None) -> str:
    """The model's cache key: spelling, installed module version and weights bytes (see the module docstring)."""
    return fingerprint_of(kind, spec, module_version(module_of(spec)), file_digest(weights_file) if weights_file else None)


def check_installed(model: str, kind: str, spec: str, fingerprint: str, weights_digest: str | None, *, version: str | None, fix: str) -> str:
    """The installed version of ``model``'s module (:func:`module_version`), checked: with weights
    of ``weights_digest`` it must give ``fingerprint`` (the one ``model`` was made with, at module
    ``version`` when known), else a :class:`~featstore.errors.ConfigError` naming the module, both
    versions and both fingerprints, and ``fix``."""
    module = module_of(spec)
    installed = module_version(module)
    found = fingerprint_of(kind, spec, installed, weights_digest)
    if found == fingerprint:
        return installed
    if version is not None and version == installed:
        raise ConfigError(f"model {model!r} ({kind}:{spec}): its weights are not the ones it was made with (fingerprint {fingerprint[:12]}, "
                          f"these weights give {found[:12]}); {fix}")
    raise ConfigError(f"model {model!r} was made with {module} {version or '(another version)'} (fingerprint {fingerprint[:12]}); "
                      f"the installed {module} is {installed} (fingerprint {found[:12]}); {fix}")


def _numpy(value) -> np.ndarray:
    value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return value.astype(np.float32)


def _pooled(value: np.ndarray) -> np.ndarray:
    """(sound, channel, ...) -> (sound, channel), averaged over the trailing axes."""
    return value if value.ndim == 2 else value.reshape(value.shape[0], value.shape[1], -1).mean(axis=2)


def _load_hear(module_name: str, weights_file: str | None) -> WaveformEmbedder:
    import torch

    module = _import(module_name)
    missing = [f for f in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings") if not hasattr(module, f)]
    if missing:
        raise ConfigError(f"{module_name} does not implement the HEAR API (no {', '.join(missing)})")
    model = module.load_model(weights_file) if weights_file else module.load_model()

    def embed(audio: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        with torch.no_grad():
            scene = _numpy(module.get_scene_embeddings(x, model))
            timestamps = _numpy(module.get_timestamp_embeddings(x, model)[0])  # (sound, timestamp, dim)
        return {"scene": scene, "timestamp": timestamps.mean(axis=1)}

    return WaveformEmbedder(int(model.sample_rate), ("scene", "timestamp"), embed)


def _load_torch(spec: str, weights_file: str | None) -> WaveformEmbedder:
    import torch

    module_name, factory_name = spec.split(":")
    factory = getattr(_import(module_name), factory_name, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no factory {factory_name!r}")
    net = factory()
    if not isinstance(net, torch.nn.Module):
        raise ConfigError(f"{spec}() returned {type(net).__name__}, not a torch.nn.Module")
    if weights_file:
        net.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    net.eval()

    def embed(audio: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = net(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
        items = out.items() if isinstance(out, dict) else [("embedding", out)]
        return {str(k): _pooled(_numpy(v)) for k, v in items if hasattr(v, "shape") and len(v.shape) >= 2}

    probe = embed(np.zeros((1, int(getattr(net, "sample_rate", DEFAULT_SAMPLE_RATE))), np.float32))
    if not probe:
        raise ConfigError(f"{spec}: the module's output has no (batch, dim) tensor to embed")
    return WaveformEmbedder(int(getattr(net, "sample_rate", DEFAULT_SAMPLE_RATE)), tuple(probe), embed)


_LOADED: dict[tuple[str, str, str], WaveformEmbedder] = {}


def load_waveform_model(kind: str, spec: str, weights_file: str | None, fingerprint: str | None = None) -> WaveformEmbedder:
    """The model ``kind``/``spec`` with ``weights_file``, loaded once per process and fingerprint.

    With ``fingerprint`` (a registered model's), a weights file whose bytes changed since is refused
    when the model is loaded (once per process: the model in memory is the one checked, so a clip
    does not pay for hashing the weights and scanning the installed distributions again).
    """
    if weights_file and not os.path.isfile(weights_file):
        raise ConfigError(f"weights file {weights_file} not found")
    key = (kind, spec, fingerprint or model_fingerprint(kind, spec, weights_file))
    if key not in _LOADED:
        if fingerprint is not None and weights_file and model_fingerprint(kind, spec, weights_file) != fingerprint:
            raise ConfigError(f"{weights_file} or {spec} changed since the model was registered; embed with --model {kind}:{spec} again")
        _LOADED[key] = (_load_hear if kind == "hear" else _load_torch)(spec, weights_file)
    return _LOADED[key]
