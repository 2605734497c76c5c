"""`featstore train-joint`: an acoustic encoder trained jointly with a scene classifier that also sees a
cached, frozen visual embedding of the same window (Chen et al. 2022), off the store.

- Audio: windows of the segment grid, (bin, frame, 2) static channels (the model's first layer
  derives the deltas), in batches of Phase I's training loader (:mod:`featstore.loader`: the
  clip-block shuffle, each clip decompressed once per epoch, batches assembled in
  ``loader_workers`` threads, each batch a function of the seed, the epoch and its number), the
  visual input of each window served beside it (the loader's ``paired`` input).
- Visual: the cached ``embeddings/{visual_model}/{visual_layer}`` of the same clip, its frames
  averaged over the window's segments (:class:`CachedVisual`). The visual encoder never runs and no
  frame is read: every training step costs only the audio encoder and the head. (The benchmark's
  baseline, :class:`FrameVisual`, feeds the frames instead, through the frozen encoder.)
- Validation carved from ``train`` by recording location (:func:`validation_split`; docs/explanation/design.md); mixup
  with one coefficient for the audio window, the visual embedding and the soft label; KL-divergence
  loss plus L2 on the head; Adam; the best epoch by validation loss is kept.
- The model (:func:`featstore.models.joint.build_joint_model`, layers ``fc1024``, ``fc10``,
  ``softmax``) is registered like a backbone (:func:`featstore.registry.register_model`), its entry
  naming the visual input (``config["visual_input"]``: array and fingerprint) so that ``embed`` can
  feed it (:func:`visual_inputs`), with segment- and clip-level metrics on ``split``.
- No ``visual_model``: the same encoder and head on audio alone (the audio-only baseline).
- ``epoch_seconds`` in the entry's config: the wall time of each epoch (its validation pass
  included; the first also traces the graph), what ``benchmarks/bench_joint.py`` compares; beside
  it the per-epoch ``history``.
- Progress (:mod:`featstore.progress`): one logged line per epoch, a bar within the epoch on a
  terminal (``progress=False`` turns it off), the history as ``models/NAME.history.csv`` and
  TensorBoard event files in the store.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass
from typing import Any

import numpy as np

from featstore.constants import SPLITS
from featstore.errors import ConfigError
from featstore.metrics import evaluate_predictions
from featstore.models.head import compile_for_training
from featstore.models.joint import ENCODERS
from featstore.loader import TrainingBatches, training_labels
from featstore.pipelines.config import TrainingConfig, option, option_of
from featstore.pipelines.train_backbone import TrainConfig
from featstore.progress import TrainingProgress, keras_callback
from featstore.packed import packed_segment_embeddings
from featstore.registry import load_keras, register_model, save_training_clips
from featstore.store import Store, StoreError
from featstore.chunks import ClipReader
from featstore.sources import StoreSource, Units
from featstore.splits import validation_split
from featstore.tfdata import tf_dataset


@dataclass
class JointConfig(TrainingConfig):
    """Every choice of a joint training run (recorded with the registered model); each option's
    only default. ``name`` has none: the command requires it."""

    name: str = option(MISSING, "Name the joint model is registered under (embed/fuse/ensemble take it like a backbone).")
    audio_input: str = option("audio/mel", "Audio array the encoder reads.")
    visual_model: str | None = option(None, "Model whose cached embeddings are the visual input (omit: audio only, the baseline).", kind=str)
    visual_layer: str = option("fc1024", "Its embedding layer.")
    encoder: str = option("cnn1d", "Acoustic encoder.", choices=ENCODERS)
    widths: tuple[int, ...] = option((64, 128, 256), "Comma-separated encoder widths.", min=1)
    head_units: int = option(1024, "Width of the head's FC(1024) layer.", min=1)
    window_s: float | None = option(None, "Audio window in seconds, a whole number of segments (default: one segment).", kind=float, above=0)
    units_per_clip: int | None = option(None, "Windows per clip and epoch, evenly spaced (default: all).", kind=int, min=1)
    split: str = option("evaluate", "Split the registered metrics are computed on.", choices=SPLITS)
    loader_workers: int = option_of(TrainConfig, "loader_workers")


class AudioWindows:
    """(clip row, window) pairs of an audio array, read through the Phase I read path
    (:mod:`featstore.loader`, :class:`~featstore.chunks.ClipReader`): ``index`` lists a clip set's
    windows, ``read`` gives a batch of (window, bin, frame, 2) float32 static channels (the joint
    model derives deltas in its first layer) and one-hot labels, each clip's chunk decompressed
    once per call that uses it: for prediction, which reads windows in row order. Training reads
    through the training loader (``windows``, the :class:`~featstore.sources.Units`).
    """

    def __init__(self, store: Store, input_array: str, window_s: float):
        self.windows = Units(store, input_array, window_s, deltas=False)
        self.reader = ClipReader(store.array(input_array))  # opened once
        self.k = int(round(window_s / store.segment_s))
        #: windows per clip
        self.units = self.windows.count
        self.onehot = np.eye(len(store.classes), dtype=np.float32)
        self.labels = store.label_indices(store.clips["label"])

    def index(self, rows: np.ndarray, units_per_clip: int | None = None) -> np.ndarray:
        return self.windows.index(rows, units_per_clip)

    def read(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clips = {int(row): self.windows.of_clips(self.reader.read(int(row))[None])[0] for row in np.unique(pairs[:, 0])}
        x = np.stack([clips[row][unit] for row, unit in pairs.tolist()]).astype(np.float32)
        return x, self.onehot[self.labels[pairs[:, 0]]]


class CachedVisual:
    """The cached visual embedding of each (clip row, window): ``table`` (clip, window, dim) float32,
    the frames of the window's ``k`` segments averaged; ``rows`` are the clips that have one."""

    def __init__(self, store: Store, model: str, layer: str, k: int, n_windows: int):
        self.path = f"embeddings/{model}/{layer}"
        if not store.has_array(self.path):
            raise StoreError(f"no {layer} embeddings of {model} in the store (featstore embed --model {model} first)")
        values, self.rows = packed_segment_embeddings(store, self.path)  # (clip, segment, dim)
        n, _, self.dim = values.shape
        windows = values[:, : n_windows * k].reshape(n, n_windows, k, self.dim).mean(axis=2)
        self.table = np.zeros((store.n_clips, n_windows, self.dim), np.float32)
        self.table[self.rows] = windows
        self.fingerprint = store.provenance(self.path)["fingerprint"]

    def read(self, pairs: np.ndarray) -> np.ndarray:
        """(batch, dim) float32 for (row, window) ``pairs``."""
        return self.table[pairs[:, 0], pairs[:, 1]]


