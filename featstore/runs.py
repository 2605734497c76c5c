"""Runs: the results of Phase II (``fuse``) and late fusion (``ensemble``) kept in the store.

A run is a record ``_featstore/runs/{name}.json`` (kind, config, inputs, metrics, timings), for a
fusion run its trained head ``_featstore/runs/{name}.keras`` (this module owns both names), and its
class probabilities ``predictions/{name}``, (clip, unit, class) float32, where a unit is a segment of
the grid (``fuse``: unit = segment) or the whole clip (``ensemble``: one unit). A backbone's own
``predictions/{model}`` (written by ``embed``, one unit per segment or frame) reads the same way, so
reports and ensembles take models and runs alike.

>>> import featstore                                                 # doctest: +SKIP
>>> from featstore.runs import load_runs, class_table                # doctest: +SKIP
>>> store = featstore.open_store("store.zarr")                       # doctest: +SKIP
>>> print(class_table(load_runs(store), store.classes).round(3))     # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import numpy as np
import pandas as pd

from featstore.errors import NotFoundError
from featstore.names import unknown
from featstore.shards import write_clips
from featstore.store import Store


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_predictions(store: Store, name: str, rows: np.ndarray, probs: np.ndarray, *, stage: str, params: dict[str, Any], unit: str) -> None:
    """Write (clip, unit, class) ``probs`` of store ``rows`` to ``predictions/{name}``, replacing any old run.

    ``unit`` names axis 1 ("segment" or "clip"); each clip is marked done with its checksum, so
    ``verify`` checks run predictions like any other array.
    """
    probs = np.asarray(probs, dtype=np.float32)
    path = f"predictions/{name}"
    units_per_segment = {"segment": 1, "clip": probs.shape[1]}[unit]
    array = store.create_array(
        path, per_clip_shape=probs.shape[1:], dtype="float32", dims=(unit, "class"), stage=stage,
        params={**params, "frames_per_segment": units_per_segment}, overwrite=True,
    )
    ledger = store.ledger(path)
    clip_ids = store.clips["clip_id"].to_numpy()
    order = np.argsort(rows)
    rows, probs = np.asarray(rows)[order], probs[order]
    write_clips(array, rows, probs)  # whole shards (or chunks), each once
    for row, values in zip(rows, probs):
        ledger.mark_done(str(clip_ids[row]), stage, zlib.crc32(values.tobytes()))
    ledger.flush(store.side)


def save_run(store: Store, record: dict[str, Any]) -> None:
    """Write a run's record (it must have a ``name``) atomically."""
    store.side.write(f"runs/{record['name']}.json", json.dumps(record, indent=1).encode())


def load_run(store: Store, name: str) -> dict[str, Any]:
    raw = store.side.read(f"runs/{name}.json")
    if raw is None:
        existing = [n[: -len(".json")] for n in store.side.listdir("runs") if n.endswith(".json")]
        raise NotFoundError(unknown("run", name, existing, "featstore fuse or ensemble make runs"))
    return json.loads(raw)


def save_run_head(store: Store, name: str, model: Any) -> None:
    """Save a fusion run's trained Keras head as ``runs/{name}.keras``."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        path = f"{work}/head.keras"
        model.save(path)
        with open(path, "rb") as f:
            store.side.write(f"runs/{name}.keras", f.read())


def run_head_bytes(store: Store, name: str) -> bytes:
    """The bytes of fusion run ``name``'s head (``.keras``); refused for a run without one."""
    data = store.side.read_verified(f"runs/{name}.keras")
    if data is None:
        raise NotFoundError(f"run {name!r} has no trained head in the store (only fusion runs have one)")
    return data


def load_runs(store: Store) -> list[dict[str, Any]]:
    """Every run record of the store, oldest first."""
    names = [n[: -len(".json")] for n in store.side.listdir("runs") if n.endswith(".json")]
    return sorted((load_run(store, n) for n in names), key=lambda r: (r.get("created", ""), r["name"]))


def class_table(records: list[dict[str, Any]], classes: list[str], *, level: str = "clip") -> pd.DataFrame:
    """The paper's Table I layout: rows = classes then ``overall``, columns = runs; accuracies in [0, 1].

    ``level``: "clip" or "segment" (ensembles have clip level only; they are left out of a segment table).
    """
    columns = {}
    for r in records:
        m = r.get("metrics", {}).get(level)
        if m:
            columns[r["name"]] = [m["per_class_accuracy"].get(c, np.nan) for c in classes] + [m["accuracy"]]
    return pd.DataFrame(columns, index=[*classes, "overall"])


def markdown_table(frame: pd.DataFrame, *, percent: bool = True) -> str:
    """A DataFrame as a GitHub Markdown table (values as percentages with one decimal by default)."""
    def cell(v):
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else (f"{100 * v:.1f}" if percent else f"{v:.3f}")
        return str(v)

    header = "| " + " | ".join(["", *map(str, frame.columns)]) + " |"
    rule = "| " + " | ".join(["---"] * (len(frame.columns) + 1)) + " |"
    body = ["| " + " | ".join([str(i), *(cell(v) for v in row)]) + " |" for i, row in zip(frame.index, frame.to_numpy())]
    return "\n".join([header, rule, *body])
