"""`featstore report`: one page (HTML and Markdown) that answers "which run is best, and where does it fail".

Sources are the runs (``fuse``, ``ensemble``; see :mod:`featstore.runs`) and the backbones' own
predictions (``predictions/{model}`` from ``embed``). Everything is computed from the stored
probabilities on one split (default ``evaluate``), at clip level (a clip's probability is the mean of
its segments'), so every source is measured the same way. The page, in percent throughout:

- the leaderboard (:mod:`featstore.pipelines.leaderboard`): sorted by accuracy, the best source of
  each modality marked, with method, models, epochs, seed and validation numbers beside the split's
  accuracy and log-loss; late fusion is marked as chosen on the split itself;
- per-class accuracy of the best source of each modality (grouped bars, Table I layout);
- meta-class accuracy (indoor / outdoor / transportation) of those sources;
- their confusion matrices in one grid, with clip counts;
- learning curves from the runs' recorded history;
- accuracy versus seconds of the clip seen for the best few sources (Figure 4 of the frameworks
  paper); sources with one unit per clip (ensembles) have no curve;
- a DCASE 2021 Task 1B submission file per source for the clips of ``submission_split`` (default
  ``test``): tab-separated ``filename_audio``, ``scene_label``, then one probability column per class
  in the store's label order. For the development set, ``fold1_test`` lists the evaluate clips, so
  ``--submission-split evaluate`` writes that fold's submission.

Every picture is sized to fit a page 1400 px wide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from featstore.pipelines.leaderboard import (
    best_per_modality,
    describe_sources,
    leaderboard,
)

from featstore.figures import (
    plot_class_bars,
    plot_confusion_grid,
    plot_learning_curves,
    plot_over_time,
)
from featstore.metrics import (
    accuracy_over_time,
    classification_metrics,
    meta_class_accuracy,
)
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


#: Sources drawn in the accuracy-over-time picture and the learning curves (the best by accuracy).
BEST_FEW = 5


def build_report(store: Store, out_dir: str, *, split: str = "evaluate", submission_split: str = "test") -> dict[str, str]:
    """Write ``report.html``, ``report.md``, the PNGs and the submissions to ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    sources = prediction_sources(store)
    records = [{"name": s.name, "kind": s.kind, "metrics": source_metrics(store, s, split)} for s in sources]
    measured = [r for r in records if r["metrics"]]
    described = describe_sources(store, [r["name"] for r in measured])
    board = leaderboard(measured, described)
    best = best_per_modality(board)
    by_name = {r["name"]: r for r in measured}
    pictures: dict[str, str] = {}
    submissions = {}
    curves = {}
    for s in sources:
        probs, labels = _in_split(store, s, split)
        if len(labels) and probs.shape[1] > 1:
            curves[s.name] = accuracy_over_time(probs, labels)
        rows = write_submission(store, s, submission_split, os.path.join(out_dir, f"submission-{s.name}.tsv"))
        if rows:
            submissions[s.name] = f"submission-{s.name}.tsv"
    meta = {}
    if best:
        labelled = {f"{name} (best {modality})": name for modality, name in best.items()}
        per_class = class_table([by_name[n] for n in labelled.values()], store.classes).rename(columns={n: k for k, n in labelled.items()})
        plot_class_bars({k: per_class[k].iloc[:-1].to_numpy() for k in labelled}, store.classes, os.path.join(out_dir, "per-class.png"))
        pictures["per-class"] = "per-class.png"
        plot_confusion_grid({k: np.array(by_name[n]["metrics"]["clip"]["confusion"]) for k, n in labelled.items()}, store.classes, os.path.join(out_dir, "confusion-best.png"))
        pictures["confusion"] = "confusion-best.png"
        for k, n in labelled.items():
            s = next(x for x in sources if x.name == n)
            meta[k] = meta_class_accuracy(*_in_split(store, s, split), store.classes)
        top = list(dict.fromkeys([*best.values(), *board["source"]]))
        histories = {n: described[n]["history"] for n in top if described[n]["history"]}
        if histories:
            plot_learning_curves(dict(list(histories.items())[:BEST_FEW]), os.path.join(out_dir, "learning-curves.png"))
            pictures["learning"] = "learning-curves.png"
        ranked = [n for n in board["source"] if n in curves][:BEST_FEW]
        if ranked:
            plot_over_time({n: curves[n] for n in ranked}, store.segment_s, os.path.join(out_dir, "accuracy-over-time.png"))
            pictures["time"] = "accuracy-over-time.png"
    else:
        per_class = pd.DataFrame()
    sections = _sections(store, split, submission_split, board, per_class, pd.DataFrame(meta), pictures, submissions)
    paths = {"html": os.path.join(out_dir, "report.html"), "markdown": os.path.join(out_dir, "report.md")}
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(sections))
    with open(paths["html"], "w") as f:
        f.write(render_html(sections))
    return paths


