"""`featstore predict`: apply a frozen system to the clips of a store, recomputing only what is missing.

For the selected clips of any store (the training store, a store of new 10 s clips, the challenge's
1 s evaluation clips), in order:

1. each input array (``audio/mel``, ``frames/rgb``...) is extracted with the system's exact config,
   on the stage runner. An array that exists with another config is refused, naming the differing
   options; clips already done are skipped;
2. each backbone is registered under its name (refused when the store holds another model of that
   name) and run by ``embed``, with the same cache keys: a clip already embedded by the same model
   is not recomputed;
3. the decision, in one batched pass over the clips that lack predictions: a fusion head on the
   clips' segment embeddings (visual frames averaged per segment, as in training), giving
   (clip, segment, class); or an ensemble rule over its inputs' clip probabilities (the mean of
   each input's segments), giving (clip, 1, class), exactly as ``fuse`` and ``ensemble`` compute them.

It writes ``predictions/NAME`` (one chunk per clip, done-marked with checksums, so ``verify``
checks it) and a run record ``runs/NAME.json`` (kind ``predict``: system digest, clips, timings,
metrics when the clips have labels). Nothing is retrained. A re-run is a no-op. Clips that fail
upstream are reported, and the others are predicted.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featstore import names
from featstore.errors import ConfigError, StoreError
from featstore.lock import WriterLock
from featstore.metrics import evaluate_predictions
from featstore.packed import packed_segment_embeddings
from featstore.pipelines.config import WORKERS_DEFAULT, check_fields, option, option_of, run_option
from featstore.pipelines.embed import LAYERS, EmbedConfig, embed
from featstore.pipelines.ensemble import combine
from featstore.pipelines.fuse import embedding_path, load_fusion_data
from featstore.pipelines.stage import StageReport
from featstore.pipelines.runner import run_stage, select_clips
from featstore.pipelines.stages import STAGES, config_for_array
from featstore.registry import model_entry, register_model, registered_models
from featstore.shards import write_clips
from featstore.runs import load_run, save_run, utc_now
from featstore.store import Store
from featstore.system import System


@dataclass
class PredictReport:
    """What a predict run did: clips predicted now, already predicted, failed (with reasons)."""

    name: str
    system: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "system": self.system, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "failures": self.failures, "stages": self.stages, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class PredictOptions:
    """Every option of the predict command, with its only default (the command's options come from
    here): which system (``system_dir``, or a ``run`` of the store itself), and either the keywords
    of :func:`predict` and :func:`write_predict_submission` or, with ``video``, the file
    :func:`predict_file` classifies."""

    system_dir: str | None = option(None, "An exported system directory (featstore export-system).", kind=str, flag="--system")
    run: str | None = option(None, "Instead of --system: a run of STORE itself, applied to its clips that lack its predictions.", kind=str)
    name: str | None = option(None, "Predictions are written to predictions/NAME (default: the system's run name).", kind=str, usage=True, check=names.single_name)
    clips: str | None = run_option("clips")
    workers: int | None = run_option("workers", help=f"Local dask worker processes for extraction ({WORKERS_DEFAULT}).")
    scheduler: str | None = run_option("scheduler", help="Existing dask scheduler (env FEATSTORE_SCHEDULER).")
    submission: str | None = option(None, "Also write the DCASE 2021 Task 1B submission file (TSV) of the predicted clips.", kind=str)
    batch_units: int = option_of(EmbedConfig, "batch_units")
    video: str | None = option(None, "Classify one video file (a temporary store) and print its probabilities.", kind=str, flag="--file")
    audio: str | None = option(None, "With --file: take the audio from this file (e.g. a WAV) instead of the video's own track.", kind=str)

    def __post_init__(self) -> None:
        check_fields(self)
        if (self.system_dir is None) == (self.run is None):
            raise ConfigError("give exactly one of --system DIR and --run RUN")
        if self.video is not None and self.system_dir is None:
            raise ConfigError("--file needs --system")
        if self.submission is not None and "://" not in self.submission:  # a local path: checked now, not after every clip is predicted
            folder = os.path.dirname(os.path.abspath(self.submission))
            if os.path.isdir(self.submission) or not os.path.isdir(folder):
                raise ConfigError(f"--submission {self.submission}: give a file path in an existing folder (it is written as TSV)")


def check_compatible(store: Store, system: System) -> None:
    """Refuse a store whose grid, label map or existing input arrays differ from the system's."""
    if store.segment_s != system.segment_s:
        raise ConfigError(f"the system uses {system.segment_s} s segments, the store {store.segment_s} s")
    if store.classes != system.classes:
        raise ConfigError("the system's label map differs from the store's")
    for path, spec in system.inputs.items():
        wanted = STAGES[spec["stage"]].from_dict(spec["config"])
        if store.has_array(path):
            stored = config_for_array(store, path)
            diffs = stored.differences(wanted)
            if diffs:
                listed = "; ".join(f"{k}: stored {a!r}, system {b!r}" for k, (a, b) in diffs.items())
                raise ConfigError(f"{path} exists in the store with other parameters than the system's ({listed}); predict into another store, or re-extract it with the system's parameters")
    registered = _registered(store)
    for model, spec in system.backbones.items():
        if model in registered and model_entry(store, model)["fingerprint"] != spec["fingerprint"]:
            raise ConfigError(f"the store has another model named {model!r} than the system's (fingerprint {model_entry(store, model)['fingerprint'][:12]}, system {spec['fingerprint'][:12]}); predict into another store")


