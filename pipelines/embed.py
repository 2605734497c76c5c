"""`featstore embed`: run a registered backbone over every clip not yet cached, on the stage runner.

One forward pass gives every output at once, for the units of many clips together (``batch_units``
per call, through the model's compiled graph, the next batch read meanwhile; a clip whose input
cannot be read fails alone):
``embeddings/{model}/fc1024`` (clip, unit, dim), ``embeddings/{model}/fc10`` (clip, unit, classes,
the FC(10) values before the softmax) and ``predictions/{model}`` (clip, unit, classes, softmax),
where a unit is a segment of the grid for audio models (its window: the static channels for models
that derive deltas themselves, 6 channels with host-computed deltas for models saved before; see
:func:`wants_host_deltas`) and a frame for visual models. All float32.

Cache key: the model's fingerprint (its .keras bytes), the layer, the input array's fingerprint and
the window (the segment length); per clip, the upstream chunk's checksum. A second run with nothing
changed does no inference. A re-registered (retrained) model, or a re-made input array, invalidates
the embeddings: they are recomputed, and the report says so.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

from featstore.errors import ConfigError, ParamsMismatch
from featstore.models.hear import KINDS as WAVEFORM_KINDS  # raw-audio models' registry ``kind``
from featstore.models.hear import PREFIXES as WAVEFORM_PREFIXES  # embed --model hear:MODULE / torch:PKG.MODULE:FACTORY
from featstore.names import single_name
from featstore.pipelines.config import StageConfig, check_fields, option, option_of, run_option
from featstore.pipelines.extract_frames import frame_coordinate
from featstore.pipelines.stage import ClipResult, ClipTask, OutputSpec, Stage, StageReport
from featstore.pipelines.runner import run_stage, select_clips
from featstore.registry import load_keras, model_entry, model_file, register_model, registered_models
from featstore.store import Store

LAYERS = ("fc1024", "fc10")
#: ``embed --layer all``: every layer of :data:`LAYERS`.
ALL_LAYERS = "all"
#: ``embed --model keras:ResNet50`` builds that keras.applications model.
APPLICATION_PREFIX = "keras:"
#: Parameters whose change means "new model or new input": recompute instead of refusing.
INVALIDATING = {"model_fingerprint", "input_fingerprint", "weights_file"}

_MODELS: dict[tuple, Any] = {}


def _embedder(path: str, fingerprint: str, outputs: tuple[str, ...]):
    """The model whose outputs are ``outputs`` (layer names; a spatial layer globally averaged,
    see :func:`featstore.models.applications.embedding_model`), loaded once per process, model
    version and output set: one forward pass gives them all. The model's ``fingerprint`` (a hash
    of its file's bytes) names it, not ``path``: the same model registered in many stores (each
    window of ``predict --file``) is loaded once."""
    key = (fingerprint, outputs)
    if key not in _MODELS:
        import keras

        from featstore.models.applications import embedding_model

        model = load_keras(path)
        _MODELS[key] = keras.Model(model.inputs, [embedding_model(model, name).output for name in outputs])
    return _MODELS[key]


def layer_width(store: Store, model: str, fingerprint: str, layer: str) -> int:
    """Width of ``layer``'s embedding (after pooling) of registered ``model``: that of its array when
    this model version made it (a rerun loads no model), else from the model (loaded once)."""
    path = f"embeddings/{model}/{layer}"
    if store.has_array(path) and store.provenance(path).params.get("model_fingerprint") == fingerprint:
        return int(store.array(path).shape[-1])
    embedder = _embedder(model_file(store, model, fingerprint), fingerprint, (layer,))
    return int(embedder.outputs[0].shape[-1])


def model_inputs(store: Store, input_array: str, clip_id: str, *, deltas: bool = True) -> np.ndarray:
    """The batch a model sees for one clip: audio (segment, bin, frame, channel) windows, the static
    channels and, with ``deltas``, delta and delta-delta channels (6 in all); or visual (frame, size,
    size, 3) uint8 frames. Which audio form a model takes: :func:`wants_host_deltas`."""
    prov = store.provenance(input_array)
    if prov.modality == "visual":
        return store.frames(clip_id, group=prov.group)[0]
    spec = store.audio(prov.leaf, clip_id, deltas=deltas, group=prov.group)
    fps = prov.frames_per_segment
    c, b, f = spec.shape
    return np.ascontiguousarray(spec.reshape(c, b, f // fps, fps).transpose(2, 1, 3, 0))


def wants_host_deltas(store: Store, input_array: str, model) -> bool:
    """Whether ``model`` takes audio windows with deltas computed outside it: a model saved before
    :class:`featstore.models.deltas.SpectrogramDeltas` existed (6 input channels), or from an
    array stored with deltas. Models with the layer take the static channels (it derives the same
    deltas, to float32 rounding)."""
    if store.provenance(input_array).modality == "visual":
        return False
    from featstore.models.deltas import model_wants_deltas

    return model_wants_deltas(model, store.array(input_array).shape[1])


def clip_inputs(store: Store, params: dict[str, Any], clip_id: str, embedder) -> list[np.ndarray]:
    """The model's inputs for one clip, each (unit, ...): its windows or frames (see
    :func:`model_inputs`), and a joint model's cached visual embedding of each window."""
    x = [model_inputs(store, params["input"], clip_id, deltas=wants_host_deltas(store, params["input"], embedder))]
    if params.get("visual_input"):
        from featstore.pipelines.train_joint import visual_inputs

        x.append(visual_inputs(store, {"config": {"visual_input": params["visual_input"]}}, clip_id))
    return x


