"""Classification metrics of the DCASE 2021 Task 1B evaluation, at segment and clip level.

- ``accuracy``: share of correct argmax labels.
- ``class_wise_accuracy``: accuracy per class, then averaged over classes (DCASE's class-wise
  averaged accuracy, i.e. balanced accuracy).
- ``log_loss``: multi-class log-loss, mean of ``-log p[true class]`` with probabilities clipped to
  ``[1e-15, 1]`` after renormalising each row to sum 1 (scikit-learn's convention). DCASE ranks
  systems by log-loss first.
- ``class_wise_log_loss``: log-loss per class, averaged over classes.
- ``confusion``: (true, predicted) counts.

Clip level: a clip's probability is the mean of its segments' (or frames') probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featstore.constants import META_CLASSES

EPS = 1e-15


def _clip_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.clip(p, EPS, 1.0)


def per_example_log_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log p[label]`` for each row of ``probs`` (rows renormalised, clipped at 1e-15)."""
    return -np.log(_clip_probs(probs)[np.arange(len(labels)), labels])


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every metric for (example, class) probabilities and true class indices."""
    labels = np.asarray(labels)
    predicted = np.argmax(probs, axis=1)
    n = len(classes)
    losses = per_example_log_loss(probs, labels)
    present = [c for c in range(n) if (labels == c).any()]
    per_class_acc = {classes[c]: float((predicted[labels == c] == c).mean()) for c in present}
    per_class_loss = {classes[c]: float(losses[labels == c].mean()) for c in present}
    return {
        "n": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "class_wise_accuracy": float(np.mean(list(per_class_acc.values()))),
        "log_loss": float(losses.mean()),
        "class_wise_log_loss": float(np.mean(list(per_class_loss.values()))),
        "per_class_accuracy": per_class_acc,
        "per_class_log_loss": per_class_loss,
        "confusion": confusion(labels, predicted, n).tolist(),
    }


def evaluate_predictions(unit_probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Segment- and clip-level metrics of (clip, unit, class) probabilities and (clip,) labels."""
    n_clips, n_units, n_classes = unit_probs.shape
    return {
        "segment": classification_metrics(unit_probs.reshape(-1, n_classes), np.repeat(labels, n_units), classes),
        "clip": classification_metrics(unit_probs.mean(axis=1), labels, classes),
    }


def accuracy_over_time(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(unit,) accuracy of deciding each clip from its first k units, k = 1..unit."""
    cumulative = np.cumsum(probs, axis=1)  # the mean's argmax equals the sum's
    return (cumulative.argmax(axis=2) == labels[:, None]).mean(axis=0)


def meta_class_accuracy(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy of the meta-class (indoor / outdoor / transportation) of the clip-level decision."""
    meta_of = np.array([next(m for m, members in META_CLASSES.items() if c in members) for c in classes])
    true_meta, predicted_meta = meta_of[labels], meta_of[probs.mean(axis=1).argmax(axis=1)]
    out = {m: float((predicted_meta[true_meta == m] == m).mean()) for m in META_CLASSES if (true_meta == m).any()}
    out["overall"] = float((predicted_meta == true_meta).mean())
    return out
