"""`featstore train-backbone`: Phase I training of one backbone from the store.

- Data: windows of the segment grid from ``train`` clips only. Audio windows are the static channels
  (bin, frame, 2); the model's first layer derives delta and delta-delta channels
  (:class:`featstore.models.deltas.SpectrogramDeltas`, ``deltas="model"``, so the GPU does it), or,
  with ``deltas="loader"``, the loader does and the model takes (bin, frame, 6) as models trained
  before the layer existed. Visual inputs are single frames (size, size, 3). Validation is
  carved from ``train`` by recording location (``identifier``), so no location is on both sides;
  ``evaluate`` and ``test`` are never touched (docs/explanation/design.md).
- Input pipeline (docs/explanation/loader-randomness.md): :mod:`featstore.loader`, a clip-block shuffle that decompresses each
  clip once per epoch, mixes (and with ``deltas="loader"`` derives deltas) per batch and assembles batches in ``loader_workers``
  threads, fed to Keras through :func:`featstore.tfdata.tf_dataset`. The store is never loaded whole.
  Where the loader makes no new values (validation; training without mixup), batches stay in the
  stored dtype (uint8 frames, float16 windows, ``widen=False``) and the model's input casts them
  to float32, exactly: the same values, without a float32 batch written on the host (for frames
  1.5x-1.9x the loader's rate, docs/benchmarks/loader.md) and a quarter or half of the bytes to
  the device.
- Visual models: random resized crop and horizontal flip of the uint8 frames (``augment``).
- Mixup on inputs (``mixup_alpha``; 0 turns it off) with the matching soft labels; KL-divergence loss
  against them, plus L2 on the head (``l2``); Adam; the best epoch by validation loss is kept.
- ``augment_on``: where mixup and the frames' crop and flip are applied. ``"host"``: by the loader's
  threads, into float32 batches. ``"device"``: the loader serves the stored dtype with the batch's
  draws and the model's device applies them (:mod:`featstore.models.device_augment`; the model is
  trained inside a :class:`~featstore.models.device_augment.DeviceAugmentTrainer` and saved
  without it). ``"auto"`` (the default): ``"device"`` when TensorFlow sees a GPU, else ``"host"``
  (on a CPU both run on the same cores; the host's threads then overlap the training step); the
  registered config records the choice made. The loader's deltas (``deltas="loader"``) need ``"host"``.
- ``mixed_precision``: Keras ``mixed_float16`` while the model is built and trained (for GPUs).
- ``devices``: N > 1 trains under ``tf.distribute.MirroredStrategy`` over N GPUs of this machine (or
  logical CPU devices; :mod:`featstore.distribute`): the model is built and compiled in the
  strategy's scope, each replica reads its own share of every epoch
  (:func:`featstore.tfdata.tf_distributed_dataset`) in batches of ``batch_size / N`` (``batch_size``
  is the global batch, the Keras convention). Validation batches are split across the replicas
  by the strategy, every window once.
- The best model is saved as ``.keras`` in the store and registered (see :mod:`featstore.registry`)
  with its config, validation metrics, per-epoch ``history`` and the list of clips it was trained on.
- Progress (:mod:`featstore.progress`): one logged line per epoch, a bar within the epoch on a
  terminal (``progress=False`` turns it off), the history as ``models/NAME.history.csv`` and
  TensorBoard event files in the store.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featstore.errors import ConfigError
from featstore.loader import AUGMENT_ON as LOADER_AUGMENT_ON, DEFAULT_BLOCK_CLIPS, training_batches
from featstore.models import MODELS
from featstore.models.audio import ARCHS
from featstore.models.head import compile_for_training
from featstore.pipelines.config import TrainingConfig, option
from featstore.progress import TrainingProgress, keras_callback
from featstore.registry import register_model, save_training_clips
from featstore.splits import validation_split
from featstore.store import Store
from featstore.tfdata import tf_dataset, tf_distributed_dataset


#: choices of ``TrainConfig.deltas``
DELTAS = ("model", "loader")
#: choices of ``TrainConfig.augment_on`` (``"auto"``: device with a GPU, see the module docstring)
AUGMENT_ON = ("auto", *LOADER_AUGMENT_ON)


@dataclass
class TrainConfig(TrainingConfig):
    """Every training choice (recorded with the registered model); each option's only default.

    ``model`` has no default; ``input_array`` and ``window_s`` default to the model's input and
    one segment of the store (:meth:`resolved`, which :func:`train_backbone` applies). ``extra``: further visual-backbone keywords, e.g.
    ``{"arch": "tiny", "widths": [16, 32]}`` (:mod:`featstore.models.visual`).
    """

    model: str = option(dataclasses.MISSING, "Backbone to train.", choices=tuple(MODELS))
    input_array: str | None = option(None, "Input array (default: audio/mel, audio/gam, audio/cqt or frames/rgb by model).", kind=str, flag="--input")
    window_s: float | None = option(None, "Audio window in seconds, a whole number of segments (default: the segment).", kind=float, above=0)
    arch: str = option("inception", "Audio backbone.", choices=ARCHS)
    widths: tuple[int, ...] = option((64, 128, 256), "Comma-separated channels per stage of the audio backbone.", min=1)
    head_units: int = option(1024, "Width of the head's FC(1024) layer.", min=1)
    weights_file: str | None = option(None, "Local ImageNet weights file for vis-inc / vis-conv (never downloaded).", kind=str, flag="--weights")
    units_per_clip: int | None = option(None, "Windows (audio) or frames (visual) per clip and epoch, evenly spaced (default: all).", kind=int, min=1)
    augment: bool = option(True, "Random resized crop + horizontal flip of training frames (visual models only).")
    mixed_precision: bool = option(False, "Keras mixed_float16 (for GPUs).")
    devices: int = option(1, "Devices to train on (tf.distribute.MirroredStrategy): GPUs of this machine, else logical CPU devices; "
                             "--batch-size is the global batch, split evenly across them.", min=1)
    block_clips: int = option(DEFAULT_BLOCK_CLIPS, "Clips per shuffle block of the loader (see the training guide, the training loader).", min=1)
    run_clips: int = option(1, "Shuffle clips as runs of this many neighbours: fewer, larger requests from an object store "
                               "(see the guide's training loader; 1 = every clip on its own).", min=1)
    loader_workers: int = option(2, "Loader threads (0 = in the training thread).", min=0)
    augment_on: str = option("auto", "Where mixup and the frames' crop and flip run: host (loader threads), device "
                                     "(the GPU, from the loader's draws), auto (device when TensorFlow sees a GPU).", choices=AUGMENT_ON)
    deltas: str = option("model", "Audio deltas computed by the model's first layer, or by the loader (a 6-channel model).", choices=DELTAS)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size % self.devices:
            raise ConfigError(f"--batch-size {self.batch_size} must be a multiple of --devices {self.devices} (it is the global batch, split evenly)")
        if self.augment_on == "device" and self.loader_deltas:
            raise ConfigError("--augment-on device mixes on the accelerator, after which the model derives the deltas: "
                              "use --deltas model, or --augment-on host")

    @property
    def loader_deltas(self) -> bool:
        """Whether the loader computes the deltas (audio models with ``deltas="loader"``)."""
        return self.deltas == "loader" and MODELS[self.model][0] == "audio"

    @property
    def nothing_to_augment(self) -> bool:
        """Whether there is neither mixup nor a crop and flip to apply (the loader serves the stored values as they are)."""
        return self.mixup_alpha == 0 and (MODELS[self.model][0] == "audio" or not self.augment)

    def resolved(self, store: Store) -> TrainConfig:
        """This config with ``input_array`` and ``window_s`` filled in from the model and ``store``,
        and ``augment_on="auto"`` made ``"device"`` or ``"host"``: the device when TensorFlow sees a
        GPU (it is imported to look), unless the loader computes the deltas or there is nothing to
        apply (no mixup, and no crop and flip), where the host serves the stored values anyway."""
        augment_on = self.augment_on
        if augment_on == "auto":
            augment_on = "host"
            if not (self.loader_deltas or self.nothing_to_augment):
                import tensorflow as tf

                augment_on = "device" if tf.config.list_physical_devices("GPU") else "host"
        return dataclasses.replace(self, input_array=self.input_array or MODELS[self.model][1], window_s=self.window_s or store.segment_s,
                                   augment_on=augment_on)


def train_backbone(store: Store, config: TrainConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Train, keep the best epoch, save and register the model; return its registry entry.

    ``progress``: the within-epoch bar (None: on a terminal; False: never); the epoch lines are
    logged either way (:mod:`featstore.progress`)."""
    import keras

    config = config.resolved(store)
    previous = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(store, config, progress)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _train(store: Store, config: TrainConfig, progress: bool | None) -> dict[str, Any]:
    import keras

    from featstore.distribute import mirrored_strategy
    from featstore.models import build_model
    from featstore.models.device_augment import DeviceAugmentTrainer

    from featstore.seeding import seed_everything

    seed_everything(config.seed)  # every seed and TensorFlow op determinism: same seed, same weights
    strategy = mirrored_strategy(config.devices) if config.devices > 1 else None  # refuses missing devices first
    kind, modality = MODELS[config.model][0], store.provenance(config.input_array).modality
    if modality and modality != kind:
        raise ConfigError(f"--model {config.model} trains on {kind} arrays, and {config.input_array} holds {modality} values: "
                          f"give --input {'an' if kind == 'audio' else 'a'} {kind} array (the default: {MODELS[config.model][1]})")
    clips = store.clips
    usable = store.done_in(config.input_array)
    if not usable.any():
        stage = "extract-frames" if kind == "visual" else "extract-audio"
        raise ConfigError(f"no clip is done in {config.input_array}: run featstore {stage} first (after featstore ingest)")
    train_rows, val_rows = validation_split(clips[usable].reset_index(drop=True), fraction=config.val_fraction, seed=config.seed)
    row_map = np.flatnonzero(usable)
    train_rows, val_rows = row_map[train_rows], row_map[val_rows]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ConfigError("need train clips from at least two recording locations (one goes to validation)")
    visual = kind == "visual"
    if config.deltas not in DELTAS:
        raise ConfigError(f"deltas must be one of {', '.join(DELTAS)}, got {config.deltas!r}")
    loader_deltas = config.loader_deltas
    common = dict(window_s=config.window_s, deltas=loader_deltas, units_per_clip=config.units_per_clip, batch_size=config.batch_size,
                  block_clips=config.block_clips, run_clips=config.run_clips, seed=config.seed, workers=config.loader_workers)
    # the stored dtype wherever the loader makes no new values: the model's input casts it, exactly
    train = training_batches(store, config.input_array, rows=train_rows, shuffle=True, mixup_alpha=config.mixup_alpha,
                             augment=config.augment and visual, widen=loader_deltas or config.mixup_alpha > 0,
                             augment_on=config.augment_on, **common)
    val = training_batches(store, config.input_array, rows=val_rows, shuffle=False, widen=loader_deltas, **common)
    input_shape = train.units.example_shape
    if visual:
        backbone = {"weights_file": config.weights_file, **config.extra}
    else:
        in_model = {"frames_per_segment": train.units.frames_per_segment, "delta_width": train.units.delta_width} if config.deltas == "model" else {}
        backbone = {"arch": config.arch, "widths": tuple(config.widths), **in_model}
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(config.model, input_shape=input_shape, n_classes=len(store.classes), head_units=config.head_units, l2=config.l2, **backbone)
        trainer = DeviceAugmentTrainer(model) if config.augment_on == "device" else model  # the same weights
        compile_for_training(trainer, config.lr)
    watch = TrainingProgress(config.model, config.epochs, store=store, kind="models", bar=progress)
    with tempfile.TemporaryDirectory() as work:
        best, best_weights = os.path.join(work, f"{config.model}.keras"), os.path.join(work, "best.weights.h5")
        history = trainer.fit(
            tf_distributed_dataset(strategy, train) if strategy else tf_dataset(train),
            validation_data=tf_dataset(val),  # under a strategy, each global batch split across the replicas
            epochs=config.epochs,
            shuffle=False,  # the loader reshuffles every epoch itself
            verbose=0,
            callbacks=[keras.callbacks.ModelCheckpoint(best_weights, monitor="val_loss", save_best_only=True, save_weights_only=True),
                       keras_callback(watch)],
        )
        trainer.load_weights(best_weights)
        model.save(best)  # the model alone: it takes x, whatever trained it
        losses = history.history["val_loss"]
        best_epoch = int(np.argmin(losses))
        trained_on = clips["clip_id"].to_numpy()[train_rows].tolist()
        metrics = {"best_epoch": best_epoch + 1, "val_loss": float(losses[best_epoch]), "val_accuracy": float(history.history["val_categorical_accuracy"][best_epoch])}
        cfg = {**asdict(config), "metrics": metrics, "history": watch.history(), "n_train_clips": len(train_rows), "n_val_clips": len(val_rows)}
        entry = register_model(store, config.model, best, input_array=config.input_array, config=cfg)
    save_training_clips(store, config.model, trained_on)
    return entry
