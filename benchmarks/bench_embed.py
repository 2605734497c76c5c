"""Benchmark: `featstore embed` cold versus cache hit, and training windows/s from the Zarr loader
versus the same windows already in memory, measured in the same run (CPU).

- Embed: a small aud-mel model over every clip, in-process (batched); then the same command again,
  which finds every clip cached (target: the hit costs <= 2% of the cold run); and the per-clip eager
  forward pass over the same clips (no writes), against the batched cold run.
- Loader: one epoch of ``model.fit`` with the store-streaming tf.data pipeline of train-backbone
  (shuffled index batches, parallel batch reader, prefetch; deltas derived on the fly) versus a
  ``tf.data.Dataset.from_tensor_slices`` over the same windows precomputed in memory (target: the
  store loader reaches >= 0.8x the in-memory windows/s). Mixup is off in both so only loading differs.

    python benchmarks/bench_embed.py --clips-per-class 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _per_clip_eager_seconds(store) -> float:
    """Seconds of the per-clip eager forward pass (read, one eager call per clip) over every clip."""
    from featstore.pipelines.embed import EmbedConfig, compute_embed
    from featstore.pipelines.stage import ClipTask

    stage = EmbedConfig(model="aud-mel").build(store)
    names = tuple(spec.name for spec in stage.outputs)
    rows = store.clips.to_dict("records")
    started = time.perf_counter()
    for i, row in enumerate(rows):
        compute_embed(ClipTask(i, row["clip_id"], row, store.dataset_root, store.url), stage.params, names)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.models import build_model
    from featstore.pipelines.embed import embed
    from featstore.pipelines.extract_audio import extract_audio
    from featstore.pipelines.ingest import ingest
    from featstore.loader import training_batches
    from featstore.tfdata import tf_dataset

    with tempfile.TemporaryDirectory() as work:
        root = make_demo_dataset(os.path.join(work, "data"), clips_per_class=args.clips_per_class, seed=0)
        store = featstore.init_store(os.path.join(work, "s.zarr"))
        ingest(store, root)
        extract_audio(store, features=("mel",), progress=False)
        keras.utils.set_random_seed(0)
        model = build_model("aud-mel", input_shape=(128, 72, 6), widths=(16, 32), head_units=256)
        path = os.path.join(work, "aud-mel.keras")
        model.save(path)

        cold, _ = embed(store, "aud-mel", model_file_path=path, progress=False)
        hit, _ = embed(store, "aud-mel", model_file_path=path, progress=False)
        assert cold.done == store.n_clips and hit.skipped == store.n_clips
        eager = _per_clip_eager_seconds(store)

        batches = training_batches(store, "audio/mel", split="train", batch_size=args.batch_size, workers=2)
        pairs = batches.pairs
        x_mem, y_mem = (np.concatenate(parts) for parts in zip(*batches.epoch(0)))
        model.compile(optimizer="adam", loss=keras.losses.KLDivergence())
        from_store = tf_dataset(batches)
        from_memory = tf.data.Dataset.from_tensor_slices((x_mem, y_mem)).shuffle(len(pairs), seed=0).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)
        model.fit(from_memory, epochs=1, verbose=0)  # warm-up: graph tracing
        timings = {}
        for name, ds in (("memory", from_memory), ("store", from_store), ("memory2", from_memory), ("store2", from_store)):
            started = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            timings[name] = time.perf_counter() - started
    t_mem = min(timings["memory"], timings["memory2"])
    t_store = min(timings["store"], timings["store2"])
    n = len(pairs)
    print(f"{store.n_clips} clips of 10 s; {os.cpu_count()} cores")
    print(f"embed cold: {cold.seconds:.2f} s ({cold.done} clips); cache hit: {hit.seconds:.3f} s = {hit.seconds / cold.seconds:.1%} of cold (target <= 2%)")
    print(f"embed forward per clip, eager (the reference): {eager:.2f} s; batched cold run above = {eager / cold.seconds:.2f}x faster")
    print(f"training epoch, windows from memory: {t_mem:.2f} s ({n / t_mem:.0f} windows/s)")
    print(f"training epoch, windows from the store: {t_store:.2f} s ({n / t_store:.0f} windows/s) = {t_mem / t_store:.2f}x of memory (target >= 0.8x)")


if __name__ == "__main__":
    main()