def _call(model, x: list, **kwargs):
    """``model`` on its inputs ``x`` (a list, one array per model input): a list of outputs."""
    with warnings.catch_warnings():  # Keras notes that a bare array is not the input dict it names
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        values = model(x if len(x) > 1 else x[0], training=False, **kwargs)
    return list(values) if isinstance(values, list | tuple) else [values]


def compute_embed(task: ClipTask, params: dict[str, Any], names: tuple[str, ...]) -> ClipResult:
    """Worker side, one clip: one eager forward pass over the clip's windows or frames (the
    reference :func:`compute_embed_batch` equals, to float32 rounding)."""
    store = task.open_store()
    embedder = _embedder(model_file(store, params["model"], params["model_fingerprint"]), params["model_fingerprint"], _layers(names))
    values = _call(embedder, clip_inputs(store, params, task.clip_id, embedder))
    return ClipResult({n: np.asarray(v).astype(np.float32) for n, v in zip(names, values)})


def _layers(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("softmax" if n == "predictions" else n for n in names)


def compute_embed_batch(tasks: Iterable[ClipTask], params: dict[str, Any], names: tuple[str, ...], *, batch_units: int) -> Iterator[tuple[ClipTask, ClipResult | Exception]]:
    """Worker side, many clips: the units of consecutive clips forwarded together, at most
    ``batch_units`` per call (a clip with more is forwarded in slices), through the model's compiled
    forward function (:func:`forward_function`); the next batch's inputs are read on a thread while
    the current batch runs. Yields ``(task, ClipResult)``, or ``(task, exception)`` for a clip whose
    input could not be read; if a batch's forward pass fails, its clips are forwarded one by one, so
    a bad clip fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    tasks = iter(tasks)
    first = next(tasks, None)
    if first is None:
        return
    store = first.open_store()
    embedder = _embedder(model_file(store, params["model"], params["model_fingerprint"]), params["model_fingerprint"], _layers(names))
    forward = forward_function(embedder, batch_units)
    read = _BatchReader(store, params, embedder, itertools.chain([first], tasks), batch_units)
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(read.next_batch)
        while batch := upcoming.result():
            upcoming = reader.submit(read.next_batch)
            yield from _forward_batch(forward, batch, names)


class _BatchReader:
    """Reads consecutive clips' inputs into batches of at most ``batch_units`` units (one call at a
    time: the clip that would overflow a batch starts the next one)."""

    def __init__(self, store: Store, params: dict[str, Any], embedder, tasks: Iterator[ClipTask], batch_units: int):
        self.store, self.params, self.embedder, self.tasks, self.batch_units = store, params, embedder, tasks, batch_units
        self.carry: tuple[ClipTask, list[np.ndarray] | Exception] | None = None

    def next_batch(self) -> list[tuple[ClipTask, list[np.ndarray] | Exception]]:
        """The next batch: (task, inputs or the exception reading them); [] at the end."""
        batch, units = [], 0
        while True:
            item = self.carry if self.carry is not None else self._read(next(self.tasks, None))
            self.carry = None
            if item is None:
                return batch
            n = 0 if isinstance(item[1], Exception) else len(item[1][0])
            if units and units + n > self.batch_units:
                self.carry = item
                return batch
            batch.append(item)
            units += n
            if units >= self.batch_units:
                return batch

    def _read(self, task: ClipTask | None):
        if task is None:
            return None
        try:
            return task, clip_inputs(self.store, self.params, task.clip_id, self.embedder)
        except Exception as exc:  # noqa: BLE001 - a clip whose input is broken fails alone
            return task, exc


def _forward_batch(forward, batch, names: tuple[str, ...]) -> Iterator[tuple[ClipTask, ClipResult | Exception]]:
    """Results of one batch: read failures as they are, the other clips' outputs split per clip."""
    good = [(task, x) for task, x in batch if not isinstance(x, Exception)]
    yield from ((task, x) for task, x in batch if isinstance(x, Exception))
    if not good:
        return
    try:
        outputs = forward([np.concatenate(parts) for parts in zip(*(x for _, x in good))])
    except Exception:  # find the clip(s) at fault: each alone
        if len(good) == 1:
            raise
        for item in good:
            yield from _forward_batch(forward, [item], names)
        return
    start = 0
    for task, x in good:
        end = start + len(x[0])
        yield task, ClipResult({n: out[start:end] for n, out in zip(names, outputs)})
        start = end