def _percent(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * float(v):.1f}"


def _number(v, fmt: str = "{:.3f}") -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def format_leaderboard(board: pd.DataFrame, split: str) -> pd.DataFrame:
    """The leaderboard as display strings: percent with one decimal, log-loss with three, ranks from 1."""
    late = board["kind"] == "ensemble"
    shown = pd.DataFrame({
        "source": board["source"], "best": board["best"], "modality": board["modality"],
        "method": [f"{m} (late fusion, chosen on {split}) †" if is_late else str(m) for m, is_late in zip(board["method"], late)],
        "models": board["models"],
        "epochs": [_number(v, "{:.0f}") for v in board["epochs"]], "seed": [_number(v, "{:.0f}") for v in board["seed"]],
        "val accuracy (%)": [_percent(v) for v in board["val accuracy"]],
        "val log-loss": [_number(v) for v in board["val log-loss"]],
        f"{split} accuracy (%)": [_percent(v) for v in board["accuracy"]],
        f"{split} log-loss": [_number(v) for v in board["log-loss"]],
        "segment accuracy (%)": [_percent(v) for v in board["segment accuracy"]],
        "clips": board["clips"].astype(int).astype(str),
    })
    shown.index = pd.RangeIndex(1, len(shown) + 1, name="rank")
    return shown


def _sections(store, split, submission_split, board, per_class, meta, pictures, submissions) -> list[tuple[str, str, Any]]:
    """(title, kind, content) blocks for :mod:`featstore.report_pages` (kind: text, table, table-raw,
    image, links)."""
    sections: list[tuple[str, str, Any]] = [("featstore report", "text", f"Store {store.url}: {store.n_clips} clips. Metrics on the {split!r} split, clip level (a clip's probability is the mean of its segments'), in percent.")]
    if board.empty:
        sections.append(("Leaderboard", "text", f"No predictions with labelled {split!r} clips in this store."))
        return sections
    sections.append(("Leaderboard", "table-raw", format_leaderboard(board, split)))
    if (board["kind"] == "ensemble").any():
        caveat = (f"† Late fusion trains nothing and has no validation split: the rule and the inputs worth reporting are picked by "
                  f"looking at the {split!r} split itself, so these rows are optimistic beside the fusion runs and backbones, "
                  "which kept their best epoch on validation clips carved from train.")
        sections.append(("About late fusion", "text", caveat))
    sections += [
        ("Per-class accuracy of the best source of each modality", "image", pictures["per-class"]),
        ("Per-class accuracy (%), Table I layout", "table", per_class),
        ("Meta-class accuracy (%)", "table", meta),
        ("Confusion matrices of the best sources (cells: clips)", "image", pictures["confusion"]),
    ]
    if "learning" in pictures:
        sections.append(("Learning curves (per-epoch history of the runs)", "image", pictures["learning"]))
    if "time" in pictures:
        sections.append((f"Accuracy versus seconds of the clip seen (the best {BEST_FEW} by accuracy)", "image", pictures["time"]))
    title = f"DCASE 2021 Task 1B submissions ({submission_split!r} clips)"
    if submissions:
        sections.append((title, "links", submissions))
    else:
        sections.append((title, "text", f"No {submission_split!r} clips in the store, so no submission (--submission-split evaluate writes the development fold's)."))
    return sections