def _upstream(store: Store, system: System, clip_ids: list[str], report: PredictReport, workers, scheduler, progress, batch_units: int,
              source_start_s: float = 0.0) -> None:
    """Steps 1 and 2: extract the inputs and embed with every backbone, skipping what is done.

    ``source_start_s``: the clips start this many seconds into their source files (a window of a
    long file, see :func:`predict_file`); the stages that read the files decode from there.
    """
    from featstore.pipelines.embed import WAVEFORM_KINDS

    def note(stage_report: StageReport) -> None:
        report.stages.append(stage_report.to_json())

    for path, spec in system.inputs.items():
        config = STAGES[spec["stage"]].from_dict(spec["config"])
        note(run_stage(store, _from_source_start(config.build(store), source_start_s), clips=clip_ids, workers=workers, scheduler=scheduler, progress=progress))
    for model, spec in system.backbones.items():
        if model not in _registered(store):
            _register_backbone(store, system, model, spec)
        if source_start_s and model_entry(store, model).get("kind") in WAVEFORM_KINDS:  # reads the source audio itself
            stage = EmbedConfig(model=model, layers=LAYERS, batch_units=batch_units).build(store)
            note(run_stage(store, _from_source_start(stage, source_start_s), clips=clip_ids, workers=0 if workers is None else workers, scheduler=scheduler, progress=progress))
            continue
        stage_report, _ = embed(store, model, layers=LAYERS, clips=clip_ids, workers=0 if workers is None else workers, scheduler=scheduler, progress=progress, batch_units=batch_units)
        note(stage_report)


def _register_backbone(store: Store, system: System, model: str, spec: dict[str, Any]) -> None:
    """Register the system's backbone ``model`` in ``store``: a HEAR / torch model with its weights
    file, or the ``.keras`` file (with the model the system already loaded)."""
    import tempfile

    from featstore.pipelines.embed import WAVEFORM_KINDS
    from featstore.pipelines.embed_waveform import register_system_backbone

    if spec.get("kind") in WAVEFORM_KINDS:
        register_system_backbone(store, model, spec, system.files.get(spec.get("file", "")))
        return
    with tempfile.TemporaryDirectory() as work:
        path = f"{work}/{model}.keras"
        with open(path, "wb") as f:
            f.write(system.files[spec["file"]])
        register_model(store, model, path, input_array=spec["input"], config={"source": "system", "system": system.digest}, model=system.load_keras(spec["file"]))


