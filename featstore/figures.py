"""The report's pictures (matplotlib, Agg backend, PNG), each sized to fit a 1400 px page.

Confusion matrices in a grid with counts, per-class grouped bars, learning curves, and accuracy
over time for a few sources with the legend outside the data.
"""

from __future__ import annotations

import numpy as np

#: Pictures are saved at this resolution; widths below are in inches (1300 px / 100 dpi at most).
DPI = 100
MAX_WIDTH_IN = 13.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)


def _panel_grid(n: int, panel_height_in: float):
    """A figure of ``n`` panels, at most three to a row within the page width; (figure, the n axes)."""
    plt = _pyplot()
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(min(4.3 * cols, MAX_WIDTH_IN), panel_height_in * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()[:n]


def plot_confusion_grid(confusions: dict[str, np.ndarray], classes: list[str], path: str) -> None:
    """One panel per source: cell colour is the percent of the true class, the text the clip count.

    ``confusions``: {title: (class, class) counts, rows true, columns predicted}.
    """
    fig, axes = _panel_grid(len(confusions), 4.3)
    for ax, (title, counts) in zip(axes, confusions.items()):
        counts = np.asarray(counts, dtype=np.int64)
        percent = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        for (i, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if percent[i, j] > 50 else "black")
        ax.set_xlabel("predicted (cell: clips; colour: % of true class)", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_class_bars(per_class: dict[str, list[float]], classes: list[str], path: str) -> None:
    """Grouped bars: per-class accuracy (%) of each source (``per_class``: {label: fractions})."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, 3.8))
    width = 0.8 / max(len(per_class), 1)
    x = np.arange(len(classes))
    for k, (label, values) in enumerate(per_class.items()):
        ax.bar(x + (k - (len(per_class) - 1) / 2) * width, 100 * np.asarray(values, float), width, label=label)
    ax.set_xticks(x, classes, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("clip accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)


def plot_learning_curves(histories: dict[str, dict[str, list[float]]], path: str) -> None:
    """One panel per source: every per-epoch curve of its record (loss, validation loss, ...)."""
    fig, axes = _panel_grid(len(histories), 3.0)
    for ax, (title, history) in zip(axes, histories.items()):
        for curve, values in history.items():
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=2, label=curve)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_over_time(curves: dict[str, np.ndarray], segment_s: float, path: str) -> None:
    """Clip accuracy (%) against seconds of the clip seen, one line per source, legend to the right."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, acc in curves.items():
        ax.plot(segment_s * np.arange(1, len(acc) + 1), 100 * np.asarray(acc), marker="o", markersize=3, label=name)
    ax.set_xlabel("seconds of the clip seen")
    ax.set_ylabel("clip accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    _save(fig, path)
