"""`featstore report`: one page (HTML and Markdown) about every prediction source in a store.

Sources are the runs (``fuse``, ``ensemble``; see :mod:`featstore.runs`) and the backbones' own
predictions (``predictions/{model}`` from ``embed``). Everything is computed from the stored
probabilities on one split (default ``evaluate``), at clip level (a clip's probability is the mean of
its segments'), so every source is measured the same way:

- the runs table: accuracy, class-wise accuracy, log-loss, class-wise log-loss (clip and segment level);
- the per-class table in the layout of the paper's Table I (rows: classes and overall, columns: sources);
- a confusion matrix picture per source (matplotlib PNG, row-normalised percentages);
- accuracy versus seconds of the clip seen: the clip decided from its first k segments, k = 1..n
  (Figure 4 of the frameworks paper); sources with one unit per clip (ensembles) have no curve;
- meta-class accuracy: true and predicted classes mapped to indoor / outdoor / transportation;
- a DCASE 2021 Task 1B submission file per source for the clips of ``submission_split`` (default
  ``test``): tab-separated ``filename_audio``, ``scene_label``, then one probability column per class
  in the store's label order. For the development set, ``fold1_test`` lists the evaluate clips, so
  ``--submission-split evaluate`` writes that fold's submission.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from featstore.constants import META_CLASSES
from featstore.metrics import classification_metrics
from featstore.packed import packed_segment_embeddings
from featstore.runs import class_table, load_runs, markdown_table
from featstore.store import Store


@dataclass
class Source:
    """Stored probabilities of one run or model: ``probs`` (clip, unit, class) for store ``rows``."""

    name: str
    kind: str
    probs: np.ndarray
    rows: np.ndarray


def prediction_sources(store: Store) -> list[Source]:
    """Every run, then every model with ``predictions/{model}``; runs whose array is gone are skipped."""
    runs = [(r["name"], r["kind"]) for r in load_runs(store)]
    run_names = {n for n, _ in runs}
    models = [(p.split("/", 1)[1], "model") for p in store.array_paths() if p.startswith("predictions/") and p.split("/", 1)[1] not in run_names]
    sources = []
    for name, kind in [*models, *runs]:
        if store.has_array(f"predictions/{name}"):
            probs, rows = packed_segment_embeddings(store, f"predictions/{name}")
            sources.append(Source(name, kind, probs.astype(np.float64), rows))
    return sources


def _in_split(store: Store, source: Source, split: str) -> tuple[np.ndarray, np.ndarray]:
    labels = store.label_indices(store.clips["label"])[source.rows]
    keep = (store.clips["split"].to_numpy()[source.rows] == split) & (labels >= 0)
    return source.probs[keep], labels[keep]


def source_metrics(store: Store, source: Source, split: str) -> dict[str, Any]:
    """Clip- and segment-level metrics of ``source`` on ``split`` (empty when it has no labelled clips there)."""
    probs, labels = _in_split(store, source, split)
    if len(labels) == 0:
        return {}
    n_units = probs.shape[1]
    out = {"clip": classification_metrics(probs.mean(axis=1), labels, store.classes)}
    if n_units > 1:
        out["segment"] = classification_metrics(probs.reshape(-1, probs.shape[2]), np.repeat(labels, n_units), store.classes)
    return out


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


def write_submission(store: Store, source: Source, split: str | None, path: str) -> int:
    """The DCASE 2021 Task 1B submission file of ``source`` for ``split``'s clips (``None``: all of
    the source's clips); returns its row count.

    Tab-separated, a header ``filename_audio scene_label`` then the 10 classes in label order; one
    row per clip, its probabilities the mean over the clip's units (they sum to 1).
    """
    clips = store.clips.iloc[source.rows]
    keep = np.ones(len(clips), bool) if split is None else (clips["split"] == split).to_numpy()
    probs = source.probs[keep].mean(axis=1)
    if not keep.any():
        return 0
    table = pd.DataFrame({"filename_audio": clips["audio_path"].to_numpy()[keep], "scene_label": np.array(store.classes)[probs.argmax(axis=1)]})
    for c, name in enumerate(store.classes):
        table[name] = probs[:, c]
    table.to_csv(path, sep="\t", index=False, float_format="%.6f")
    return int(keep.sum())


def build_report(store: Store, out_dir: str, *, split: str = "evaluate", submission_split: str = "test") -> dict[str, str]:
    """Write ``report.html``, ``report.md``, the PNGs and the submissions to ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    sources = prediction_sources(store)
    records = [{"name": s.name, "kind": s.kind, "metrics": source_metrics(store, s, split)} for s in sources]
    measured = [r for r in records if r["metrics"]]
    runs_rows = []
    for r in measured:
        clip, seg = r["metrics"]["clip"], r["metrics"].get("segment", {})
        runs_rows.append({
            "source": r["name"], "kind": r["kind"], "clips": clip["n"],
            "segment accuracy": seg.get("accuracy", np.nan), "clip accuracy": clip["accuracy"],
            "class-wise accuracy": clip["class_wise_accuracy"], "log-loss": clip["log_loss"],
            "class-wise log-loss": clip["class_wise_log_loss"],
        })
    runs_table = pd.DataFrame(runs_rows).set_index("source") if runs_rows else pd.DataFrame()
    per_class = class_table(measured, store.classes)
    meta, curves, pictures, submissions = {}, {}, {}, {}
    for s in sources:
        probs, labels = _in_split(store, s, split)
        if len(labels):
            meta[s.name] = meta_class_accuracy(probs, labels, store.classes)
            if probs.shape[1] > 1:
                curves[s.name] = accuracy_over_time(probs, labels)
            confusion = next(r for r in records if r["name"] == s.name)["metrics"]["clip"]["confusion"]
            pictures[s.name] = f"confusion-{s.name}.png"
            plot_confusion(np.array(confusion), store.classes, f"{s.name} ({split}, clip level)", os.path.join(out_dir, pictures[s.name]))
        rows = write_submission(store, s, submission_split, os.path.join(out_dir, f"submission-{s.name}.tsv"))
        if rows:
            submissions[s.name] = f"submission-{s.name}.tsv"
    if curves:
        plot_over_time(curves, store.segment_s, os.path.join(out_dir, "accuracy-over-time.png"))
    sections = _sections(store, split, submission_split, runs_table, per_class, pd.DataFrame(meta), curves, pictures, submissions)
    paths = {"html": os.path.join(out_dir, "report.html"), "markdown": os.path.join(out_dir, "report.md")}
    with open(paths["markdown"], "w") as f:
        f.write(_markdown(sections))
    with open(paths["html"], "w") as f:
        f.write(_html(sections))
    return paths


