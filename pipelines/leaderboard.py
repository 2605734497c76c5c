"""The report's leaderboard: one row per prediction source, what made it and how it scores.

A source is a backbone's own ``predictions/{model}`` or a run (``fuse``, ``ensemble``, ``predict``;
see :mod:`featstore.runs`). Its description comes from what the store recorded: the model registry
entry (training config, validation metrics) or the run record (method, models, config, history).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from featstore.errors import FeatstoreError
from featstore.registry import model_entry
from featstore.runs import load_runs
from featstore.store import Store

#: How a set of modalities is named in the report.
MODALITY_NAMES = {("audio",): "audio", ("visual",): "visual", ("audio", "visual"): "audio-visual"}


def describe_sources(store: Store, names: list[str]) -> dict[str, dict[str, Any]]:
    """{source: {kind, modality, method, models, epochs, seed, val_accuracy, val_log_loss, history}}.

    ``history`` is {curve name: per-epoch values} where the record holds one (fusion runs; models
    whose registry entry keeps one), else empty. Missing facts are None.
    """
    runs = {r["name"]: r for r in load_runs(store)}
    described: dict[str, dict[str, Any]] = {}

    def modalities(name: str) -> tuple[str, ...]:
        if name in described:
            return described[name]["_modalities"]
        if name in runs:
            r = runs[name]
            if r.get("modalities"):
                return tuple(sorted(r["modalities"]))
            if r.get("inputs"):
                return tuple(sorted({m for i in r["inputs"] for m in modalities(i)}))
        path = f"predictions/{name}"
        if store.has_array(path):
            modality = store.provenance(path).modality
            return tuple(sorted(m for m in ("audio", "visual") if m in modality)) or (modality,)
        return ()

    for name in names:
        mods = modalities(name)
        row: dict[str, Any] = {"_modalities": mods, "modality": MODALITY_NAMES.get(mods, "+".join(mods) or "?"),
                               "kind": "model", "method": "backbone", "models": name, "epochs": None, "seed": None,
                               "val_accuracy": None, "val_log_loss": None, "history": {}}
        if name in runs:
            r = runs[name]
            config = r.get("config", {})
            row.update(kind=r["kind"], method=r.get("method") or r.get("rule", "").upper() or r["kind"],
                       models=", ".join(r.get("models") or r.get("inputs") or []), epochs=config.get("epochs"), seed=config.get("seed"))
            history = r.get("history") or {}
            if history.get("val_log_loss"):
                row["val_log_loss"] = float(np.min(history["val_log_loss"]))
            row["history"] = {k: list(v) for k, v in history.items() if isinstance(v, list)}
        else:
            try:
                config = model_entry(store, name).get("config") or {}
            except FeatstoreError:
                config = {}
            metrics = config.get("metrics", {})
            row.update(epochs=config.get("epochs"), seed=config.get("seed"), val_accuracy=metrics.get("val_accuracy"), val_log_loss=metrics.get("val_loss"))
            history = config.get("history") or metrics.get("history") or {}
            row["history"] = {k: list(v) for k, v in history.items() if isinstance(v, list)}
        described[name] = row
    return described


def leaderboard(records: list[dict[str, Any]], described: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Rows sorted by clip accuracy (then log-loss); ``best`` names the modality a row is best of.

    ``records``: [{name, metrics}] with clip-level (and, for multi-unit sources, segment-level)
    metrics on the report's split. Accuracies are fractions, rendered as percent.
    """
    rows = []
    for r in records:
        d, clip = described[r["name"]], r["metrics"]["clip"]
        rows.append({
            "source": r["name"], "modality": d["modality"], "method": d["method"], "models": d["models"],
            "epochs": d["epochs"], "seed": d["seed"], "val accuracy": d["val_accuracy"], "val log-loss": d["val_log_loss"],
            "accuracy": clip["accuracy"], "log-loss": clip["log_loss"],
            "segment accuracy": r["metrics"].get("segment", {}).get("accuracy"), "clips": clip["n"], "kind": d["kind"],
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(["accuracy", "log-loss"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table["best"] = ""
    for modality, group in table.groupby("modality", sort=False):
        table.loc[group.index[0], "best"] = f"\u2605 best {modality}"
    return table


def best_per_modality(table: pd.DataFrame) -> dict[str, str]:
    """{modality: source} of the best row of each modality, in the leaderboard's order."""
    if table.empty:
        return {}
    return {row.modality: row.source for row in table[table["best"] != ""].itertuples()}
