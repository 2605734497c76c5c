"""`featstore fuse`: Phase II, a head trained on cached embeddings: a Fusion Layer (f1..f6) and
FC(10)-Softmax, the visual-embedding ``mlp`` or the joint-modeling ``concat`` head
(:mod:`featstore.models.fusion`). ``mlp`` and ``concat`` read any embedding layer (``layer``, default
``fc1024``), e.g. the ``avg_pool`` output of a keras application embedded with ``embed --layer``;
``concat`` takes models of different widths (stacked zero-padded, each sliced back to its own width).

The backbones are never run: only ``embeddings/{model}/{layer}`` arrays are read, once, whole
(:func:`featstore.packed.packed_segment_embeddings`, packed and cached), into one (clip, segment, model,
dim) float32 array. Visual models' frames are averaged per segment, so every example is one segment
of the grid with all the selected models' embeddings of the same second.

Training, at segment level, on ``train`` clips only; validation is carved from ``train`` by
recording location (the same rule as Phase I), the best epoch by validation log-loss is kept:

- the whole embedding set sits in device memory (``tf.constant`` on the GPU when there is one) and
  each epoch is one compiled TensorFlow function that slices its batches there: no per-batch reads,
  no per-batch Python;
- mixup (``mixup_alpha``): each example mixed with a random partner, the same coefficient for every
  embedding, and the soft labels likewise;
- joint audio-video mixup (``joint_mixup``, Wang et al. 2022), our reading of it: on that fraction
  of each epoch's examples, the audio embeddings and the visual embeddings are mixed with the same
  partner but independent coefficients ``l_a``, ``l_v`` ~ Beta(alpha, alpha), and the label with
  ``(l_a + l_v) / 2``. It needs both modalities (with one it is plain mixup);
- KL-divergence loss plus L2 on the FC(10) kernel; Adam.

Evaluation: segment-level and clip-level (mean of the segments' probabilities) metrics on ``split``
(default ``evaluate``), see :mod:`featstore.metrics`. The run is saved with :mod:`featstore.runs`:
``predictions/{run}`` for every clip that has all the embeddings (all splits, so ``test`` clips get a
submission), the record with config and metrics, and the trained head as ``runs/{run}.keras``.

Progress (:mod:`featstore.progress`): one logged line per epoch (each epoch is one compiled call, so
there is no bar within it), the history (``loss``, ``val_log_loss``, ``val_accuracy``, ``seconds``
per epoch) in the run record, as ``runs/NAME.history.csv`` and as TensorBoard event files.

The run also says how many of its training clips each backbone was itself trained on:
the papers train Phase II on the same train split as Phase I, which makes training embeddings more
confident than evaluation ones.
"""

from __future__ import annotations

import time
import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from featstore.constants import SPLITS
from featstore.errors import ConfigError
from featstore.models import HEADS, LAYER_OF, METHODS
from featstore.names import embedding_path, single_name  # noqa: F401 - embedding_path re-exported: predict imports it from here
from featstore.metrics import classification_metrics, evaluate_predictions
from featstore.packed import packed_segment_embeddings
from featstore.pipelines.config import TrainingConfig, option, training_option
from featstore.progress import TrainingProgress
from featstore.registry import training_clips
from featstore.runs import save_run, save_run_head, utc_now, write_predictions
from featstore.store import Store, StoreError
from featstore.splits import validation_split

MODALITIES = ("audio", "visual")
#: ``--method all``: every Fusion Layer method (:data:`featstore.models.METHODS`).
ALL_METHODS = "all"
#: The papers' five backbones, in the order embeddings are stacked (other models follow by name).
PAPER_MODELS = ("aud-mel", "aud-gam", "aud-cqt", "vis-inc", "vis-conv")