def _sections(store, split, submission_split, runs_table, per_class, meta, curves, pictures, submissions) -> list[tuple[str, str, Any]]:
    """(title, kind, content) blocks shared by the Markdown and HTML writers."""
    sections: list[tuple[str, str, Any]] = [("featstore report", "text", f"Store {store.url}: {store.n_clips} clips; metrics on the {split!r} split, clip level unless named.")]
    if runs_table.empty:
        sections.append(("Runs", "text", f"No predictions with labelled {split!r} clips in this store."))
        return sections
    sections += [
        ("Runs", "table-raw", runs_table),
        ("Per-class accuracy (%), Table I layout", "table", per_class),
        ("Meta-class accuracy (%)", "table", meta),
    ]
    if curves:
        sections.append(("Accuracy versus seconds of the clip seen", "image", "accuracy-over-time.png"))
    for name, png in pictures.items():
        sections.append((f"Confusion matrix: {name}", "image", png))
    title = f"DCASE 2021 Task 1B submissions ({submission_split!r} clips)"
    if submissions:
        sections.append((title, "links", submissions))
    else:
        sections.append((title, "text", f"No {submission_split!r} clips in the store, so no submission (--submission-split evaluate writes the development fold's)."))
    return sections


def _raw_markdown(frame: pd.DataFrame) -> str:
    return markdown_table(frame.map(lambda v: round(float(v), 4) if isinstance(v, float | np.floating) else v), percent=False)


def _markdown(sections) -> str:
    parts = []
    for i, (title, kind, content) in enumerate(sections):
        parts.append(f"{'#' if i == 0 else '##'} {title}\n")
        if kind == "text":
            parts.append(content + "\n")
        elif kind == "table":
            parts.append(markdown_table(content) + "\n")
        elif kind == "table-raw":
            parts.append(_raw_markdown(content) + "\n")
        elif kind == "links":
            parts.append("\n".join(f"- [{name}]({path})" for name, path in content.items()) + "\n")
        else:
            parts.append(f"![{title}]({content})\n")
    return "\n".join(parts)


def _html(sections) -> str:
    body = []
    for i, (title, kind, content) in enumerate(sections):
        body.append(f"<h{1 if i == 0 else 2}>{html.escape(title)}</h{1 if i == 0 else 2}>")
        if kind == "text":
            body.append(f"<p>{html.escape(content)}</p>")
        elif kind in ("table", "table-raw"):
            frame = (100 * content).round(1) if kind == "table" else content.round(4)
            body.append(frame.to_html(na_rep="", border=0))
        elif kind == "links":
            body.append("<ul>" + "".join(f'<li><a href="{html.escape(p)}">{html.escape(n)}</a></li>' for n, p in content.items()) + "</ul>")
        else:
            body.append(f'<img src="{html.escape(content)}" alt="{html.escape(title)}">')
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>featstore report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
