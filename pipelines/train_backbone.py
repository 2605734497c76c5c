"""`featstore train-backbone`: Phase I training of one backbone from the store.

- Data: windows of the segment grid from ``train`` clips only. Audio windows are (bin, frame, 6),
  with deltas derived at read time; visual inputs are single frames (size, size, 3). Validation is
  carved from ``train`` by recording location (``identifier``), so no location is on both sides;
  ``evaluate`` and ``test`` are never touched (DESIGN 6).
- Input pipeline (DESIGN 7.9): tf.data shuffles and batches window *indices*, then a batch reader
  (parallel calls, prefetch) reads each clip's chunk once per batch from the Zarr store. The store
  is never loaded whole.
- Mixup on inputs (``mixup_alpha``; 0 turns it off) with the matching soft labels; KL-divergence loss
  against them, plus L2 on the head (``l2``); Adam; the best epoch by validation loss is kept.
- The best model is saved as ``.keras`` in the store and registered (see :mod:`featstore.registry`)
  with its config, validation metrics and the list of clips it was trained on.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featstore.registry import register_model, save_training_clips
from featstore.store import Store


@dataclass
class TrainConfig:
    """Every training choice (recorded with the registered model)."""

    model: str
    input_array: str
    window_s: float
    arch: str = "inception"
    widths: tuple[int, ...] = (64, 128, 256)
    head_units: int = 1024
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    mixup_alpha: float = 0.4
    l2: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    weights_file: str | None = None
    #: windows (audio) or frames (visual) used per clip and epoch, evenly spaced; None = all
    units_per_clip: int | None = None
    #: further visual-backbone keywords, e.g. {"arch": "tiny", "widths": [16, 32]} (featstore.models.visual)
    extra: dict[str, Any] = field(default_factory=dict)


def validation_split(clips, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of the ``train`` split, whole recording locations on each side."""
    train_rows = np.flatnonzero(clips["split"].to_numpy() == "train")
    ids = clips["identifier"].to_numpy()[train_rows]
    locations = sorted(set(ids))
    rng = np.random.default_rng(seed)
    rng.shuffle(locations)
    target = fraction * len(train_rows)
    chosen, count = set(), 0
    for loc in locations:
        if count >= target or len(chosen) == len(locations) - 1:
            break
        chosen.add(loc)
        count += int((ids == loc).sum())
    in_val = np.array([i in chosen for i in ids])
    return train_rows[~in_val], train_rows[in_val]


