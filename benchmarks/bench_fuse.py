"""Benchmark: one Phase II (fuse) epoch from the store, versus the same arrays already in memory and
versus one ``.npy`` file per clip and model (the papers' code), measured in the same run.

The data: synthetic FC(10) embeddings of the five backbones (three audio, 10 segments per clip; two
visual, 20 frames per clip) for ``--clips`` clips (default the full TAU 2021 development set,
12,291), written to a real Zarr store through the store API (one chunk per clip, ledger, checksums)
and, for the baseline, to ``clips x 5`` ``.npy`` files.

Each timed run is *load the embeddings, then one f4 training epoch* (``train_head`` with one epoch,
validation pass included; the model build and graph tracing are in every variant alike):

- ``memory``: the (clip, segment, model, dim) array is already in memory: the epoch alone;
- ``store``: :func:`featstore.pipelines.fuse.load_fusion_data` from the store, as ``featstore fuse`` does; its
  packed cache is warm (built by an earlier read), the case of every fuse run after the first;
- ``store-cold``: the same with the packed cache deleted first (the very first fuse on a store);
- ``npy-per-batch``: no loading step; the epoch reads its examples from the per-clip files batch by
  batch, as a per-file data generator does (each example loads its clip's file of each model and
  takes its segment), with the same head, optimizer and batch size (``train_on_batch``);
- ``npy-preload``: ``np.load`` of every per-clip file once, visual frames averaged per segment,
  stacked, then the in-memory epoch: the smarter per-file baseline, reported too.

Variants alternate over ``--rounds`` rounds; the medians are compared. Targets (issue 6): store
within 1.2x of memory; store at least 10x faster than npy-per-batch. On a GPU machine the epoch runs in GPU
memory (``tf.constant`` on /GPU:0), and the printed epoch time is the GPU one.

    python benchmarks/bench_fuse.py                 # 12,291 clips
    python benchmarks/bench_fuse.py --clips 2000    # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zlib

import numpy as np

MODELS = (("aud-mel", 10, "audio/mel", 1), ("aud-gam", 10, "audio/gam", 1), ("aud-cqt", 10, "audio/cqt", 1), ("vis-inc", 20, "frames/rgb", 2), ("vis-conv", 20, "frames/rgb", 2))


def make_store(path: str, n_clips: int, rng: np.random.Generator):
    """A store with ``n_clips`` labelled clips (70% train in 300 locations) and fc10 embeddings of the five models."""
    import pandas as pd

    import featstore

    store = featstore.init_store(path)
    labels = rng.integers(0, 10, n_clips)
    train = rng.random(n_clips) < 0.7
    store.add_clips(pd.DataFrame({
        "clip_id": [f"c{i:05d}" for i in range(n_clips)],
        "label": [featstore.CLASSES[k] for k in labels],
        "split": np.where(train, "train", "evaluate"),
        "identifier": [f"loc{i % 300}" for i in range(n_clips)],
    }))
    data = {}
    for model, units, source, per_segment in MODELS:
        values = (rng.standard_normal((n_clips, units, 10)) + 2 * np.eye(10)[labels][:, None, :]).astype(np.float32)
        array_path = f"embeddings/{model}/fc10"
        array = store.create_array(array_path, per_clip_shape=(units, 10), dtype="float32", dims=("unit", "dim"), stage="embed",
                                   params={"input": source, "frames_per_segment": per_segment, "layer": "fc10"})
        array[:] = values
        ledger = store.ledger(array_path)
        for i in range(n_clips):
            ledger.mark_done(f"c{i:05d}", "synthetic", zlib.crc32(values[i].tobytes()))
        ledger.flush(store.side)
        data[model] = values
    return store, data


def write_npy(root: str, data: dict) -> None:
    for model, values in data.items():
        os.makedirs(os.path.join(root, model), exist_ok=True)
        for i, v in enumerate(values):
            np.save(os.path.join(root, model, f"c{i:05d}.npy"), v)


def load_npy(root: str, n_clips: int) -> np.ndarray:
    """(clip, segment, model, dim) from one file per clip and model, frames averaged per segment."""
    per_model = []
    for model, units, _, per_segment in MODELS:
        clips = [np.load(os.path.join(root, model, f"c{i:05d}.npy")) for i in range(n_clips)]
        per_model.append(np.stack(clips).reshape(n_clips, units // per_segment, per_segment, 10).mean(axis=2))
    return np.stack(per_model, axis=2)


def npy_per_batch_epoch(root: str, data, train_examples: np.ndarray, config) -> None:
    """One epoch that reads every batch from the per-clip .npy files (no mixup: loading is what differs)."""
    import keras

    from featstore.models.fusion import build_fusion_model

    n_seg = data.x.shape[1]
    model = build_fusion_model("f4", modalities=data.modalities, dim=10, l2=config.l2)
    model.compile(optimizer=keras.optimizers.Adam(config.lr), loss=keras.losses.KLDivergence())
    onehot = np.eye(10, dtype=np.float32)
    order = np.random.default_rng(0).permutation(train_examples)
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        x = np.empty((len(batch), len(MODELS), 10), np.float32)
        for b, example in enumerate(batch):
            clip, segment = divmod(int(example), n_seg)
            for m, (model_name, _, _, per_segment) in enumerate(MODELS):
                units = np.load(os.path.join(root, model_name, f"c{data.rows[clip]:05d}.npy"))
                x[b, m] = units[segment * per_segment : (segment + 1) * per_segment].mean(axis=0)
        model.train_on_batch(x, onehot[data.labels[batch // n_seg]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=12_291)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    import tensorflow as tf

    from featstore.pipelines.fuse import FuseConfig, FusionData, load_fusion_data, select_models, train_head
    from featstore.splits import validation_split

    rng = np.random.default_rng(0)
    config = FuseConfig(method="f4", epochs=1, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        store, _ = make_store(os.path.join(work, "s.zarr"), args.clips, rng)
        models = select_models(store, ("audio", "visual"), None, "fc10")
        in_memory = load_fusion_data(store, models, "fc10")  # also warms the packed cache
        write_npy(os.path.join(work, "npy"), {m: store.array(f"embeddings/{m}/fc10")[:] for m in models})
        print(f"setup: {args.clips} clips x {len(models)} models written in {time.perf_counter() - t:.0f} s; device: {'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'}")
        clips = store.clips.iloc[in_memory.rows].reset_index(drop=True)
        train, val = validation_split(clips, fraction=0.2, seed=0)

        def epoch(data: FusionData) -> float:
            start = time.perf_counter()
            train_head(data, train, val, config, 10)
            return time.perf_counter() - start

        def from_store() -> FusionData:
            return load_fusion_data(store, models, "fc10")

        def from_store_cold() -> FusionData:
            for name in store.side.listdir("packed"):
                store.side.delete(f"packed/{name}")
            return from_store()

        def from_npy() -> FusionData:
            x = load_npy(os.path.join(work, "npy"), args.clips)
            return FusionData(x, in_memory.rows, in_memory.labels, in_memory.models, in_memory.modalities, "fc10")

        train_examples = (train[:, None] * 10 + np.arange(10)).ravel()
        variants = {"memory": lambda: in_memory, "store": from_store, "store-cold": from_store_cold, "npy-preload": from_npy, "npy-per-batch": None}
        epoch(in_memory)  # warm-up: TensorFlow start-up, first tracing
        times: dict[str, list[float]] = {k: [] for k in variants}
        loads: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, load in variants.items():
                if load is None:
                    start = time.perf_counter()
                    npy_per_batch_epoch(os.path.join(work, "npy"), in_memory, train_examples, config)
                    loads[name].append(0.0)
                    times[name].append(time.perf_counter() - start)
                    continue
                start = time.perf_counter()
                data = load()
                loads[name].append(time.perf_counter() - start)
                np.testing.assert_array_equal(data.x.shape, in_memory.x.shape)
                times[name].append(loads[name][-1] + epoch(data))
        median = {k: statistics.median(v) for k, v in times.items()}
        print(f"\none f4 epoch on {args.clips} clips x 10 segments x {len(models)} fc10 embeddings ({len(train) * 10} training examples), medians of {args.rounds} rounds:")
        print(f"{'variant':<14} {'load s':>8} {'load+epoch s':>13} {'vs memory':>10}")
        for k in variants:
            print(f"{k:<14} {statistics.median(loads[k]):>8.3f} {median[k]:>13.3f} {median[k] / median['memory']:>9.2f}x")
        print(f"\nstore / memory: {median['store'] / median['memory']:.2f}x (target <= 1.2x)")
        print(f"npy-per-batch / store: {median['npy-per-batch'] / median['store']:.1f}x faster from the store (target >= 10x)")
        print(f"npy-preload / store: {median['npy-preload'] / median['store']:.1f}x; npy-per-batch / store-cold: {median['npy-per-batch'] / median['store-cold']:.1f}x")


if __name__ == "__main__":
    main()