_FORWARDS: dict[tuple[int, int], Any] = {}


def forward_function(embedder, batch_units: int):
    """``forward(inputs) -> [output per layer]``: ``inputs`` one (unit, ...) array per model input,
    any number of units; outputs float32 numpy (unit, dim). Each call runs the model as one
    compiled TensorFlow graph (traced once per model), not eagerly.

    Every graph call holds exactly ``batch_units`` units: the units are sliced into calls of
    ``batch_units`` and a short last call is padded with zeros (their outputs dropped). CPU
    kernels can round differently for different batch sizes (seen on an AMD EPYC: 1e-8 apart
    between a batch of 10 and of 40), but not for different rows of one batch size, so a clip's
    outputs do not depend on which clips share its call: a rerun, a resumed run, a repair or a run
    over one clip writes the same bits as the first full run. The price is a short call's padding
    (a run of fewer units than ``batch_units`` computes ``batch_units``)."""
    key = (id(embedder), batch_units)
    if key not in _FORWARDS:
        import tensorflow as tf

        def forward(inputs: list[np.ndarray]) -> list[np.ndarray]:
            if forward.graph is None:  # traced once, for the one batch shape
                signature = [tf.TensorSpec((batch_units, *x.shape[1:]), tf.as_dtype(x.dtype)) for x in inputs]
                forward.graph = tf.function(lambda x: _call(embedder, x), input_signature=[signature])
            n = len(inputs[0])
            parts = []
            for start in range(0, n, batch_units):
                call = [x[start : start + batch_units] for x in inputs]
                used = len(call[0])
                if used < batch_units:
                    call = [np.concatenate([x, np.zeros((batch_units - used, *x.shape[1:]), x.dtype)]) for x in call]
                parts.append([np.asarray(out)[:used] for out in forward.graph(call)])
            return [np.concatenate([p[i] for p in parts]).astype(np.float32, copy=False) for i in range(len(parts[0]))]

        forward.graph = None  # the tf.function once called, for its tracing count
        _FORWARDS[key] = forward
    return _FORWARDS[key]