class FrameVisual:
    """The frames of each (clip row, window), (batch, frames, size, size, 3) uint8, read from
    ``frames_array``: what a visual encoder would have to run on at every step without the cache."""

    def __init__(self, store: Store, frames_array: str, k: int):
        self.store, self.group = store, frames_array.rsplit("/", 1)[0]
        self.per_window = k * int(store.provenance(frames_array)["params"]["frames_per_segment"])
        self.rows = np.flatnonzero(store.done_in(frames_array))
        self.shape = (self.per_window, *store.array(frames_array).shape[2:])

    def read(self, pairs: np.ndarray) -> np.ndarray:
        clip_ids = self.store.clips["clip_id"].to_numpy()
        cache: dict[int, np.ndarray] = {}
        out = []
        for row, unit in pairs:
            if row not in cache:
                cache[row] = self.store.frames(str(clip_ids[row]), group=self.group)[0]
            out.append(cache[row][unit * self.per_window : (unit + 1) * self.per_window])
        return np.stack(out)


def _batches(store: Store, reader: AudioWindows, visual, pairs: np.ndarray, *, shuffle: bool, mixup_alpha: float, config: JointConfig):
    """``tf.data`` batches of ``pairs`` -> ((audio[, visual]), labels) from the training loader
    (:mod:`featstore.loader`): the clip-block shuffle, each clip decompressed once per epoch, the
    visual input served as its ``paired`` input, one mixup coefficient and partner for the audio
    window, the visual input and the label, assembled in ``loader_workers`` threads."""
    batches = TrainingBatches(reader.windows, StoreSource(store, reader.windows, config.loader_workers), reader.labels, len(store.classes), pairs,
                              batch_size=config.batch_size, shuffle=shuffle, seed=config.seed, mixup_alpha=mixup_alpha,
                              workers=config.loader_workers, paired=None if visual is None else visual.read)
    return tf_dataset(batches)


