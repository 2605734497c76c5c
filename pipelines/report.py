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

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from featstore.figures import plot_confusion, plot_over_time
from featstore.metrics import accuracy_over_time, classification_metrics, meta_class_accuracy
from featstore.packed import packed_segment_embeddings
from featstore.report_pages import render_html, render_markdown
from featstore.runs import class_table, load_runs
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
        f.write(render_markdown(sections))
    with open(paths["html"], "w") as f:
        f.write(render_html(sections))
    return paths


def _sections(store, split, submission_split, runs_table, per_class, meta, curves, pictures, submissions) -> list[tuple[str, str, Any]]:
    """(title, kind, content) blocks for :mod:`featstore.report_pages` (kind: text, table, table-raw,
    image, links)."""
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