@dataclass
class FuseConfig(TrainingConfig):
    """Every choice of a fusion run (recorded with it); each option's only default. ``method`` has
    none (the command takes ``all`` too)."""

    method: str = option(dataclasses.MISSING, "Fusion layer (f1-f3 on fc1024, f4-f6 on fc10; all = the six), mlp (one model's "
                         "embeddings) or concat (joint modeling).", choices=(*METHODS, *HEADS, ALL_METHODS))
    modalities: tuple[str, ...] = option(MODALITIES, "Modalities whose models are fused.", choices=MODALITIES)
    models: tuple[str, ...] | None = option(
        None, "Comma-separated models (default: every model of --modalities with embeddings of the layer); "
        "NAME/LAYER reads that model's LAYER instead (mlp, concat).", kind=str)
    epochs: int = training_option("epochs", 30)
    batch_size: int = training_option("batch_size", 256)
    joint_mixup: float = option(0.0, "FRACTION of examples whose audio and visual embeddings are mixed with independent coefficients.", min=0, max=1)
    name: str | None = option(None, "Run name (default fuse-METHOD-av|audio|visual, fuse-mlp-MODEL; with --method all, NAME-f1 ... NAME-f6).",
                              kind=str, usage=True, check=single_name)
    split: str = option("evaluate", "Split the metrics are computed on.", choices=SPLITS)
    layer: str = option("fc1024", "Embedding layer mlp and concat read, e.g. avg_pool of a keras application (f1-f3 read fc1024, f4-f6 fc10).")
    widths: tuple[int, ...] | None = option(
        None, "Comma-separated hidden FC widths of mlp (default 8192,8192,1024) or concat (projection per modality, "
        "then FC layers; default 512,512).", kind=int, min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.modalities:
            raise ConfigError(f"--modalities must name at least one of {', '.join(MODALITIES)}")

    def methods(self) -> tuple[str, ...]:
        """The methods this config runs: the six Fusion Layer methods for ``all``, else its own."""
        return METHODS if self.method == ALL_METHODS else (self.method,)

    def embedding_layer(self) -> str:
        """The embedding layer this run reads."""
        if self.method not in METHODS + HEADS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS + HEADS)} for one run (all: fuse_methods), got {self.method!r}")
        return LAYER_OF.get(self.method, self.layer)

    def run_name(self, models: tuple[str, ...] = ()) -> str:
        """``name``, else fuse-METHOD-av|audio|visual (``mlp``: fuse-mlp-MODEL, one run per model)."""
        if self.name:
            return self.name
        if self.method == "mlp" and models:
            return f"fuse-mlp-{models[0]}"
        tag = "av" if set(self.modalities) == set(MODALITIES) else self.modalities[0]
        return f"fuse-{self.method}-{tag}"


@dataclass
class FusionData:
    """The embeddings a fusion head reads, aligned: ``x`` (clip, segment, model, dim) float32 for
    store ``rows`` (clip,), with ``labels`` (clip,) (-1 when unlabelled) and each model's modality."""

    x: np.ndarray
    rows: np.ndarray
    labels: np.ndarray
    models: tuple[str, ...]
    modalities: tuple[str, ...]
    layer: str
    #: each model's own embedding width (``x`` is zero-padded to the widest)
    widths: tuple[int, ...]


def model_modality(store: Store, model: str, layer: str) -> str:
    """"visual" when ``model``'s ``layer`` embeddings were made from frames, else "audio"."""
    return store.provenance(embedding_path(model, layer)).modality


def _model_order(model: str) -> tuple[int, str]:
    return (PAPER_MODELS.index(model) if model in PAPER_MODELS else len(PAPER_MODELS), model)


