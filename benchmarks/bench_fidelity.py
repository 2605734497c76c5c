"""Benchmark: does the method reproduce the papers' qualitative result on generated data? The demo's
pipeline (:func:`featstore.pipelines.demo.run_pipeline`, same settings) on a larger demo dataset.

Default: 24 clips per class (240 clips of 10 s, two per recording location), 30% of each class's
clips, whole locations, in the evaluate split (80 clips from locations no backbone or fusion head
saw). Prints, on that split at clip level:

- Table I: per-class accuracy of f1..f6 on audio-visual embeddings (rows: classes then overall);
- Table II: audio only, visual only and audio-visual, each with early fusion f4 and the best
  late-fusion rule (MEAN / PROD / MAX of the backbones' predictions), accuracy and log-loss;
- the baseline the numbers are read against: chance (10% accuracy, log-loss ln 10 = 2.303) and
  the ceiling the data's design allows each single modality (:func:`design_ceiling`).

No speed claim: the wall time is printed for information only.

    python benchmarks/bench_fidelity.py                         # ~20 min on 2 CPU cores
    python benchmarks/bench_fidelity.py --clips-per-class 20 --workdir /tmp/fidelity
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace

from featstore.constants import CLASSES
from featstore.demo import AUDIO_KIND, CUE_PROBABILITY, VISUAL_KIND
from featstore.runs import class_table, markdown_table


def design_ceiling(kinds: dict[str, str]) -> float:
    """Best expected accuracy from one modality: a clip without its cue is a guess among its kind-mates."""
    sizes = [sum(1 for other in CLASSES if kinds[other] == kinds[c]) for c in CLASSES]
    return sum(1.0 if n == 1 else CUE_PROBABILITY + (1 - CUE_PROBABILITY) / n for n in sizes) / len(CLASSES)


def main() -> None:
    from featstore.pipelines.demo import DemoSettings, run_pipeline, table_two

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-class", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="Keep the dataset, store and report here (default: a temporary folder).")
    args = parser.parse_args()
    settings = replace(DemoSettings(), clips_per_class=args.clips_per_class, seed=args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_pipeline(args.workdir or tmp, settings, echo=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - start
        n_eval = int((result.store.clips["split"] == "evaluate").sum())
        av = result.records["av"]["fuse"]
        table = class_table(av, result.store.classes).rename(columns={r["name"]: r["method"] for r in av})
        print(f"\nTable I: audio-visual f1..f6, per-class clip accuracy (%) on evaluate ({n_eval} clips)")
        print(markdown_table(table))
        print(f"\nTable II: evaluate split, {n_eval} clips, clip level")
        print(table_two(result.records))
        print(f"\nBaseline: chance 10.0% accuracy, log-loss {math.log(len(CLASSES)):.3f}; design ceiling of one modality "
              f"(cue in {CUE_PROBABILITY:.0%} of clips): audio {100 * design_ceiling(AUDIO_KIND):.1f}%, "
              f"visual {100 * design_ceiling(VISUAL_KIND):.1f}%; audio-visual 100%")
        print(f"wall time {seconds / 60:.1f} min ({args.clips_per_class} clips per class, seed {args.seed}); exit code {result.exit_code}")


if __name__ == "__main__":
    main()