def predict_windows(model, reader: AudioWindows, visual, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(clip, window, class) probabilities of ``model`` on every window of ``rows``."""
    pairs = reader.index(rows)
    probs = []
    for s in range(0, len(pairs), batch_size):
        audio, _ = reader.read(pairs[s : s + batch_size])
        inputs = audio if visual is None else [audio, visual.read(pairs[s : s + batch_size]).astype(np.float32)]
        probs.append(np.asarray(model(inputs, training=False)))
    return np.concatenate(probs).reshape(len(rows), reader.units, -1)


def _epoch_timer():
    """A Keras callback whose ``seconds`` lists each epoch's wall time."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _visual_source(store: Store, config: JointConfig, reader: AudioWindows, frames_encoder, frames_array: str):
    """The visual input's reader: cached embeddings, frames (the benchmark's baseline) or None (audio only)."""
    if config.encoder not in ENCODERS:
        raise ConfigError(f"--encoder must be one of {', '.join(ENCODERS)}, got {config.encoder!r}")
    if store.provenance(config.audio_input).modality != "audio":
        raise ConfigError(f"--audio-input must be an audio array, got {config.audio_input}")
    if frames_encoder is not None:
        return FrameVisual(store, frames_array, reader.k)
    if config.visual_model:
        return CachedVisual(store, config.visual_model, config.visual_layer, reader.k, reader.units)
    return None


def _split_rows(store: Store, config: JointConfig, visual) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(usable rows, train rows, validation rows): clips with audio (and visual) features; validation
    is whole recording locations of the train split (:func:`validation_split`)."""
    clips = store.clips
    usable = store.done_in(config.audio_input)
    if visual is not None:
        usable = usable & np.isin(np.arange(len(clips)), visual.rows)
    row_map = np.flatnonzero(usable)
    train_rows, val_rows = (row_map[r] for r in validation_split(clips[usable].reset_index(drop=True), fraction=config.val_fraction, seed=config.seed))
    training_labels(store, np.concatenate([train_rows, val_rows]))  # every clip trained on has a label
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise StoreError("train-joint needs train clips with audio and visual features from at least two recording locations (one goes to validation)")
    return row_map, train_rows, val_rows


def _evaluate(store: Store, model, reader: AudioWindows, visual, rows: np.ndarray, split: str) -> dict[str, Any]:
    """Segment- and clip-level metrics of ``model`` on the labelled ``split`` clips among ``rows``."""
    rows = rows[store.clips["split"].to_numpy()[rows] == split]
    labels = store.label_indices(store.clips["label"])[rows]
    rows, labels = rows[labels >= 0], labels[labels >= 0]
    return evaluate_predictions(predict_windows(model, reader, visual, rows), labels, store.classes) if len(rows) else {}


def train_joint(store: Store, config: JointConfig, *, frames_encoder=None, frames_array: str = "frames/rgb", progress: bool | None = None) -> dict[str, Any]:
    """Train, keep the best epoch, evaluate on ``config.split``, register; return the registry entry.

    ``progress``: the within-epoch bar (None: on a terminal; False: never).

    ``frames_encoder`` (benchmark only): a frozen Keras model (frames -> embedding) run on the
    window's frames of ``frames_array`` at every step instead of reading the cached embeddings;
    the model is then measured, not registered.
    """
    import keras

    from featstore.models.joint import build_joint_model

    from featstore.seeding import seed_everything

    seed_everything(config.seed)  # every seed and TensorFlow op determinism: same seed, same weights
    window_s = config.window_s or store.segment_s
    reader = AudioWindows(store, config.audio_input, window_s)
    visual = _visual_source(store, config, reader, frames_encoder, frames_array)
    usable, train_rows, val_rows = _split_rows(store, config, visual)
    train_pairs, val_pairs = reader.index(train_rows, config.units_per_clip), reader.index(val_rows, config.units_per_clip)
    model = build_joint_model(
        audio_shape=reader.read(train_pairs[:1])[0].shape[1:], visual_dim=getattr(visual, "dim", None), visual_encoder=frames_encoder,
        frames_shape=getattr(visual, "shape", None), encoder=config.encoder, widths=config.widths, n_classes=len(store.classes),
        frames_per_segment=reader.windows.frames_per_segment, delta_width=reader.windows.delta_width,
        head_units=config.head_units, l2=config.l2, name=config.name,
    )
    compile_for_training(model, config.lr)
    epoch_s = _epoch_timer()
    watch = TrainingProgress(config.name, config.epochs, store=store if frames_encoder is None else None, kind="models", bar=progress)
    with tempfile.TemporaryDirectory() as work:
        best = os.path.join(work, f"{config.name}.keras")
        history = model.fit(
            _batches(store, reader, visual, train_pairs, shuffle=True, mixup_alpha=config.mixup_alpha, config=config),
            validation_data=_batches(store, reader, visual, val_pairs, shuffle=False, mixup_alpha=0.0, config=config),
            epochs=config.epochs, shuffle=False, verbose=0,
            callbacks=[keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True), epoch_s, keras_callback(watch)],
        )
        losses = history.history["val_loss"]
        best_epoch = int(np.argmin(losses))
        metrics = {
            "best_epoch": best_epoch + 1, "val_loss": float(losses[best_epoch]),
            "val_accuracy": float(history.history["val_categorical_accuracy"][best_epoch]),
            config.split: _evaluate(store, load_keras(best), reader, visual, usable, config.split),
        }
        identifiers = store.clips["identifier"].to_numpy()
        cfg = {
            **asdict(config), "window_s": window_s, "metrics": metrics, "epoch_seconds": epoch_s.seconds, "history": watch.history(),
            "n_train_clips": len(train_rows), "n_val_clips": len(val_rows), "val_locations": sorted(set(identifiers[val_rows])),
            "visual_input": {"array": visual.path, "fingerprint": visual.fingerprint} if isinstance(visual, CachedVisual) else None,
        }
        if frames_encoder is not None:
            return {"name": config.name, "config": cfg}
        entry = register_model(store, config.name, best, input_array=config.audio_input, config=cfg)
    save_training_clips(store, config.name, store.clips["clip_id"].to_numpy()[train_rows].tolist())
    return entry


_VISUAL: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}


def visual_inputs(store: Store, entry: dict[str, Any], clip_id: str) -> np.ndarray | None:
    """The second input of a registered joint model for one clip: (segment, dim) float32, the cached
    visual embedding of each segment (None for a single-input model). ``embed`` feeds
    ``[audio windows, visual_inputs(...)]`` when it is not None."""
    source = entry.get("config", {}).get("visual_input")
    if not source:
        return None
    key = (store.url, source["array"], source["fingerprint"])
    if key not in _VISUAL:  # read (packed) once per process, not once per clip
        _VISUAL[key] = packed_segment_embeddings(store, source["array"])
    values, rows = _VISUAL[key]
    row = int(np.flatnonzero(store.clips["clip_id"].to_numpy() == clip_id)[0])
    at = np.searchsorted(rows, row)
    if at >= len(rows) or rows[at] != row:
        raise StoreError(f"clip {clip_id}: no {source['array']} embedding, the joint model's visual input")
    return values[at]
