"""Benchmark: `featstore predict` with an exported system on new clips, against running the same
stages by hand, and the cost of a re-run, measured in the same run (CPU, in-process).

A system is trained on one generated store (tiny aud-mel + tiny visual backbones, an audio-visual f4
head) and exported. The new clips are another generated dataset. Then, in alternating rounds, each
on a fresh store of the new clips:

- by hand: extract-audio (mel), extract-frames, register and embed both backbones, read the fc10
  embeddings, apply the head, write ``predictions/``, as a user would chain the commands;
- predict: ``predict(store, System.load(dir))``, which runs exactly those steps itself
  (target: within 1.1x of by hand: the system adds no overhead);
- re-run: ``predict`` again on the same store (every clip already predicted).

    python benchmarks/bench_predict.py --clips-per-class 3 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def _train_system(work: str, clips_per_class: int) -> str:
    import keras

    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.models import build_model
    from featstore.models.head import add_head
    from featstore.pipelines.embed import embed
    from featstore.pipelines.extract_audio import AudioConfig, extract_audio
    from featstore.pipelines.extract_frames import FramesConfig, extract_frames
    from featstore.pipelines.fuse import FuseConfig, fuse
    from featstore.pipelines.ingest import ingest
    from featstore.pipelines.stages import system_from_run

    root = make_demo_dataset(os.path.join(work, "train-data"), clips_per_class=clips_per_class, seed=1, duration_s=10.0)
    store = featstore.init_store(os.path.join(work, "train.zarr"))
    ingest(store, root)
    extract_audio(store, AudioConfig(features=("mel",)), workers=0)
    extract_frames(store, FramesConfig(size=32), workers=0)
    keras.utils.set_random_seed(0)
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(8, 16), head_units=32).save(os.path.join(work, "aud.keras"))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs)))
    keras.Model(inputs, add_head(x, units=32)).save(os.path.join(work, "vis.keras"))
    embed(store, "aud-mel", model_file_path=os.path.join(work, "aud.keras"))
    embed(store, "tiny-vis", model_file_path=os.path.join(work, "vis.keras"), input_array="frames/rgb")
    fuse(store, FuseConfig(method="f4", epochs=3))
    return system_from_run(store, "fuse-f4-av").export(os.path.join(work, "system"))


def _by_hand(store, system_dir: str) -> None:
    """The same stages as predict, chained by hand."""
    from featstore.packed import packed_segment_embeddings
    from featstore.pipelines.embed import embed
    from featstore.pipelines.extract_audio import AudioConfig, extract_audio
    from featstore.pipelines.extract_frames import FramesConfig, extract_frames
    from featstore.registry import load_keras
    from featstore.runs import write_predictions
    import featstore.models.fusion  # noqa: F401 - FusionLayer

    extract_audio(store, AudioConfig(features=("mel",)), workers=0)
    extract_frames(store, FramesConfig(size=32), workers=0)
    embed(store, "aud-mel", model_file_path=os.path.join(system_dir, "backbones", "aud-mel.keras"))
    embed(store, "tiny-vis", model_file_path=os.path.join(system_dir, "backbones", "tiny-vis.keras"), input_array="frames/rgb")
    per_model = [packed_segment_embeddings(store, f"embeddings/{m}/fc10") for m in ("aud-mel", "tiny-vis")]
    x = np.stack([v for v, _ in per_model], axis=2)
    head = load_keras(os.path.join(system_dir, "heads", "fuse-f4-av.keras"))
    n, s, m, d = x.shape
    probs = np.asarray(head(x.reshape(-1, m, d), training=False)).reshape(n, s, -1)
    write_predictions(store, "by-hand", per_model[0][1], probs, stage="by-hand", params={}, unit="segment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=3, help="Clips per class of the new data (10 s each).")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.pipelines.ingest import ingest
    from featstore.pipelines.predict import predict
    from featstore.system import System

    with tempfile.TemporaryDirectory() as work:
        system_dir = _train_system(work, 2)
        new_root = make_demo_dataset(os.path.join(work, "new-data"), clips_per_class=args.clips_per_class, seed=7, duration_s=10.0)
        n_clips = 10 * args.clips_per_class

        def fresh(name: str):
            store = featstore.init_store(os.path.join(work, name))
            ingest(store, new_root)
            return store

        hand_s, predict_s, rerun_s = [], [], []
        for r in range(args.rounds):
            store = fresh(f"hand-{r}.zarr")
            t = time.perf_counter()
            _by_hand(store, system_dir)
            hand_s.append(time.perf_counter() - t)
            store = fresh(f"predict-{r}.zarr")
            t = time.perf_counter()
            report = predict(store, System.load(system_dir), workers=0)
            predict_s.append(time.perf_counter() - t)
            assert report.done == n_clips, report.to_json()
            t = time.perf_counter()
            again = predict(store, System.load(system_dir), workers=0)
            rerun_s.append(time.perf_counter() - t)
            assert again.done == 0
            print(f"round {r + 1}: by hand {hand_s[-1]:.2f} s, predict {predict_s[-1]:.2f} s ({predict_s[-1] / hand_s[-1]:.2f}x), re-run {rerun_s[-1]:.3f} s")

    hand, pred, rerun = (statistics.median(v) for v in (hand_s, predict_s, rerun_s))
    ratios = [p / h for p, h in zip(predict_s, hand_s)]
    print(f"\n{n_clips} new 10 s clips, medians of {args.rounds} alternating rounds, in-process:")
    print("| run | seconds | clips/s | vs by hand |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| stages by hand | {hand:.2f} | {n_clips / hand:.1f} | 1.00x |")
    print(f"| featstore predict | {pred:.2f} | {n_clips / pred:.1f} | {statistics.median(ratios):.2f}x (target <= 1.1x) |")
    print(f"| predict re-run (all done) | {rerun:.3f} | | {rerun / hand:.3f}x |")


if __name__ == "__main__":
    main()
