"""`featstore embed --model hear:MODULE | torch:PKG.MODULE:FACTORY`: raw-audio embedding models
(:mod:`featstore.models.hear`) on the stage runner, cached like Keras models.

- **The unit is a segment of the store's grid**, as for the audio backbones: each segment's audio
  is one sound for the model, so ``embeddings/{model}/{layer}`` is (clip, segment, dim) float32 and
  a 1 s file embeds exactly as the same second of a longer clip.
- **The audio comes from the clip's source file**, decoded and resampled (soxr, HQ) to the model's
  own sample rate, on the same grid as ``extract-audio`` (zero-padded or cut to the clip's
  segments), the two channels averaged to mono. No spectrogram array is needed.
- **Cache key**: the model's fingerprint (:func:`featstore.models.hear.model_fingerprint`: its
  spelling, package version and weights bytes), the layer, the model's sample rate and the
  segment length; per clip, the source audio file's content fingerprint. A second run with nothing
  changed does no inference; a new package version or weights file recomputes, saying so.
- The model is registered in the store's model registry (``kind`` ``hear`` or ``torch``, no
  ``.keras`` file), so ``verify --repair`` and the fusion commands find it by name; it has no
  softmax head, so no ``predictions/{model}`` is written: ``fuse --method mlp`` or ``concat``
  (``--layer scene``...) trains a head on its embeddings.
- A system exported from such a run carries the model's weights file;
  :func:`register_system_backbone` registers it in the store ``predict`` writes to.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import numpy as np

from featstore.audio import AudioParams
from featstore.errors import ConfigError, MediaError
from featstore.fingerprint import file_digest
from featstore.models.hear import SOURCE_AUDIO, fingerprint_of, load_waveform_model, model_name, module_of, module_version, split_spec, weights_suffix
from featstore.pipelines.extract_audio import read_segments
from featstore.pipelines.stage import ClipResult, ClipTask, OutputSpec, Stage
from featstore.registry import model_entry, model_file, register_entry, registered_models
from featstore.store import Store

def register_waveform_model(store: Store, model: str, weights_file: str | None) -> str:
    """Register ``hear:MODULE`` or ``torch:PKG.MODULE:FACTORY`` with ``weights_file`` (once per
    fingerprint); returns its name (:func:`featstore.models.hear.model_name`)."""
    from featstore.names import single_name

    kind, spec = split_spec(model)
    name = single_name(model_name(kind, spec), "--model")
    weights = os.path.abspath(weights_file) if weights_file else None
    version = module_version(module_of(spec))
    fingerprint = fingerprint_of(kind, spec, version, file_digest(weights) if weights else None)
    if name in registered_models(store) and model_entry(store, name)["fingerprint"] == fingerprint:
        return name
    embedder = load_waveform_model(kind, spec, weights, fingerprint)
    segment = np.zeros((1, round(store.segment_s * embedder.sample_rate)), np.float32)
    widths = {layer: int(v.shape[-1]) for layer, v in embedder.embed(segment).items()}
    register_entry(store, name, {
        "kind": kind, "spec": spec, "version": version, "fingerprint": fingerprint, "weights_file": weights,
        "sample_rate": embedder.sample_rate, "layers": widths, "head": False,
        "config": {"source": kind, "spec": spec, "weights_file": os.path.basename(weights) if weights else None},
        "registered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return name


def register_system_backbone(store: Store, model: str, spec: dict[str, Any], weights: bytes | None) -> None:
    """Register a system's HEAR or torch backbone ``model`` (its manifest entry ``spec``, the bytes of
    its weights file) in ``store``, its weights copied to ``models/`` (checksummed like every model
    file), so ``embed`` computes its embeddings under the same cache keys as where it was trained."""
    weights_file = None
    if weights is not None:
        suffix = weights_suffix(spec["file"])
        store.side.write(f"models/{model}{suffix}", weights)
        weights_file = model_file(store, model, spec["fingerprint"], suffix)
    name = register_waveform_model(store, f"{spec['kind']}:{spec['spec']}", weights_file)
    if name != model or model_entry(store, name)["fingerprint"] != spec["fingerprint"]:
        raise ConfigError(f"the installed {spec['kind']}:{spec['spec']} is not the system's backbone {model!r} (fingerprint {spec['fingerprint'][:12]}); install {spec['version']}")


def compute_waveform_embed(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side: the clip's segments at the model's rate, mono, through the model in one call."""
    path = task.source("audio_path")
    if not path:
        raise MediaError(f"clip {task.clip_id} has no audio file")
    sr, segment_s, n_segments = params["sample_rate"], params["window_s"], params["n_segments"]
    # only the grid fields of the front end's parameters are used by read_segments
    grid = AudioParams(sr=sr, n_bins=0, win_ms=0.0, hop_ms=0.0, segment_s=segment_s, n_segments=n_segments)
    windows, notes = read_segments(path, grid, params.get("source_start_s", 0.0))
    embedder = load_waveform_model(params["kind"], params["spec"], params["weights_file"], params["model_fingerprint"])
    values = embedder.embed(windows.mean(axis=0))
    return ClipResult({n: values[n] for n in names}, notes)


def waveform_stage(store: Store, config, entry: dict[str, Any], default_layers: tuple[str, ...]) -> Stage:
    """The embed stage of a registered ``hear``/``torch`` model (``config``: its ``EmbedConfig``);
    ``config.layers == default_layers`` (embed's default, ``--layer all``) means every layer of the model."""
    if tuple(config.layers) == tuple(default_layers):
        config = replace(config, layers=tuple(entry["layers"]))
    unknown = [layer for layer in config.layers if layer not in entry["layers"]]
    if unknown:
        raise ConfigError(f"model {config.model!r} has no layer {', '.join(unknown)} (its layers: {', '.join(entry['layers'])}); pass --layer")
    outputs = tuple(
        OutputSpec(layer, f"embeddings/{config.model}/{layer}", (store.n_segments, entry["layers"][layer]), "float32", ("segment", "dim"),
                   {"layer": layer}, config.for_output(layer).to_dict())
        for layer in config.layers
    )
    params = {
        "model": config.model, "kind": entry["kind"], "spec": entry["spec"], "model_fingerprint": entry["fingerprint"],
        "weights_file": entry["weights_file"], "input": SOURCE_AUDIO, "sample_rate": entry["sample_rate"],
        "window_s": store.segment_s, "n_segments": store.n_segments, "frames_per_segment": 1,
    }
    return Stage(config.stage, params, outputs, compute_waveform_embed, lambda row: str(row["audio_fingerprint"]), modality="audio", clips_per_task=8)
