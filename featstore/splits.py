"""Validation carved from the ``train`` split by recording location (docs/explanation/design.md).

Phase I (``train-backbone``) and Phase II (``fuse``) both hold out whole recording locations
(the clips table's ``identifier``), so no location is on both sides; ``evaluate`` and ``test`` are
never touched.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def validation_split(clips: pd.DataFrame, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of the ``train`` split, whole recording locations on each side.

    ``clips`` has ``split`` and ``identifier`` columns; the rows returned index it. Locations are
    taken in a ``seed``-shuffled order until ``fraction`` of the train clips is held out; at least
    one location always stays on the training side.
    """
    train_rows = np.flatnonzero(clips["split"].to_numpy() == "train")
    ids = clips["identifier"].to_numpy()[train_rows]
    locations = sorted(set(ids))
    rng = np.random.default_rng(seed)
    rng.shuffle(locations)
    target = fraction * len(train_rows)
    chosen, count = set(), 0
    for loc in locations:
        if count >= target or len(chosen) == len(locations) - 1:
            break
        chosen.add(loc)
        count += int((ids == loc).sum())
    in_val = np.array([i in chosen for i in ids], dtype=bool)
    return train_rows[~in_val], train_rows[in_val]