@dataclass(frozen=True)
class EmbedConfig(StageConfig):
    """What embed computes, recorded with each array it makes: the registered ``model``, the
    embedding ``layers`` to cache and ``batch_units``. (Every option of the command:
    :class:`EmbedOptions`.)

    ``predictions/{model}`` (the softmax) is always written; ``layers=()`` writes only it.
    """

    stage: ClassVar[str] = "embed"

    model: str = option("", "Registered model name.", cli=False)
    layers: tuple[str, ...] = option(LAYERS, "Embedding layers to cache: fc1024, fc10, or any layer name of the model.", cli=False)
    batch_units: int = option(256, "Units (segments, or frames) of many clips forwarded in one call (a short call is padded to it); more keeps a GPU busier, at more memory.",
                              min=1, usage=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ConfigError("embed needs a registered model name (--model)")

    def for_output(self, leaf: str) -> EmbedConfig:
        return replace(self, layers=() if leaf == "predictions" else (leaf,))

    def build(self, store: Store) -> Stage:
        entry = model_entry(store, self.model)
        if entry.get("kind") in WAVEFORM_KINDS:  # a HEAR or torch model on raw audio
            from featstore.pipelines.embed_waveform import waveform_stage

            return waveform_stage(store, self, entry, LAYERS)
        head = entry.get("head", True)  # models registered before the flag had to have the head
        if not head and not self.layers:
            raise ConfigError(f"model {self.model!r} has no softmax head: name the layer(s) to embed with --layer")
        input_prov = store.provenance(entry["input"])
        visual = input_prov.modality == "visual"
        units = store.array(entry["input"]).shape[1] if visual else store.n_segments
        # a visual model's unit is a frame; in the predictions group, where models of other frame
        # rates meet, its axis is the model's own
        unit_dim, predicted_dim = ("frame", f"{self.model}_frame") if visual else ("segment", "segment")
        frame_times = frame_coordinate(input_prov.frames_per_segment / store.segment_s, units) if visual else None
        outputs = []
        for layer in self.layers:
            if head and layer in LAYERS:  # the head contract: widths known from the registry
                width, spec_params = entry["fc1024_units" if layer == "fc1024" else "n_classes"], {"layer": layer}
            else:
                width, spec_params = layer_width(store, self.model, entry["fingerprint"], layer), {"layer": layer, "pooled": True}
            vector_dim = "class" if head and layer == "fc10" else "dim"  # fc10: one logit per class
            outputs.append(OutputSpec(layer, f"embeddings/{self.model}/{layer}", (units, width), "float32", (unit_dim, vector_dim), spec_params,
                                      self.for_output(layer).to_dict(), {unit_dim: frame_times} if visual else {}))
        if head:
            outputs.append(OutputSpec("predictions", f"predictions/{self.model}", (units, entry["n_classes"]), "float32", (predicted_dim, "class"),
                                      {"layer": "softmax"}, self.for_output("predictions").to_dict(), {predicted_dim: frame_times} if visual else {}))
        params = {
            "model": self.model,
            "model_fingerprint": entry["fingerprint"],
            "input": entry["input"],
            "input_fingerprint": input_prov.fingerprint,
            "window_s": store.segment_s,
            "frames_per_segment": input_prov.frames_per_segment if visual else 1,
            **({"visual_input": visual_input} if (visual_input := entry.get("config", {}).get("visual_input")) else {}),
        }
        upstream = store.ledger(entry["input"]).entries
        return Stage(self.stage, params, tuple(outputs), compute_embed, lambda row: str(upstream.get(row["clip_id"], {}).get("crc32", "missing")), modality=input_prov.modality,
                     clips_per_task=max(8, -(-self.batch_units // units)), compute_batch=functools.partial(compute_embed_batch, batch_units=self.batch_units), code_version=self.code_version)


def embed_layers(value: str) -> tuple[str, ...]:
    """``embed --layer``'s value as layer names: ``"all"`` is :data:`LAYERS`, else a comma-separated list."""
    return LAYERS if value == ALL_LAYERS else tuple(v.strip() for v in value.split(",") if v.strip())


def check_model_name(value: str, flag: str) -> None:
    """Refuse an invalid ``embed --model``: a model name, ``keras:`` followed by one, or
    ``hear:MODULE`` / ``torch:PKG.MODULE:FACTORY`` (see :func:`embed`)."""
    if not value.startswith(WAVEFORM_PREFIXES):
        single_name(value.removeprefix(APPLICATION_PREFIX), flag)


@dataclass(frozen=True)
class EmbedOptions:
    """Every option of the embed command, with its only default (the command's options come from
    here): the keywords of :func:`embed`, but ``layer`` as typed (``all`` or comma-separated
    names, see :func:`embed_layers`). :class:`EmbedConfig` is the part that makes the arrays."""

    model: str = option(MISSING, "Registered model name (aud-mel, aud-gam, aud-cqt, vis-inc, vis-conv, or your own), keras:NAME for a "
                        "keras.applications model (e.g. keras:ResNet50), hear:MODULE for an installed HEAR-API package, or "
                        "torch:PKG.MODULE:FACTORY for a torch.nn.Module factory (both on the clips' source audio).", usage=True, check=check_model_name)
    model_file_path: str | None = option(None, "Register this .keras file under --model first (a backbone with layers fc1024, fc10, softmax; "
                                         "any model with --layer NAME).", kind=str, flag="--model-file")
    input_array: str | None = option(None, "Input array of a --model-file or keras:NAME model (default: by model name, e.g. audio/mel; "
                                     "frames/rgb for keras:NAME).", kind=str, flag="--input")
    weights_file: str | None = option(None, "Local weights file: ImageNet weights of a keras:NAME model (never downloaded; random weights and "
                                      "a warning without), the file a hear:MODULE's load_model takes, or a torch:... model's state_dict.",
                                      kind=str, flag="--weights")
    layer: str = option(ALL_LAYERS, "fc1024, fc10, all (both), or comma-separated layer names of the model (spatial outputs globally averaged).")
    workers: int | None = run_option("workers", 0, "Dask workers (0 = in-process; TensorFlow uses every core itself).")
    scheduler: str | None = run_option("scheduler")
    clips: str | None = run_option("clips")
    overwrite: bool = run_option("overwrite")
    batch_units: int = option_of(EmbedConfig, "batch_units")

    def __post_init__(self) -> None:
        check_fields(self)

    def keywords(self) -> dict[str, Any]:
        """:func:`embed`'s keywords: every option, ``layer`` as ``layers``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layer"} | {"layers": embed_layers(self.layer)}


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
    weights_file: str | None = None,
    layers: tuple[str, ...] = LAYERS,
    clips: str | list[str] | None = None,
    workers: int | None = EmbedOptions.workers,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    batch_units: int = EmbedConfig.batch_units,
) -> tuple[StageReport, str | None]:
    """Embed every clip with registered model ``model``; returns the report and a note (cached
    embeddings invalidated by a new model or input, clips skipped because their input failed).

    ``model_file_path`` registers a ``.keras`` file under ``model`` first (``input_array`` names its
    input; a model without the fc1024/fc10/softmax head needs named ``layers``). ``model =
    "keras:NAME"`` builds the ``keras.applications`` model NAME on the frames (``input_array``,
    default ``frames/rgb``) with ImageNet weights from the local ``weights_file`` (random weights and
    a warning without one; never downloaded) and registers it as NAME, once per weights file.
    ``layers`` are ``fc1024``, ``fc10`` or any layer name of the model (a spatial output is globally
    averaged; the layer name is part of the array path, so another layer is another array).
    ``model = "hear:MODULE"`` or ``"torch:PKG.MODULE:FACTORY"`` registers that raw-audio model
    (``weights_file``: its weights) and embeds each segment of the clips' source audio
    (:mod:`featstore.pipelines.embed_waveform`; the default ``layers`` mean all of its layers).
    ``workers`` defaults to 0 (in-process): one TensorFlow process uses every core by itself.
    ``batch_units``: units (segments or frames) of many clips forwarded in one compiled call.
    """
    from featstore.models import MODELS

    custom_layers = any(layer not in LAYERS for layer in layers)
    if model.startswith(WAVEFORM_PREFIXES):
        from featstore.pipelines.embed_waveform import register_waveform_model

        model = register_waveform_model(store, model, weights_file)
    elif model.startswith(APPLICATION_PREFIX):
        model = _register_application(store, model.removeprefix(APPLICATION_PREFIX), weights_file, input_array or "frames/rgb")
    elif model_file_path:
        source = input_array or MODELS.get(model, (None, None))[1]
        if source is None:
            raise ConfigError(f"--input is needed for a model file named {model!r} (not one of {', '.join(MODELS)})")
        register_model(store, model, model_file_path, input_array=source, config={"source": "model file"}, require_head=not custom_layers)
    stage = EmbedConfig(model=model, layers=layers, batch_units=batch_units).build(store)
    if input_array and stage.params.get("input") != input_array:
        raise ConfigError(f"model {model!r} is registered with input {stage.params.get('input')!r}, not {input_array!r}: "
                          "drop --input, or register another model file with it (--model-file FILE --model NEW_NAME)")
    clips, upstream_missing = (clips, []) if stage.params.get("kind") in WAVEFORM_KINDS else _upstream_done(store, stage.params["input"], clips)
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


def _register_application(store: Store, name: str, weights_file: str | None, input_array: str) -> str:
    """Register the keras.applications model ``name`` on ``input_array``'s frames (see :func:`embed`);
    an application already registered from the same weights file and frame size is reused."""
    import os
    import tempfile

    from featstore.models.applications import application_fingerprint, build_application

    single_name(name, "--model keras:NAME")
    shape = tuple(int(n) for n in store.array(input_array).shape[2:])
    key = application_fingerprint(name, input_shape=shape, weights_file=weights_file)
    if name in registered_models(store) and model_entry(store, name)["config"].get("application_fingerprint") == key:
        return name
    application = build_application(name, input_shape=shape, weights_file=weights_file)
    config = {"source": "keras.applications", "application": name, "weights_file": os.path.basename(weights_file) if weights_file else None, "application_fingerprint": key}
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, f"{name}.keras")
        application.save(path)
        register_model(store, name, path, input_array=input_array, config=config, require_head=False)
    return name
