"""Training you can watch: one line per epoch, a bar within the epoch on a terminal, the history as
CSV and as TensorBoard event files.

:class:`TrainingProgress` is plain Python, called by a training loop (``fuse``'s compiled epochs);
:func:`keras_callback` hands it to ``model.fit`` (``train-backbone``, ``train-joint``). Per epoch it

- logs one line to the ``featstore.train`` logger at INFO, e.g.
  ``aud-mel epoch 2/10: loss 1.9102, val_loss 2.0331, val_accuracy 0.412 (12.3 s, ETA 1 min 38 s)``
  (:func:`configure_logging` sends the ``featstore`` logger to stderr; the CLI calls it);
- rewrites the history CSV beside the model or run, ``_featstore/models/NAME.history.csv`` or
  ``_featstore/runs/NAME.history.csv`` (one row per epoch so far: ``epoch``, the metrics,
  ``seconds``), so a running job can be followed from another shell;
- appends the epoch's scalars to a TensorBoard event file under
  ``_featstore/tensorboard/models/NAME/`` or ``.../runs/NAME/`` (local stores), written with TensorFlow's own record writer and protocol buffers: the
  ``tensorboard`` package is needed only to look at them.

Within an epoch a bar (tqdm, on stderr) counts the batches, only when stderr is a terminal and the
bar is not turned off (``bar=False``, the commands' ``--quiet``).

Metric names are those of the history: Keras' ``categorical_accuracy`` is called ``accuracy``; the
training metrics come first (``loss`` leading), then the validation ones (``val_loss`` leading).
"""

from __future__ import annotations

import io
import logging
import math
import socket
import sys
import time
from typing import Any

LOGGER = logging.getLogger("featstore.train")

#: Where the event files of a run or model named NAME go, inside the store's side files.
TENSORBOARD_DIR = "tensorboard"


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``featstore`` logger's records at ``level`` and above to stderr as ``featstore: MESSAGE``
    (once; a later call only changes the level)."""
    logger = logging.getLogger("featstore")
    logger.setLevel(level)
    if not any(getattr(h, "_featstore", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("featstore: %(message)s"))
        handler._featstore = True
        logger.addHandler(handler)
        logger.propagate = False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if hours else f"{m} min {s} s"


def _name(metric: str) -> str:
    return metric.replace("categorical_accuracy", "accuracy")


class EventWriter:
    """Scalars to a TensorBoard event file ``events.out.tfevents.TIME.HOST`` in ``directory`` (imports
    TensorFlow, not the ``tensorboard`` package)."""

    def __init__(self, directory: str):
        import os

        import tensorflow as tf
        from tensorflow.core.util import event_pb2

        os.makedirs(directory, exist_ok=True)
        self._event = event_pb2.Event
        self.path = os.path.join(directory, f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}")
        self._writer = tf.io.TFRecordWriter(self.path)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorflow.core.framework import summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._writer.close()


class TrainingProgress:
    """The per-epoch report of one training run (see the module docstring).

    Parameters
    ----------
    name : str
        The model or run being trained (starts each line; names the TensorBoard directory).
    epochs : int
        Epochs planned (for ``epoch k/N`` and the ETA).
    store : featstore.Store, optional
        Where the history CSV and the event files go; None keeps the history in memory only.
    kind : str
        ``"models"`` (a registered model) or ``"runs"`` (a fusion run): where beside it they go.
    bar : bool, optional
        The within-epoch bar: None shows it when stderr is a terminal, False never.
    """

    def __init__(self, name: str, epochs: int, *, store=None, kind: str = "models", bar: bool | None = None):
        self.name, self.epochs, self.store = name, int(epochs), store
        #: the history CSV's side-file name
        self.csv_name = f"{kind}/{name}.history.csv"
        self.bar_enabled = sys.stderr.isatty() if bar is None else bool(bar)
        #: one dict per finished epoch: epoch (1-based), the metrics, seconds
        self.rows: list[dict[str, float]] = []
        self._bar = None
        self._start = time.perf_counter()
        self.events: EventWriter | None = None
        if store is not None and store.side.is_local:
            self.events = EventWriter(store.side.path(f"{TENSORBOARD_DIR}/{kind}/{name}"))

    def begin_epoch(self, steps: int | None = None) -> None:
        """Start timing an epoch; ``steps`` (batches) sizes the bar."""
        self._start = time.perf_counter()
        if self.bar_enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=steps, desc=f"{self.name} epoch {len(self.rows) + 1}/{self.epochs}", unit="batch", leave=False, file=sys.stderr)

    def step(self, n: int = 1) -> None:
        """``n`` more batches of the current epoch are done."""
        if self._bar is not None:
            self._bar.update(n)

    def end_epoch(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Record the finished epoch's ``metrics`` (``loss``, ``val_loss``, ...); log its line, rewrite
        the CSV, append to the event file. Returns the epoch's row."""
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        named = sorted(((_name(k), float(v)) for k, v in metrics.items()), key=lambda kv: (kv[0].startswith("val_"), kv[0] not in ("loss", "val_loss")))
        row = {"epoch": len(self.rows) + 1, **dict(named), "seconds": seconds}
        self.rows.append(row)
        LOGGER.info(self.line(row))
        if self.store is not None:
            self.store.side.write(self.csv_name, self.csv().encode())
        if self.events is not None:
            self.events.scalars(row["epoch"], {k: v for k, v in row.items() if k not in ("epoch", "seconds") and math.isfinite(v)})
        return row

    def line(self, row: dict[str, float]) -> str:
        """``NAME epoch k/N: loss ..., val_loss ..., val_accuracy ... (S s, ETA T)``."""
        shown = ", ".join(f"{k} {v:.3f}" if k.endswith("accuracy") else f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds"))
        mean = sum(r["seconds"] for r in self.rows) / len(self.rows)
        left = self.epochs - int(row["epoch"])
        eta = f", ETA {_duration(mean * left)}" if left > 0 else ""
        return f"{self.name} epoch {int(row['epoch'])}/{self.epochs}: {shown} ({row['seconds']:.1f} s{eta})"

    def history(self) -> dict[str, list[float]]:
        """``{column: [value per epoch]}``, as the run records store it."""
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        return {c: [r.get(c, float("nan")) for r in self.rows] for c in columns}

    def csv(self) -> str:
        """The history as CSV text: a header, then one row per epoch."""
        out = io.StringIO()
        history = self.history()
        out.write(",".join(history) + "\n")
        for i in range(len(self.rows)):
            out.write(",".join(str(int(v[i])) if c == "epoch" else repr(float(v[i])) for c, v in history.items()) + "\n")
        return out.getvalue()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.events is not None:
            self.events.close()


def keras_callback(progress: TrainingProgress):
    """A Keras callback that reports to ``progress`` (imports Keras)."""
    import keras

    class _Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps = self.params.get("steps") if isinstance(self.params, dict) else None
            progress.begin_epoch(steps)

        def on_train_batch_end(self, batch, logs=None):
            progress.step()

        def on_epoch_end(self, epoch, logs=None):
            progress.end_epoch(dict(logs or {}))

        def on_train_end(self, logs=None):
            progress.close()

    return _Progress()