def _from_source_start(stage, source_start_s: float):
    """``stage`` reading its clips' source files from ``source_start_s`` seconds on (stages that do
    not read source files ignore the parameter)."""
    import dataclasses

    return dataclasses.replace(stage, params={**stage.params, "source_start_s": source_start_s}) if source_start_s else stage


def _registered(store: Store) -> set[str]:
    return set(registered_models(store))


def _segment_values(store: Store, path: str, rows: np.ndarray) -> np.ndarray:
    """(clip, segment, dim) float32 of array ``path`` for store ``rows`` (all must be done)."""
    values, done_rows = packed_segment_embeddings(store, path)
    return values[np.searchsorted(done_rows, rows)]


def _done_rows(store: Store, path: str) -> np.ndarray:
    return packed_segment_embeddings(store, path)[1]


def decision_inputs(decision: dict[str, Any]) -> list[str]:
    """The arrays a decision reads (embeddings of a fusion head, predictions of backbones)."""
    if decision["kind"] == "fusion":
        return [embedding_path(m, decision["layer"]) for m in decision["models"]]
    paths = []
    for item in decision["inputs"]:
        paths += [f"predictions/{item['model']}"] if item["kind"] == "backbone" else decision_inputs(item)
    return paths


def apply_decision(store: Store, system: System, decision: dict[str, Any], rows: np.ndarray) -> np.ndarray:
    """Class probabilities of store ``rows``: (clip, segment, class) for a fusion head, (clip, 1,
    class) for an ensemble, computed as ``fuse`` and ``ensemble`` compute them."""
    if decision["kind"] == "fusion":  # the embeddings as fuse reads them (narrower ones zero-padded)
        data = load_fusion_data(store, tuple(decision["models"]), decision["layer"])
        x = data.x[np.searchsorted(data.rows, rows)]  # (clip, seg, model, dim)
        head = system.load_keras(decision["head"])
        n_clips, n_seg, n_models, dim = x.shape
        flat = x.reshape(-1, n_models, dim)
        probs = np.concatenate([np.asarray(head(flat[s : s + 65536], training=False)) for s in range(0, len(flat), 65536)])
        return probs.reshape(n_clips, n_seg, -1).astype(np.float32)
    clip_probs = []
    for item in decision["inputs"]:
        if item["kind"] == "backbone":
            probs = _segment_values(store, f"predictions/{item['model']}", rows)
        else:
            probs = apply_decision(store, system, item, rows)
        clip_probs.append(probs.astype(np.float64).mean(axis=1))
    return combine(np.stack(clip_probs), decision["rule"])[:, None, :].astype(np.float32)


def _predictions_array(store: Store, system: System, path: str, per_clip_shape: tuple[int, ...]):
    """The array predictions go to: the run's own (when predicting on the store it was trained in, or
    re-running), or a new one; another system's is refused."""
    if store.has_array(path):
        prov = store.provenance(path)
        ours = prov.fingerprint == system.decision.get("predictions_fingerprint") or prov.params.get("system") == system.digest
        if not ours:
            raise ConfigError(f"{path} exists and was made by another run or system; choose another --name")
        array = store.array(path)
        if tuple(array.shape[1:]) != per_clip_shape:
            raise StoreError(f"{path}: shape {array.shape[1:]} differs from the system's {per_clip_shape}")
        return store.grow_array(path)
    unit = "segment" if system.decision["kind"] == "fusion" else "clip"
    return store.create_array(path, per_clip_shape=per_clip_shape, dtype="float32", dims=(unit, "class"), stage="predict",
                              params={"system": system.digest, "frames_per_segment": 1 if unit == "segment" else per_clip_shape[0]})