def mixup(x: np.ndarray, y: np.ndarray, alpha: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mix each example with a random partner: x' = l x + (1 - l) x[p], same for the soft labels."""
    if alpha <= 0:
        return x, y
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    perm = rng.permutation(len(x))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return lam.reshape(shape) * x + (1 - lam.reshape(shape)) * x[perm], lam[:, None] * y + (1 - lam[:, None]) * y[perm]


class WindowReader:
    """Reads batches of (clip row, unit) windows: audio segment windows or visual frames."""

    def __init__(self, store: Store, input_array: str, window_s: float):
        self.store, self.input_array = store, input_array
        self.visual = input_array.endswith("/rgb")
        self.group = input_array.rsplit("/", 1)[0]
        self.labels = store.label_indices(store.clips["label"])
        self.n_classes = len(store.classes)
        if self.visual:
            self.units = store.array(input_array).shape[1]
        else:
            self.k = int(round(window_s / store.segment_s))
            params = store.provenance(input_array)["params"]
            if params["store_deltas"]:
                raise ValueError(f"{input_array} stores deltas; train from an array of static channels")
            self.fps = int(params["frames_per_segment"])
            self.delta_width = int(params["audio"]["delta_width"])
            self.units = store.n_segments // self.k

    def index(self, rows: np.ndarray, units_per_clip: int | None = None) -> np.ndarray:
        """(row, unit) pairs of ``rows``, (n, 2) int64: every unit, or ``units_per_clip`` evenly spaced ones."""
        units = range(self.units) if not units_per_clip else np.unique(np.linspace(0, self.units - 1, units_per_clip).round().astype(int))
        return np.array([(r, u) for r in rows for u in units], dtype=np.int64).reshape(-1, 2)

    def read(self, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x (batch, ...) float32, one-hot labels (batch, classes)).

        Each clip's chunk is read once per batch; audio deltas are derived only for the windows
        the batch uses (deltas are per segment, so a window's deltas need nothing around it).
        """
        from featstore.audio import add_deltas

        clip_ids = self.store.clips["clip_id"].to_numpy()
        cache: dict[int, np.ndarray] = {}
        xs = []
        for row, unit in pairs:
            if row not in cache:
                cache[row] = (
                    self.store.frames(str(clip_ids[row]), group=self.group)[0]
                    if self.visual
                    else self.store.array(self.input_array)[row]
                )
            data = cache[row]
            if self.visual:
                xs.append(data[unit])
            else:
                static = data[..., unit * self.k * self.fps : (unit + 1) * self.k * self.fps].astype(np.float32)
                xs.append(add_deltas(static, self.fps, self.delta_width).transpose(1, 2, 0))  # (bin, frame, 6)
        y = np.eye(self.n_classes, dtype=np.float32)[self.labels[pairs[:, 0]]]
        return np.stack(xs).astype(np.float32, copy=False), y


def dataset(reader: WindowReader, pairs: np.ndarray, *, batch_size: int, shuffle: bool, alpha: float, seed: int):
    """tf.data over window indices: shuffle, batch, map a batch reader in parallel, prefetch."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sample_x, _ = reader.read(pairs[:1])

    def read_batch(idx):
        x, y = reader.read(idx)
        return mixup(x, y, alpha, rng) if alpha > 0 else (x, y)

    ds = tf.data.Dataset.from_tensor_slices(pairs)
    if shuffle:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda idx: tf.numpy_function(read_batch, [idx], [tf.float32, tf.float32]), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.map(lambda x, y: (tf.ensure_shape(x, (None, *sample_x.shape[1:])), tf.ensure_shape(y, (None, reader.n_classes))))
    return ds.prefetch(tf.data.AUTOTUNE)


def train_backbone(store: Store, config: TrainConfig) -> dict[str, Any]:
    """Train, keep the best epoch, save and register the model; return its registry entry."""
    import keras

    from featstore.models import MODELS, build_model

    keras.utils.set_random_seed(config.seed)
    clips = store.clips
    done = set(store.ledger(config.input_array).entries)
    usable = clips["clip_id"].isin(list(done)).to_numpy()
    train_rows, val_rows = validation_split(clips[usable].reset_index(drop=True), fraction=config.val_fraction, seed=config.seed)
    row_map = np.flatnonzero(usable)
    train_rows, val_rows = row_map[train_rows], row_map[val_rows]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError("need train clips from at least two recording locations (one goes to validation)")
    reader = WindowReader(store, config.input_array, config.window_s)
    train_pairs, val_pairs = reader.index(train_rows, config.units_per_clip), reader.index(val_rows, config.units_per_clip)
    input_shape = reader.read(train_pairs[:1])[0].shape[1:]
    backbone = {"weights_file": config.weights_file, **config.extra} if MODELS[config.model][0] == "visual" else {"arch": config.arch, "widths": tuple(config.widths)}
    model = build_model(config.model, input_shape=input_shape, n_classes=len(store.classes), head_units=config.head_units, l2=config.l2, **backbone)
    model.compile(optimizer=keras.optimizers.Adam(config.lr), loss=keras.losses.KLDivergence(), metrics=["categorical_accuracy"])
    with tempfile.TemporaryDirectory() as work:
        best = os.path.join(work, f"{config.model}.keras")
        history = model.fit(
            dataset(reader, train_pairs, batch_size=config.batch_size, shuffle=True, alpha=config.mixup_alpha, seed=config.seed),
            validation_data=dataset(reader, val_pairs, batch_size=config.batch_size, shuffle=False, alpha=0.0, seed=config.seed),
            epochs=config.epochs,
            shuffle=False,  # the tf.data pipeline shuffles window indices itself
            verbose=0,
            callbacks=[keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True)],
        )
        losses = history.history["val_loss"]
        best_epoch = int(np.argmin(losses))
        trained_on = clips["clip_id"].to_numpy()[train_rows].tolist()
        metrics = {"best_epoch": best_epoch + 1, "val_loss": float(losses[best_epoch]), "val_accuracy": float(history.history["val_categorical_accuracy"][best_epoch])}
        cfg = {**asdict(config), "metrics": metrics, "n_train_clips": len(train_rows), "n_val_clips": len(val_rows)}
        entry = register_model(store, config.model, best, input_array=config.input_array, config=cfg)
    save_training_clips(store, config.model, trained_on)
    return entry
