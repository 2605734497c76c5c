"""Models registered in a store: ``_featstore/models/{name}.keras`` plus ``models.json``.

Each entry records the model's fingerprint (BLAKE2b of the .keras file: architecture and weights),
its input array and that array's fingerprint, the head's sizes, and any training config. A model
is loaded in Keras safe mode only (no arbitrary code from a file).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from featstore.errors import ConfigError, DamagedFile, NotFoundError, StoreError, first_line
from featstore.fingerprint import bytes_digest
from featstore.names import unknown
from featstore.store import Store

REGISTRY = "models.json"


def _entries(store: Store) -> dict[str, Any]:
    raw = store.side.read(REGISTRY)
    return json.loads(raw) if raw is not None else {}


def load_keras(path: str):
    """Load a .keras file in safe mode (Lambda layers and other arbitrary code are refused); featstore's
    own layers (:class:`featstore.models.deltas.SpectrogramDeltas`) are registered first."""
    import keras

    import featstore.models.deltas  # noqa: F401  (registers the layer with Keras' deserializer)

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, OSError, TypeError) as exc:  # not a .keras file, a damaged one, or one safe mode refuses
        reason = first_line(exc).split(". ")[0]  # Keras goes on about SavedModel and TFSMLayer
        raise ConfigError(f"{path}: not a Keras model featstore can load (a .keras file saved by Keras 3): {reason}") from None


#: The head contract of backbones: embeddings at ``fc1024`` and ``fc10``, probabilities at ``softmax``.
HEAD_LAYERS = ("fc1024", "fc10", "softmax")


def register_model(store: Store, name: str, model_file: str, *, input_array: str, config: dict | None = None, require_head: bool = True,
                   model=None) -> dict[str, Any]:
    """Copy ``model_file`` into the store under ``name`` and record it; returns the entry.

    The model must load in safe mode. With ``require_head`` it must have the head contract (layers
    ``fc1024``, ``fc10`` and ``softmax``); without, any model registers (an ImageNet application
    whose named layers ``embed --layer`` caches), and ``entry["head"]`` says whether it has one.
    ``model``: the file's model when the caller has it loaded already (a system's backbone), so
    it is not loaded again.
    """
    data = open(model_file, "rb").read()
    if model is None:
        model = load_keras(model_file)
    missing = [n for n in HEAD_LAYERS if n not in {layer.name for layer in model.layers}]
    if missing and require_head:
        raise StoreError(f"{model_file}: no layer named {', '.join(missing)} (the embedding contract; embed any other layer with --layer NAME)")
    head = {"fc1024_units": int(model.get_layer("fc1024").output.shape[-1]), "n_classes": int(model.get_layer("fc10").output.shape[-1])} if not missing else {}
    entry = {
        "name": name,
        "fingerprint": bytes_digest(data),
        "input": input_array,
        "input_fingerprint": store.provenance(input_array)["fingerprint"],
        "input_shape": list(model.inputs[0].shape[1:]),  # the first input's (a joint model's second is its visual input)
        "head": not missing,
        **head,
        "config": config or {},
        "registered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.side.write(f"models/{name}.keras", data)
    entries = _entries(store)
    entries[name] = entry
    store.side.write(REGISTRY, json.dumps(entries, indent=1).encode())
    return entry


def register_entry(store: Store, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Record a model that has no ``.keras`` file (a HEAR or torch model, its ``kind`` saying which:
    :mod:`featstore.pipelines.embed_waveform`) under ``name``; returns the entry."""
    entries = _entries(store)
    entries[name] = {"name": name, **entry}
    store.side.write(REGISTRY, json.dumps(entries, indent=1).encode())
    return entries[name]


def registered_models(store: Store) -> list[str]:
    """Names of the models registered in ``store``."""
    return sorted(_entries(store))


def model_entry(store: Store, name: str) -> dict[str, Any]:
    entries = _entries(store)
    if name not in entries:
        from featstore.models import MODELS  # the names only: no TensorFlow

        if name in MODELS:  # a backbone featstore trains, not trained in this store yet
            raise NotFoundError(f"no model registered as {name!r} in this store: train it first (featstore train-backbone STORE --model {name})")
        raise NotFoundError(unknown("model registered as", name, entries, "train-backbone, or embed --model-file, registers one"))
    return entries[name]


def model_bytes(store: Store, name: str) -> bytes:
    """The registered model's ``.keras`` bytes."""
    data = store.side.read_verified(f"models/{name}.keras")
    if data is None:
        raise NotFoundError(f"model {name!r} is registered but its file models/{name}.keras is missing")
    if bytes_digest(data) != model_entry(store, name)["fingerprint"]:
        raise DamagedFile(f"{store.side.path(f'models/{name}.keras')}: damaged, not the model registered as {name!r} (its fingerprint differs); register it again")
    return data


def save_training_clips(store: Store, name: str, clip_ids: list[str]) -> None:
    """Record the clips model ``name`` was trained on (``models/{name}.train_clips.json``)."""
    store.side.write(f"models/{name}.train_clips.json", json.dumps(list(clip_ids)).encode())


def training_clips(store: Store, name: str) -> list[str] | None:
    """The clips model ``name`` was trained on, or None when not recorded (a model file registered
    from outside)."""
    raw = store.side.read(f"models/{name}.train_clips.json")
    return None if raw is None else list(json.loads(raw))


def model_file(store: Store, name: str, fingerprint: str, suffix: str = ".keras") -> str:
    """A local path to the registered model's file ``models/{name}{suffix}`` (the ``.keras`` file,
    or a HEAR or torch model's weights), downloaded once per fingerprint for remote stores."""
    if store.side.is_local:
        return store.side.path(f"models/{name}{suffix}")
    cached = os.path.join(tempfile.gettempdir(), "featstore-models", f"{name}-{fingerprint}{suffix}")
    if not os.path.exists(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        data = store.side.read(f"models/{name}{suffix}")
        with open(cached + ".partial", "wb") as f:
            f.write(data or b"")
        os.replace(cached + ".partial", cached)
    return cached