def predict(store: Store, system: System, *, name: str | None = None, clips: str | list[str] | None = None,
            workers: int | None = PredictOptions.workers, scheduler: str | None = None, progress: bool | None = False,
            batch_units: int = PredictOptions.batch_units) -> PredictReport:
    """Apply ``system`` to the selected ``clips`` of ``store`` (see the module docstring).

    ``name``: the predictions' name (default: the system's run name); ``workers`` / ``scheduler``:
    as for every batch stage (extraction runs on dask; embedding defaults to in-process);
    ``batch_units``: units of many clips per forward pass of each backbone (see ``embed``).
    """
    start = time.perf_counter()
    check_compatible(store, system)
    name = names.single_name(name or system.name, "--name")
    report = PredictReport(name=name, system=system.digest)
    selected = np.array(sorted(select_clips(store, clips)), dtype=np.int64)
    clip_ids = [str(c) for c in store.clips["clip_id"].to_numpy()[selected]]
    path = f"predictions/{name}"
    already = set(store.ledger(path).entries) if store.has_array(path) else set()
    todo_ids = [c for c in clip_ids if c not in already]
    report.skipped = len(clip_ids) - len(todo_ids)
    if todo_ids:
        _upstream(store, system, todo_ids, report, workers, scheduler, progress, batch_units)
        todo = selected[np.isin(clip_ids, todo_ids)]
        ready = todo
        for p in decision_inputs(system.decision):
            ready = np.intersect1d(ready, _done_rows(store, p))
        ids = store.clips["clip_id"].to_numpy()
        failures = store.failures if len(ready) < len(todo) else None  # read once, not per failed clip
        for row in np.setdiff1d(todo, ready):
            clip_id = str(ids[row])
            report.failures.append({"clip_id": clip_id, "error": _upstream_failure(failures, clip_id)})
        report.failed = len(todo) - len(ready)
        if len(ready):
            probs = apply_decision(store, system, system.decision, ready)
            with WriterLock(store.side, [path], "predict"):
                array = _predictions_array(store, system, path, tuple(probs.shape[1:]))
                ledger = store.ledger(path)
                write_clips(array, ready, probs)  # whole shards, each once
                for row, values in zip(ready, probs):
                    ledger.mark_done(str(ids[row]), system.digest, zlib.crc32(values.tobytes()))
                ledger.flush(store.side)
            report.done = len(ready)
    report.seconds = time.perf_counter() - start
    if report.done:
        _record(store, system, report, selected)
    return report


def _upstream_failure(failures, clip_id: str) -> str:
    """Why a clip has no predictions: its first row in ``failures`` (the store's failures table) in
    pipeline order (extraction before embedding), the root cause."""
    mine = failures[failures["clip_id"] == clip_id]
    if len(mine):
        order = {stage: i for i, stage in enumerate(("ingest", *STAGES))}
        first = min(mine.itertuples(index=False), key=lambda f: order.get(f.stage, len(order)))
        return f"{first.stage} failed: {first.error_type}: {first.message}"
    return "its inputs are not all computed"


def _record(store: Store, system: System, report: PredictReport, selected: np.ndarray) -> None:
    """Save the run record: a new ``predict`` run, or a note on the fusion/ensemble run predicted for."""
    path = f"predictions/{report.name}"
    probs, rows = packed_segment_embeddings(store, path)
    keep = np.isin(rows, selected)
    labels = store.label_indices(store.clips["label"])[rows[keep]]
    labelled = labels >= 0
    metrics = evaluate_predictions(probs[keep][labelled], labels[labelled], store.classes) if labelled.any() else {}
    entry = {"system": system.digest, "clips": int(keep.sum()), "predicted_now": report.done, "seconds": round(report.seconds, 3), "metrics": metrics, "created": utc_now()}
    if store.provenance(path).stage == "predict":
        save_run(store, {"name": report.name, "kind": "predict", "system_name": system.name, **entry, "split": "", "decision": system.decision["kind"]})
    else:
        record = load_run(store, report.name)
        save_run(store, {**record, "last_predict": entry})


def write_predict_submission(store: Store, name: str, clips: str | list[str] | None, path: str) -> int:
    """Write the DCASE 2021 Task 1B submission file of ``predictions/NAME`` for the selected clips
    (see :func:`featstore.pipelines.report.write_submission`); returns its row count."""
    from featstore.pipelines.report import Source, write_submission

    probs, rows = packed_segment_embeddings(store, f"predictions/{name}")
    keep = np.isin(rows, select_clips(store, clips))
    return write_submission(store, Source(name, "predict", probs[keep].astype(np.float64), rows[keep]), None, path)


