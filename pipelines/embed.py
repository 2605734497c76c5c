"""`featstore embed`: run a registered backbone over every clip not yet cached, on the stage runner.

One forward pass per clip gives every output at once:
``embeddings/{model}/fc1024`` (clip, unit, dim), ``embeddings/{model}/fc10`` (clip, unit, classes,
the FC(10) values before the softmax) and ``predictions/{model}`` (clip, unit, classes, softmax),
where a unit is a segment of the grid for audio models (its 6-channel window) and a frame for
visual models. All float32.

Cache key: the model's fingerprint (its .keras bytes), the layer, the input array's fingerprint and
the window (the segment length); per clip, the upstream chunk's checksum. A second run with nothing
changed does no inference. A re-registered (retrained) model, or a re-made input array, invalidates
the embeddings: they are recomputed, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from featstore.errors import ConfigError, ParamsMismatch
from featstore.pipelines.config import StageConfig, option
from featstore.pipelines.runner import ClipResult, ClipTask, OutputSpec, Stage, StageReport, run_stage, select_clips
from featstore.provenance import Provenance
from featstore.registry import load_keras, model_entry, model_file, register_model
from featstore.store import Store

LAYERS = ("fc1024", "fc10")
#: Parameters whose change means "new model or new input": recompute instead of refusing.
INVALIDATING = {"model_fingerprint", "input_fingerprint"}

_MODELS: dict[tuple[str, str], Any] = {}


def _embedder(path: str, fingerprint: str):
    """The model with outputs [fc1024, fc10, softmax], loaded once per process and model version."""
    key = (path, fingerprint)
    if key not in _MODELS:
        import keras

        model = load_keras(path)
        _MODELS[key] = keras.Model(model.input, [model.get_layer(n).output for n in ("fc1024", "fc10", "softmax")])
    return _MODELS[key]


def model_inputs(store: Store, input_array: str, clip_id: str) -> np.ndarray:
    """The batch a model sees for one clip: audio (segment, bin, frame, 6) windows with deltas, or
    visual (frame, size, size, 3) uint8 frames."""
    prov = store.provenance(input_array)
    if prov.modality == "visual":
        return store.frames(clip_id, group=prov.group)[0]
    spec = store.audio(prov.leaf, clip_id, deltas=True, group=prov.group)
    fps = prov.frames_per_segment
    c, b, f = spec.shape
    return np.ascontiguousarray(spec.reshape(c, b, f // fps, fps).transpose(2, 1, 3, 0))


def compute_embed(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side: one forward pass over the clip's windows or frames."""
    store = task.open_store()
    x = model_inputs(store, params["input"], task.clip_id)
    embedder = _embedder(model_file(store, params["model"], params["model_fingerprint"]), params["model_fingerprint"])
    fc1024, fc10, softmax = (np.asarray(v) for v in embedder(x, training=False))
    outputs = {"fc1024": fc1024, "fc10": fc10, "predictions": softmax}
    return ClipResult({n: outputs[n].astype(np.float32) for n in names})


@dataclass(frozen=True)
class EmbedConfig(StageConfig):
    """Options of embed: the registered ``model`` and the embedding ``layers`` to cache.

    ``predictions/{model}`` (the softmax) is always written; ``layers=()`` writes only it.
    """

    stage: ClassVar[str] = "embed"

    model: str = option("", "Registered model name.", cli=False)
    layers: tuple[str, ...] = option(LAYERS, "Embedding layers to cache.", choices=LAYERS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ConfigError("embed needs a registered model name (--model)")

    def for_output(self, leaf: str) -> EmbedConfig:
        return replace(self, layers=(leaf,) if leaf in LAYERS else ())

    def build(self, store: Store) -> Stage:
        entry = model_entry(store, self.model)
        input_prov = store.provenance(entry["input"])
        visual = input_prov.modality == "visual"
        units = store.array(entry["input"]).shape[1] if visual else store.n_segments
        unit_dim = "frame" if visual else "segment"
        dims = {"fc1024": entry["fc1024_units"], "fc10": entry["n_classes"]}
        outputs = [
            OutputSpec(layer, f"embeddings/{self.model}/{layer}", (units, dims[layer]), "float32", (unit_dim, "dim"), {"layer": layer}, self.for_output(layer).to_dict())
            for layer in self.layers
        ]
        outputs.append(OutputSpec("predictions", f"predictions/{self.model}", (units, entry["n_classes"]), "float32", (unit_dim, "class"), {"layer": "softmax"}, self.for_output("predictions").to_dict()))
        params = {
            "model": self.model,
            "model_fingerprint": entry["fingerprint"],
            "input": entry["input"],
            "input_fingerprint": input_prov.fingerprint,
            "window_s": store.segment_s,
            "frames_per_segment": input_prov.frames_per_segment if visual else 1,
        }
        upstream = store.ledger(entry["input"]).entries
        return Stage(self.stage, params, tuple(outputs), compute_embed, lambda row: str(upstream.get(row["clip_id"], {}).get("crc32", "missing")), modality=input_prov.modality, clips_per_task=8)

    @classmethod
    def from_legacy(cls, prov: Provenance) -> EmbedConfig:
        return cls(model=prov.params["model"], layers=LAYERS)


def _upstream_done(store: Store, input_array: str, clips: str | list[str] | None) -> tuple[str | list[str] | None, list[str]]:
    """(the clips to embed, the selected clips skipped because ``input_array`` lacks them).

    A clip that failed upstream (or was never extracted) is not an embed failure: it is skipped and
    named, and embedded once the upstream stage has made its input.
    """
    done = store.ledger(input_array).entries
    ids = store.clips["clip_id"].to_numpy()
    selected = [str(ids[i]) for i in select_clips(store, clips)]
    missing = [c for c in selected if c not in done]
    return ([c for c in selected if c in done] if missing else clips), missing


def embed(
    store: Store,
    model: str,
    *,
    model_file_path: str | None = None,
    input_array: str | None = None,
    layers: tuple[str, ...] = LAYERS,
    clips: str | list[str] | None = None,
    workers: int | None = 0,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> tuple[StageReport, str | None]:
    """Embed every clip with registered model ``model`` (registering ``model_file_path`` first if given).

    Returns the report and a note when cached embeddings were invalidated (new model or input).
    ``workers`` defaults to 0 (in-process): one TensorFlow process uses every core by itself.
    """
    from featstore.models import MODELS

    if model_file_path:
        source = input_array or MODELS.get(model, (None, None))[1]
        if source is None:
            raise ConfigError(f"--input is needed for a model file named {model!r} (not one of {', '.join(MODELS)})")
        register_model(store, model, model_file_path, input_array=source, config={"source": "model file"})
    stage = EmbedConfig(model=model, layers=layers).build(store)
    clips, upstream_missing = _upstream_done(store, stage.params["input"], clips)
    note = None
    try:
        report = run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=progress)
    except ParamsMismatch as exc:
        if not set(exc.diffs) <= INVALIDATING:
            raise
        note = f"embeddings of {model} were made from another {' and '.join(sorted(k.split('_')[0] for k in exc.diffs))}: recomputing them"
        report = run_stage(store, stage, clips=clips, workers=workers, scheduler=scheduler, overwrite=True, progress=progress)
    if upstream_missing:
        shown = ", ".join(upstream_missing[:5]) + (", ..." if len(upstream_missing) > 5 else "")
        skipped = f"{len(upstream_missing)} clip(s) skipped, their input {stage.params['input']} is not done (failed upstream): {shown}"
        note = f"{note}; {skipped}" if note else skipped
    return report, note
