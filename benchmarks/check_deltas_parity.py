"""Check: training with deltas inside the model learns as training with deltas from the loader did.

Issue 14 moved the audio deltas from the loader (6-channel windows, a model without the layer: every
model trained before) into the model's first layer (2-channel windows, ``SpectrogramDeltas``). The two
feed the network the same numbers to float32 rounding, so with the same seed they should reach the
same validation accuracy within noise. This trains the demo's aud-mel both ways on the demo's data
and settings (``pipelines/demo.py``, ``DemoSettings``), one after the other in one run, and the demo's
vis-conv once (its read path changed too: direct chunk reads, the compiled mixup, Pillow's flip).
It prints validation accuracy, loss and seconds per epoch of each.

    python benchmarks/check_deltas_parity.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-class", type=int, default=12)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    args = parser.parse_args()

    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.pipelines.demo import DemoSettings
    from featstore.pipelines.extract_audio import extract_audio
    from featstore.pipelines.extract_frames import extract_frames
    from featstore.pipelines.ingest import ingest
    from featstore.pipelines.train_backbone import train_backbone

    with tempfile.TemporaryDirectory() as work:
        settings = DemoSettings(clips_per_class=args.clips_per_class)
        root = make_demo_dataset(os.path.join(work, "data"), clips_per_class=settings.clips_per_class, seed=settings.seed, duration_s=settings.duration_s)
        store = featstore.init_store(os.path.join(work, "store.zarr"), clip_duration_s=settings.duration_s)
        ingest(store, root)
        extract_audio(store, features=("mel",), workers=0, progress=False)
        extract_frames(store, size=settings.frame_size, workers=0, progress=False)
        print(f"demo data: {store.n_clips} clips of {settings.duration_s:.0f} s; the demo's training settings")
        print("| model | deltas | seed | val accuracy | val loss | best epoch | s per epoch |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        runs = [("aud-mel", "audio/mel", "loader"), ("aud-mel", "audio/mel", "model"), ("vis-conv", "frames/rgb", "-")]
        for seed in (int(s) for s in args.seeds.split(",")):
            for model, input_array, deltas in runs:
                config = replace(settings.train_config(store, model, input_array), seed=seed)
                if deltas != "-":
                    config = replace(config, deltas=deltas)
                started = time.perf_counter()
                metrics = train_backbone(store, config)["config"]["metrics"]
                per_epoch = (time.perf_counter() - started) / config.epochs
                print(f"| {model} | {deltas} | {seed} | {metrics['val_accuracy']:.3f} | {metrics['val_loss']:.3f} | "
                      f"{metrics['best_epoch']} | {per_epoch:.1f} |", flush=True)


if __name__ == "__main__":
    main()
