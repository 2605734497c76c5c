"""The report's pictures (matplotlib, Agg backend, PNG): a confusion matrix and accuracy over time."""

from __future__ import annotations

import numpy as np


def plot_confusion(confusion: np.ndarray, classes: list[str], title: str, path: str) -> None:
    """Row-normalised confusion matrix (percent of each true class), class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.float64)
    percent = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for (i, j), v in np.ndenumerate(percent):
        if counts[i].sum():
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 50 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="% of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_over_time(curves: dict[str, np.ndarray], segment_s: float, path: str) -> None:
    """Clip accuracy (%) against seconds of the clip seen, one line per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(curves) > 10:  # the default cycle has 10 colours
        ax.set_prop_cycle(color=plt.cm.tab20(np.linspace(0, 1, 20)))
    for name, acc in curves.items():
        ax.plot(segment_s * np.arange(1, len(acc) + 1), 100 * acc, marker="o", markersize=3, label=name)
    ax.set_xlabel("seconds of the clip seen")
    ax.set_ylabel("clip accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
