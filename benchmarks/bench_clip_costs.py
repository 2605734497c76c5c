"""Benchmark: the per-clip costs of tiny clips outside the decoding and the models, at the
evaluation set's size, on synthetic rows.

For N clips (default 9,000 and 72,000), each step as a run does it:

- ingest: N clips-table rows checked and appended (``Store.add_clips``; the per-file probe of a
  real ingest is one file each, linear by nature, and measured in ``bench_evalset.py``);
- clip selection: N clips named by id, as ``predict`` hands them to each stage (``select_clips``);
- ledger marks (one per clip and array) and one ledger flush of N marks (the runner flushes every
  couple of seconds, spaced by 20x a flush's own cost, so a flush's cost over that interval is
  its share of a run);
- N failure records and their flush;
- prediction writes: N clips of (1, 10) float32 class probabilities written whole shards at a
  time into a sharded array (``featstore.shards.write_clips``), as ``predict`` writes them;
- the submission file of those N clips (``write_predict_submission``).

Prints microseconds per clip at both sizes: a cost that grows faster than linearly shows as a
per-clip time that grows with N (the ratio column).

    python benchmarks/bench_clip_costs.py --sizes 9000,72000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

import featstore
from featstore.clips import normalise_clips
from featstore.constants import SHARD_MB
from featstore.ledger import Failures, Ledger
from featstore.pipelines.predict import write_predict_submission
from featstore.pipelines.runner import FLUSH_EVERY_S, FLUSH_SPACING, select_clips
from featstore.shards import write_clips
from featstore.sidefiles import SideFiles


def _timed(step, results: dict[str, float], name: str):
    t = time.perf_counter()
    value = step()
    results[name] = time.perf_counter() - t
    return value


def measure(n: int, work: str) -> dict[str, float]:
    results: dict[str, float] = {}
    side = SideFiles(f"{work}/{n}")
    ids = [f"clip-{i:06d}" for i in range(n)]
    ledger = Ledger.load(side, "predictions/x", "fp")

    def marks():
        for cid in ids:
            ledger.mark_done(cid, "input-fingerprint-0123456789", 123456789, {})

    _timed(marks, results, "ledger marks")
    _timed(lambda: ledger.flush(side), results, "ledger flush (one)")
    failures = Failures(side, ["predictions/x"])

    def records():
        for cid in ids:
            failures.record("embed", "predictions/x", cid, "ValueError", "broken input")

    _timed(records, results, "failure records")
    _timed(failures.flush, results, "failures flush (one)")

    root = os.path.join(work, f"data-{n}")
    os.makedirs(root)
    store = featstore.init_store(os.path.join(work, f"eval-{n}.zarr"), segment_s=1.0, clip_duration_s=1.0, shard_mb=SHARD_MB)  # as featstore init
    store.set_dataset_root(root)
    names = [str(i) for i in range(n)]
    table = pd.DataFrame({"clip_id": names, "split": "test", "audio_path": [f"audio/{c}.wav" for c in names], "video_path": [f"video/{c}.mp4" for c in names],
                          "duration_s": 1.0, "audio_fingerprint": "a" * 32, "video_fingerprint": "v" * 32})
    _timed(lambda: store.add_clips(normalise_clips(table)), results, "ingest (clips table)")
    rows = _timed(lambda: select_clips(store, names), results, "clip selection by id")
    assert rows == list(range(n))
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=(n, 1)).astype(np.float32)  # (clip, segment, class)
    array = store.create_array("predictions/p", per_clip_shape=(1, 10), dtype="float32", dims=("segment", "class"), stage="predict", params={})
    predictions = Ledger.load(store.side, "predictions/p", store.provenance("predictions/p").fingerprint)

    def prediction_writes():
        write_clips(array, rows, probs)
        for cid, values in zip(names, probs):
            predictions.mark_done(cid, "system", 0)
        predictions.flush(store.side)

    _timed(prediction_writes, results, "prediction writes")
    submission = os.path.join(work, f"submission-{n}.tsv")
    assert _timed(lambda: write_predict_submission(store, "p", None, submission), results, "submission file") == n
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="9000,72000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        results = {n: measure(n, work) for n in sizes}
    print("| step | " + " | ".join(f"us/clip @ {n:,}" for n in sizes) + f" | ratio | s @ {sizes[-1]:,} |")
    print("| --- | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: |")
    for step in results[sizes[0]]:
        per = [results[n][step] / n * 1e6 for n in sizes]
        print(f"| {step} | " + " | ".join(f"{p:.2f}" for p in per) + f" | {per[-1] / per[0]:.2f} | {results[sizes[-1]][step]:.2f} |")
    n = sizes[-1]
    flush = results[n]["ledger flush (one)"]
    interval = max(FLUSH_EVERY_S, FLUSH_SPACING * flush)  # the runner's spacing
    print(f"a ledger flush of {n:,} marks: {flush * 1e3:.0f} ms; the runner flushes every {interval:.1f} s then: {flush / interval:.1%} of a run")


if __name__ == "__main__":
    main()
