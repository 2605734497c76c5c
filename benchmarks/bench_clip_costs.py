"""Benchmark: the driver's per-clip bookkeeping at the evaluation set's size, synthetic rows.

For N clips (default 9,000 and 72,000): ledger marks (one per clip and array), one ledger flush
of N marks (the runner flushes every couple of seconds, so a flush's cost over that interval is its
share of a run), N failure records and their flush. Prints microseconds per clip at both sizes: a
cost that grows faster than linearly shows as a per-clip time that grows with N.

    python benchmarks/bench_clip_costs.py --sizes 9000,72000
"""

from __future__ import annotations

import argparse
import tempfile
import time

from featstore.ledger import Failures, Ledger
from featstore.sidefiles import SideFiles


def measure(n: int, work: str) -> dict[str, float]:
    side = SideFiles(f"{work}/{n}")
    ids = [f"clip-{i:06d}" for i in range(n)]
    ledger = Ledger.load(side, "predictions/x", "fp")
    t = time.perf_counter()
    for cid in ids:
        ledger.mark_done(cid, "input-fingerprint-0123456789", 123456789, {})
    marks = time.perf_counter() - t
    t = time.perf_counter()
    ledger.flush(side)
    flush = time.perf_counter() - t
    failures = Failures(side, ["predictions/x"])
    t = time.perf_counter()
    for cid in ids:
        failures.record("embed", "predictions/x", cid, "ValueError", "broken input")
    record = time.perf_counter() - t
    t = time.perf_counter()
    failures.flush()
    fflush = time.perf_counter() - t
    return {"ledger marks": marks, "ledger flush (one)": flush, "failure records": record, "failures flush (one)": fflush}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="9000,72000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        results = {n: measure(n, work) for n in sizes}
    print(f"{'step':24s}" + "".join(f"{f'us/clip @ {n}':>18s}" for n in sizes) + f"{'ratio':>8s}")
    for step in results[sizes[0]]:
        per = [results[n][step] / n * 1e6 for n in sizes]
        print(f"{step:24s}" + "".join(f"{p:18.2f}" for p in per) + f"{per[-1] / per[0]:8.2f}")
    n = sizes[-1]
    print(f"a ledger flush of {n} marks: {results[n]['ledger flush (one)'] * 1e3:.0f} ms (every 2 s in a run: {results[n]['ledger flush (one)'] / 2:.1%} of it)")


if __name__ == "__main__":
    main()