def select_models(store: Store, modalities: tuple[str, ...], models: tuple[str, ...] | None, layer: str) -> tuple[str, ...]:
    """The models to fuse: ``models`` (checked), or every model of ``modalities`` embedded at ``layer``."""
    if not modalities or not set(modalities) <= set(MODALITIES):
        raise ConfigError(f"--modalities must be audio, visual or audio,visual, got {','.join(modalities)}")
    if models is None:
        embedded = sorted({p.split("/")[1] for p in store.array_paths() if p.startswith("embeddings/") and p.endswith(f"/{layer}")}, key=_model_order)
        models = tuple(m for m in embedded if model_modality(store, m, layer) in modalities)
    else:
        missing = [m for m in models if not store.has_array(embedding_path(m, layer))]
        if missing:
            raise StoreError(f"no {layer} embeddings of {', '.join(missing)} (run featstore embed --model NAME --layer {layer})")
        models = tuple(m for m in models if model_modality(store, m, layer) in modalities)
    found = {model_modality(store, m, layer) for m in models}
    if found != set(modalities):
        lacking = sorted(set(modalities) - found)
        raise StoreError(f"no {layer} embeddings of any {' or '.join(lacking)} model in the store (embed one, or drop it from --modalities)")
    return models


def load_fusion_data(store: Store, models: tuple[str, ...], layer: str) -> FusionData:
    """Read each model's embeddings once and align them on the clips every model has (narrower
    embeddings zero-padded to the widest)."""
    per_model = [packed_segment_embeddings(store, embedding_path(m, layer)) for m in models]
    widths = tuple(int(v.shape[-1]) for v, _ in per_model)
    rows = per_model[0][1]
    for _, r in per_model[1:]:
        rows = np.intersect1d(rows, r)
    padded = [np.pad(v, ((0, 0), (0, 0), (0, max(widths) - v.shape[-1]))) for v, _ in per_model]
    x = np.stack([v[np.searchsorted(r, rows)] for v, (_, r) in zip(padded, per_model)], axis=2)
    labels = store.label_indices(store.clips["label"])[rows]
    return FusionData(x, rows, labels, tuple(models), tuple(model_modality(store, m, layer) for m in models), layer, widths)


def select_for(store: Store, config: FuseConfig) -> tuple[str, ...]:
    """The models ``config`` fuses: :func:`select_models`, or for ``mlp`` its one ``--models`` model."""
    layer = config.embedding_layer()
    if config.method != "mlp":
        return select_models(store, tuple(config.modalities), config.models, layer)
    if not config.models or len(config.models) != 1:
        raise ConfigError(f"--method mlp trains on one model's embeddings: give --models NAME, got {config.models}")
    model = config.models[0]
    if "/" in model:
        raise ConfigError(f"--method mlp: give the layer with --layer, not in --models ({model})")
    if not store.has_array(embedding_path(model, layer)):
        raise StoreError(f"no {layer} embeddings of {model} (run featstore embed --model {model} --layer {layer})")
    return (model,)


