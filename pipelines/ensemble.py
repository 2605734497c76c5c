"""`featstore ensemble`: late fusion of stored predictions (MEAN / PROD / MAX), saved as a run.

Each input (a model's or a run's ``predictions/{name}``, (clip, unit, class)) gives a clip
probability: the mean over its segments or frames. The inputs are then combined per clip:

- ``mean``: the average of the inputs' probabilities;
- ``prod``: the product, computed in log space and renormalised to sum 1;
- ``max``: the element-wise maximum, renormalised to sum 1.

The argmax is the label. The combined probabilities are written to ``predictions/{run}`` as
(clip, 1, class), and the run (rule, inputs, clip-level metrics on ``split``) to
``_featstore/runs/{run}.json`` (see :mod:`featstore.runs`).
Only clips done in every input are combined.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from featstore.constants import SPLITS
from featstore.errors import ConfigError, NotFoundError
from featstore.metrics import EPS, classification_metrics
from featstore.names import single_name, unknown
from featstore.pipelines.config import check_fields, option
from featstore.packed import packed_segment_embeddings
from featstore.runs import save_run, utc_now, write_predictions
from featstore.store import Store

RULES = ("mean", "prod", "max")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """Every choice of a late-fusion run; each option's only default (the command's options come
    from here)."""

    rule: str = option(dataclasses.MISSING, "Combination rule.", choices=RULES)
    inputs: tuple[str, ...] = option(dataclasses.MISSING, "Comma-separated models or runs with stored predictions.", kind=str)
    name: str | None = option(None, "Run name (default: ensemble-RULE-A+B...).", kind=str, usage=True, check=single_name)
    split: str = option("evaluate", "Split the metrics are computed on.", choices=SPLITS)

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.inputs) < 2:
            raise ConfigError(f"an ensemble needs at least two --inputs, got {','.join(self.inputs) or 'none'}")


def combine(clip_probs: np.ndarray, rule: str) -> np.ndarray:
    """(input, clip, class) probabilities -> (clip, class), rows summing to 1."""
    p = np.asarray(clip_probs, dtype=np.float64)
    if rule == "mean":
        out = p.mean(axis=0)
    elif rule == "prod":
        logs = np.log(np.clip(p, EPS, 1.0)).sum(axis=0)
        out = np.exp(logs - logs.max(axis=-1, keepdims=True))
    elif rule == "max":
        out = p.max(axis=0)
    else:
        raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    return out / out.sum(axis=-1, keepdims=True)


def ensemble(store: Store, inputs: list[str], *, rule: str, name: str | None = None, split: str = "evaluate") -> dict[str, Any]:
    """Combine the predictions of ``inputs``; write and register the run; return its record."""
    config = EnsembleConfig(rule=rule, inputs=tuple(inputs), name=name, split=split)
    inputs = list(config.inputs)
    name = name or f"ensemble-{rule}-{'+'.join(inputs)}"
    paths = [f"predictions/{i}" for i in inputs]
    for item, path in zip(inputs, paths):
        if not store.has_array(path):
            existing = [p.split("/", 1)[1] for p in store.array_paths() if p.startswith("predictions/")]
            raise NotFoundError(unknown("predictions of", item, existing, "embed a model, or fuse a run, first") + " (--inputs)")
    per_input = [packed_segment_embeddings(store, p) for p in paths]  # (clip, segment, class), rows
    rows = per_input[0][1]
    for _, r in per_input[1:]:
        rows = np.intersect1d(rows, r)
    clip_probs = np.stack([v[np.searchsorted(r, rows)].astype(np.float64).mean(axis=1) for v, r in per_input])
    combined = combine(clip_probs, rule)
    write_predictions(store, name, rows, combined[:, None, :], stage="ensemble", params={"rule": rule, "inputs": inputs}, unit="clip")
    labels = store.label_indices(store.clips["label"])[rows]
    in_split = (store.clips["split"].to_numpy()[rows] == split) & (labels >= 0)
    metrics = {"clip": classification_metrics(combined[in_split], labels[in_split], store.classes)} if in_split.any() else {}
    record = {"name": name, "kind": "ensemble", "rule": rule, "inputs": inputs, "split": split, "clips": int(len(rows)), "metrics": metrics, "created": utc_now()}
    save_run(store, record)
    return record