def segment_probabilities(store: Store, system: System, rows: np.ndarray) -> np.ndarray:
    """(clip, segment, class) probabilities of store ``rows``: a fusion head's own segments, or the
    ensemble rule applied to each segment of its inputs (for per-second display)."""
    decision = system.decision
    if decision["kind"] == "fusion":
        return apply_decision(store, system, decision, rows)
    per_input = [
        _segment_values(store, f"predictions/{item['model']}", rows) if item["kind"] == "backbone" else apply_decision(store, system, item, rows)
        for item in decision["inputs"]
    ]
    stacked = np.stack(per_input).astype(np.float64)  # (input, clip, segment, class)
    n_in, n_clips, n_seg, n_classes = stacked.shape
    return combine(stacked.reshape(n_in, -1, n_classes), decision["rule"]).reshape(n_clips, n_seg, n_classes)


#: Segments of a file that ``predict_file`` decodes, extracts, embeds and decides together: memory
#: holds one window's audio, frames, features and backbone activations (about 1.5 GB at 60 s of 1 s
#: segments with an audio-visual system at 224 x 224), whatever the file's length; only each
#: segment's class probabilities are kept across windows. Longer windows amortise loading the
#: backbones once per window.
FILE_WINDOW_SEGMENTS = 60


def predict_file(system: System, video_path: str, audio_path: str | None = None, *, window_segments: int = FILE_WINDOW_SEGMENTS) -> dict[str, Any]:
    """Classify one video file (audio from its own audio track, or from ``audio_path``), a window
    of ``window_segments`` segments at a time, each in a temporary store.

    The file is cut to whole segments of the system's grid (at least one). Each segment is framed
    on its own (audio) and keeps the frames at its own times (video), so a window gives its
    segments the same values as the whole file would: memory is bounded by a window, not by the
    file's length. Each window decodes only its own span: its frames from the keyframe before it,
    its audio from its offset (an audio track soundfile cannot seek in, such as an mp4's AAC, is
    decoded once to a temporary WAV first, see :func:`featstore.media.seekable_audio`). The
    system's models are loaded once, in the first window. Returns ``{"file", "label",
    "probability", "classes", "clip": [class probabilities], "per_segment": [[...], ...]}``; a
    file that cannot be decoded raises :class:`~featstore.errors.MediaError` naming it, once.
    """
    import os
    import tempfile

    from featstore.errors import MediaError
    from featstore.media import probe_duration_s, seekable_audio

    video_path = os.path.abspath(video_path)
    audio_path = os.path.abspath(audio_path) if audio_path else video_path
    for path in {video_path, audio_path}:
        if not os.path.isfile(path):
            raise MediaError(f"{path}: no such file")
    duration_s = probe_duration_s(video_path)
    if not np.isfinite(duration_s) or duration_s < system.segment_s * 0.5:
        raise MediaError(f"{video_path}: cannot read its duration, or shorter than one {system.segment_s} s segment")
    n_segments = max(1, int(duration_s / system.segment_s + 1e-3))  # whole segments; a tail shorter than one is dropped
    per_segment, leaves = [], {}
    with tempfile.TemporaryDirectory() as work:
        if _reads_audio(system):
            audio_path = seekable_audio(audio_path, work)
        for first in range(0, n_segments, window_segments):
            window, window_leaves = predict_file_window(system, video_path, audio_path, first, min(window_segments, n_segments - first))
            per_segment.append(window)
            for key, values in window_leaves.items():
                leaves.setdefault(key, []).append(values)
    means = {key: np.concatenate(parts).astype(np.float64).mean(axis=0) for key, parts in leaves.items()}
    clip = _clip_probabilities(system.decision, means)
    best = int(np.argmax(clip))
    return {"file": video_path, "label": system.classes[best], "probability": float(clip[best]), "classes": system.classes,
            "clip": clip.round(6).tolist(), "per_segment": np.concatenate(per_segment).round(6).tolist()}