def _mixing(n: int, modalities: tuple[str, ...], config: FuseConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mixing coefficients: (n, model) for the embeddings and (n,) for the labels."""
    n_models = len(modalities)
    if config.mixup_alpha <= 0:
        return np.ones((n, n_models), np.float32), np.ones(n, np.float32)
    lam = rng.beta(config.mixup_alpha, config.mixup_alpha, n)
    lam_visual = lam.copy()
    if config.joint_mixup > 0 and len(set(modalities)) == 2:
        joint = rng.random(n) < config.joint_mixup
        lam_visual[joint] = rng.beta(config.mixup_alpha, config.mixup_alpha, int(joint.sum()))
    is_visual = np.array([m == "visual" for m in modalities])
    lam_x = np.where(is_visual[None, :], lam_visual[:, None], lam[:, None])
    lam_y = (lam + lam_visual) / 2 if len(set(modalities)) == 2 else lam
    return lam_x.astype(np.float32), lam_y.astype(np.float32)


class FusionTrainer:
    """A fusion head and its compiled training epoch over device-resident embeddings.

    ``x`` (example, model, dim) and one-hot ``y`` (example, class) are copied to the device once;
    :meth:`epoch` takes example indices (order, partners) and mixing coefficients and runs every
    batch in one ``tf.function``.
    """

    def __init__(self, model, x: np.ndarray, y: np.ndarray, *, batch_size: int, lr: float):
        import keras
        import tensorflow as tf

        self.model, self.batch_size = model, batch_size
        device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
        with tf.device(device):
            self.x, self.y = tf.constant(x), tf.constant(y)
        self.optimizer = keras.optimizers.Adam(lr)
        self.optimizer.build(model.trainable_variables)
        self.loss = keras.losses.KLDivergence()
        self._epoch = tf.function(self._epoch_fn, jit_compile=False, reduce_retracing=True)

    def _epoch_fn(self, order, partner, lam_x, lam_y):
        import tensorflow as tf

        n = tf.shape(order)[0]
        steps = (n + self.batch_size - 1) // self.batch_size
        total = tf.constant(0.0)
        for step in tf.range(steps):
            sl = slice(step * self.batch_size, tf.minimum((step + 1) * self.batch_size, n))
            i, j = order[sl], partner[sl]
            lx, ly = lam_x[sl][:, :, None], lam_y[sl][:, None]
            xb = lx * tf.gather(self.x, i) + (1.0 - lx) * tf.gather(self.x, j)
            yb = ly * tf.gather(self.y, i) + (1.0 - ly) * tf.gather(self.y, j)
            with tf.GradientTape() as tape:
                loss = self.loss(yb, self.model(xb, training=True))
                if self.model.losses:
                    loss = loss + tf.add_n(self.model.losses)
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
            total += loss
        return total / tf.cast(steps, tf.float32)

    def epoch(self, order: np.ndarray, partner: np.ndarray, lam_x: np.ndarray, lam_y: np.ndarray) -> float:
        """One pass over ``order``; returns the mean training loss of its batches."""
        return float(self._epoch(order.astype(np.int32), partner.astype(np.int32), lam_x, lam_y))

    def predict(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """(example, model, dim) -> (example, class) probabilities."""
        return np.concatenate([np.asarray(self.model(x[s : s + batch_size], training=False)) for s in range(0, len(x), batch_size)])


def train_head(data: FusionData, train: np.ndarray, val: np.ndarray, config: FuseConfig, n_classes: int, *, progress: TrainingProgress | None = None):
    """Train a fusion head on clips ``train`` (indices into ``data``); keep the best epoch on ``val``.

    Returns (model, trainer, history); history has per-epoch ``loss``, ``val_log_loss``,
    ``val_accuracy`` and ``seconds`` (as reported to ``progress``, one kept in memory without).
    """

    from featstore.models.fusion import build_head

    from featstore.seeding import seed_everything

    seed_everything(config.seed)  # every seed and TensorFlow op determinism: same seed, same weights
    rng = np.random.default_rng(config.seed)
    n_seg, n_models, dim = data.x.shape[1:]
    examples = data.x.reshape(-1, n_models, dim)
    onehot = np.eye(n_classes, dtype=np.float32)[np.repeat(np.maximum(data.labels, 0), n_seg)]
    train_ex = (train[:, None] * n_seg + np.arange(n_seg)).ravel()
    val_ex = (val[:, None] * n_seg + np.arange(n_seg)).ravel()
    model = build_head(config.method, modalities=data.modalities, embedding_widths=data.widths, widths=config.widths, n_classes=n_classes, l2=config.l2)
    trainer = FusionTrainer(model, examples[train_ex], onehot[train_ex], batch_size=config.batch_size, lr=config.lr)
    progress = progress or TrainingProgress(config.method, config.epochs, bar=False)
    best, best_weights = np.inf, model.get_weights()
    for _ in range(config.epochs):
        progress.begin_epoch()
        order = rng.permutation(len(train_ex))
        lam_x, lam_y = _mixing(len(order), data.modalities, config, rng)
        loss = trainer.epoch(order, rng.permutation(len(train_ex)), lam_x, lam_y)
        val_probs = trainer.predict(examples[val_ex])
        scores = classification_metrics(val_probs, np.repeat(data.labels[val], n_seg), [str(c) for c in range(n_classes)])
        progress.end_epoch({"loss": loss, "val_log_loss": scores["log_loss"], "val_accuracy": scores["accuracy"]})
        if scores["log_loss"] < best:
            best, best_weights = scores["log_loss"], model.get_weights()
    progress.close()
    model.set_weights(best_weights)
    return model, trainer, {k: v for k, v in progress.history().items() if k != "epoch"}


def _backbone_overlap(store: Store, models: tuple[str, ...], train_clip_ids: list[str]) -> dict[str, float]:
    """Share of ``train_clip_ids`` that each backbone was trained on (None when not recorded)."""
    overlap = {}
    for m in models:
        trained_on = training_clips(store, m.split("/")[0])
        overlap[m] = None if trained_on is None else float(np.isin(train_clip_ids, trained_on).mean())
    return overlap


def fuse(store: Store, config: FuseConfig, *, data: FusionData | None = None) -> dict[str, Any]:
    """Train, evaluate and save one fusion run; return its record.

    ``data`` may be passed to reuse embeddings already loaded (``--method all`` loads each layer once).
    """
    start = time.perf_counter()
    layer = config.embedding_layer()
    if data is None:
        data = load_fusion_data(store, select_for(store, config), layer)
    loaded = time.perf_counter()
    clips = store.clips.iloc[data.rows].reset_index(drop=True)
    train, val = validation_split(clips, fraction=config.val_fraction, seed=config.seed)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("fuse needs embedded train clips from at least two recording locations (one goes to validation)")
    classes = store.classes
    name = config.run_name(data.models)
    watch = TrainingProgress(name, config.epochs, store=store, kind="runs", bar=False)
    model, trainer, history = train_head(data, train, val, config, len(classes), progress=watch)
    trained = time.perf_counter()

    n_clips, n_seg, n_models, dim = data.x.shape
    probs = trainer.predict(data.x.reshape(-1, n_models, dim)).reshape(n_clips, n_seg, -1)
    write_predictions(store, name, data.rows, probs, stage="fuse", params={"method": config.method, "models": list(data.models), "layer": layer}, unit="segment")
    in_split = (clips["split"].to_numpy() == config.split) & (data.labels >= 0)
    metrics = evaluate_predictions(probs[in_split], data.labels[in_split], classes) if in_split.any() else {}
    record = {
        "name": name, "kind": "fuse", "method": config.method, "layer": layer,
        "models": list(data.models), "modalities": sorted(set(data.modalities)),
        "config": {**asdict(config), "modalities": list(config.modalities), "models": list(data.models)},
        "split": config.split, "clips": int(n_clips), "n_train_clips": int(len(train)), "n_val_clips": int(len(val)),
        "trainable_params": int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)),
        "history": history, "best_epoch": int(np.argmin(history["val_log_loss"])) + 1,
        "backbone_trained_on_fuse_train_clips": _backbone_overlap(store, data.models, clips["clip_id"].iloc[train].tolist()),
        "seconds": {"load": loaded - start, "train": trained - loaded, "total": time.perf_counter() - start},
        "metrics": metrics, "created": utc_now(),
    }
    save_run_head(store, name, model)
    save_run(store, record)
    return record


def fuse_methods(store: Store, methods: tuple[str, ...], config: FuseConfig) -> list[dict[str, Any]]:
    """Run several methods with one config (e.g. all six), loading each embedding layer once."""
    from dataclasses import replace

    loaded: dict[str, FusionData] = {}
    records = []
    for method in methods:
        name = f"{config.name}-{method}" if config.name and len(methods) > 1 else config.name
        method_config = replace(config, method=method, name=name)
        layer = method_config.embedding_layer()
        if layer not in loaded:
            loaded[layer] = load_fusion_data(store, select_for(store, method_config), layer)
        records.append(fuse(store, method_config, data=loaded[layer]))
    return records