def _reads_audio(system: System) -> bool:
    """Whether one of the system's inputs is extracted from audio, or a backbone reads the audio itself."""
    from featstore.pipelines.embed import WAVEFORM_KINDS
    from featstore.pipelines.extract_audio import AudioConfig

    return (any(spec["stage"] == AudioConfig.stage for spec in system.inputs.values())
            or any(spec.get("kind") in WAVEFORM_KINDS for spec in system.backbones.values()))


def _leaf_key(item: dict[str, Any]) -> str:
    return f"backbone:{item['model']}" if item["kind"] == "backbone" else f"fusion:{item['head']}"


def _leaves(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """The decision's per-segment sources: its backbones and fusion heads (itself when a fusion)."""
    if decision["kind"] in ("fusion", "backbone"):
        return [decision]
    return [leaf for item in decision["inputs"] for leaf in _leaves(item)]


def _clip_probabilities(decision: dict[str, Any], means: dict[str, np.ndarray]) -> np.ndarray:
    """(class,) float64 clip probabilities from each leaf's mean over the file's segments, as
    :func:`apply_decision` computes them from whole-file predictions (ensembles rounded to float32)."""
    if decision["kind"] in ("fusion", "backbone"):
        return means[_leaf_key(decision)]
    parts = [_clip_probabilities(item, means)[None, :] for item in decision["inputs"]]  # (1, class) each
    return combine(np.stack(parts), decision["rule"])[0].astype(np.float32).astype(np.float64)


def predict_file_window(system: System, video_path: str, audio_path: str, first: int, n_segments: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Segments ``first .. first + n_segments - 1`` of a file (see :func:`predict_file`), in a
    temporary store: their (segment, class) displayed probabilities and each leaf's (segment,
    class) probabilities, keyed ``"backbone:MODEL"`` or ``"fusion:HEAD"``.

    ``video_path`` and ``audio_path`` are absolute; ``audio_path`` should be one soundfile reads
    (:func:`featstore.media.seekable_audio`), else each window decodes it from its start.
    """
    import contextlib
    import io
    import os
    import tempfile

    import pandas as pd

    from featstore.clips import normalise_clips
    from featstore.errors import MediaError
    from featstore.fingerprint import file_fingerprint
    from featstore.store import init_store

    start_s = first * system.segment_s
    clip_id = os.path.splitext(os.path.basename(video_path))[0]
    with tempfile.TemporaryDirectory() as work:
        store = init_store(os.path.join(work, "file.zarr"), segment_s=system.segment_s, clip_duration_s=n_segments * system.segment_s, classes=system.classes)
        root = os.path.commonpath([os.path.dirname(video_path), os.path.dirname(audio_path)])
        store.set_dataset_root(root)
        store.add_clips(normalise_clips(pd.DataFrame({
            "clip_id": [clip_id], "split": ["test"], "audio_path": [os.path.relpath(audio_path, root)], "video_path": [os.path.relpath(video_path, root)],
            "duration_s": [n_segments * system.segment_s], "audio_fingerprint": [file_fingerprint(audio_path)], "video_fingerprint": [file_fingerprint(video_path)],
        })))
        check_compatible(store, system)
        report = PredictReport(name=system.name, system=system.digest)
        with contextlib.redirect_stderr(io.StringIO()):  # each stage's own failure line: the error below says it once
            _upstream(store, system, [clip_id], report, 0, None, False, EmbedConfig.batch_units, source_start_s=start_s)
        rows = np.array([0])
        if not all(store.has_array(p) and len(_done_rows(store, p)) for p in decision_inputs(system.decision)):
            raise MediaError(f"{video_path}: {_upstream_failure(store.failures, clip_id)}")
        leaves = {}
        for leaf in _leaves(system.decision):
            if leaf["kind"] == "backbone":
                leaves[_leaf_key(leaf)] = _segment_values(store, f"predictions/{leaf['model']}", rows)[0]
            else:
                leaves[_leaf_key(leaf)] = apply_decision(store, system, leaf, rows)[0]
        return segment_probabilities(store, system, rows)[0], leaves
