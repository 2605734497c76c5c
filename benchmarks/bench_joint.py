"""Benchmark: joint audio-visual training (Chen et al. 2022) against cached visual features, versus the
same training running the frozen visual encoder on the frames at every step (the way Chen et al.
train), in one run; and the joint model against its own audio-only encoder.

The data: the demo dataset (``featstore demo-data``: each class has an audio and a visual signature,
each modality shows a partner class's signature on some clips), ingested, mel spectrograms, frames
at ``--size`` px. The frozen visual encoder: a ``keras.applications`` model (``--app``, default
ResNet50) cut at ``--layer`` (default ``conv3_block4_out``, its bottom three stages, globally pooled:
"the bottom layers of a pretrained image model"), with ``--weights FILE`` or random weights (a
random-init ResNet keeps signal through its residual connections; a random-init MobileNetV2 does not).

Variants, each ``train_joint`` with the same JointConfig (cnn1d encoder, ``--epochs``, seed):

- ``cached``: the visual input is the cached embedding (``featstore train-joint``);
- ``frames``: the visual input is the window's frames, through the frozen encoder inside the model
  (``TimeDistributed``), every training and validation step;
- ``audio-only``: the same encoder and head without a visual input.

Printed: the median epoch time (training + validation pass; the first epoch, which traces the graph,
left out when there are more) of each variant and the ratio
frames / cached; the one-time cost of building the cache (one encoder pass over every frame) and
after how many epochs it has paid for itself; clip accuracy on ``evaluate`` of every variant, for
each of ``--seeds`` (frames only for the first seed: it is the slow one).

    python benchmarks/bench_joint.py                          # 6 clips per class of 10 s
    python benchmarks/bench_joint.py --clips-per-class 2 --epochs 2 --size 64   # a quick look

``--loader``: only the input pipeline, no model. train-joint's batches (the training loader with
the visual embedding as its paired input, ``--loader-workers`` threads) against a plain ``tf.data``
pipeline over window indices (a global shuffle of the (clip, window) pairs, then a
``numpy_function`` per batch that decompresses each window's clip, gathers, mixes; ``map`` with
``AUTOTUNE``), both under op determinism as ``train_joint`` runs, on ``--loader-clips`` clips of 10 s
(the loader benchmark's store) with a 1024-d visual embedding per window, rounds alternating:

    python benchmarks/bench_joint.py --loader --loader-clips 200 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
import zlib

import numpy as np


def build_store(root: str, args):
    """Demo dataset -> store with audio/mel and frames/rgb."""
    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.pipelines.extract_audio import extract_audio
    from featstore.pipelines.extract_frames import extract_frames
    from featstore.pipelines.ingest import ingest

    data = make_demo_dataset(os.path.join(root, "data"), clips_per_class=args.clips_per_class, seed=0, duration_s=args.duration_s)
    store = featstore.init_store(os.path.join(root, "store.zarr"), clip_duration_s=args.duration_s)
    ingest(store, data)
    extract_audio(store, workers=0, features=("mel",), progress=False)
    extract_frames(store, workers=0, size=args.size, progress=False)
    return store


def cache_visual_embeddings(store, name: str, layer: str, encoder) -> float:
    """Run ``encoder`` over every clip's frames once and store ``embeddings/{name}/{layer}`` the way
    ``embed`` lays them out; returns the seconds it took (inference and writing)."""
    start = time.perf_counter()
    params = {"input": "frames/rgb", "layer": layer, "frames_per_segment": int(store.provenance("frames/rgb")["params"]["frames_per_segment"])}
    path = f"embeddings/{name}/{layer}"
    array = ledger = None
    for row, clip_id in enumerate(store.clips["clip_id"]):
        values = np.asarray(encoder(store.frames(clip_id)[0], training=False), dtype=np.float32)
        if array is None:
            array = store.create_array(path, per_clip_shape=values.shape, dtype="float32", dims=("frame", "dim"), stage="embed", params=params, overwrite=True)
            ledger = store.ledger(path)
        array[row] = values
        ledger.mark_done(clip_id, "embed", zlib.crc32(values.tobytes()))
    ledger.flush(store.side)
    return time.perf_counter() - start


def window_index_pipeline(reader, visual, pairs: np.ndarray, *, batch_size: int, alpha: float, seed: int):
    """The baseline of ``--loader``: tf.data over shuffled window indices, one ``numpy_function``
    per batch reading each window's clip (:meth:`AudioWindows.read`), then mixup."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def read_batch(idx):
        audio, y = reader.read(idx)
        side = visual.read(idx)
        lam = rng.beta(alpha, alpha, len(y)).astype(np.float32)
        perm = rng.permutation(len(y))
        mixed = [lam.reshape((-1,) + (1,) * (x.ndim - 1)) * x + (1 - lam.reshape((-1,) + (1,) * (x.ndim - 1))) * x[perm] for x in (audio, side)]
        return (*mixed, lam[:, None] * y + (1 - lam[:, None]) * y[perm])

    ds = tf.data.Dataset.from_tensor_slices(pairs).shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda idx: tf.numpy_function(read_batch, [idx], [tf.float32] * 3), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda a, v, y: ((a, v), y)).prefetch(tf.data.AUTOTUNE)


def compare_loaders(args) -> None:
    """Windows per second of train-joint's batches against :func:`window_index_pipeline`."""
    from bench_loader import build_store as loader_store

    from featstore.pipelines.train_joint import AudioWindows, JointConfig, _batches
    from featstore.seeding import seed_everything

    seed_everything(0)  # as train_joint does: op determinism on
    with tempfile.TemporaryDirectory() as work:
        store = loader_store(work, args.loader_clips, 20)
        reader = AudioWindows(store, "audio/mel", store.segment_s)
        pairs = reader.index(np.arange(store.n_clips))

        class Embeddings:  # a cached visual embedding per window, as CachedVisual serves it
            table = np.random.default_rng(0).random((store.n_clips, reader.units, 1024), dtype=np.float32)

            def read(self, idx):
                return self.table[idx[:, 0], idx[:, 1]]

        visual, config = Embeddings(), JointConfig(name="bench", batch_size=64, loader_workers=args.loader_workers)

        def rate(dataset) -> float:
            started, served = time.perf_counter(), 0
            for _, y in dataset:
                served += len(y)
            return served / (time.perf_counter() - started)

        rate(_batches(store, reader, visual, pairs, shuffle=True, mixup_alpha=0.4, config=config))  # compiles the loops
        print(f"joint batches of 64 (MEL windows 128x72x2 + a 1024-d embedding, mixup), {store.n_clips} clips, {len(pairs)} windows an epoch:")
        print("| round | tf.data over window indices | train-joint (training loader) | ratio |\n| --- | ---: | ---: | ---: |")
        ratios = []
        for r in range(args.rounds):
            before = rate(window_index_pipeline(reader, visual, pairs, batch_size=64, alpha=0.4, seed=r))
            after = rate(_batches(store, reader, visual, pairs, shuffle=True, mixup_alpha=0.4, config=config))
            ratios.append(after / before)
            print(f"| {r} | {before:,.0f}/s | {after:,.0f}/s | {after / before:.1f}x |")
        print(f"median ratio {float(np.median(ratios)):.1f}x ({args.loader_workers} loader threads, {os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=6)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--size", type=int, default=128, help="Frame size (px).")
    parser.add_argument("--app", default="ResNet50")
    parser.add_argument("--layer", default="conv3_block4_out")
    parser.add_argument("--weights", default=None, help="Local weights file of --app (default: random weights).")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--widths", default="32,64")
    parser.add_argument("--loader", action="store_true", help="Only the input pipeline against a tf.data pipeline over window indices.")
    parser.add_argument("--loader-clips", type=int, default=200)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.loader:
        compare_loaders(args)
        return

    from featstore.models.applications import build_application, embedding_model
    from featstore.pipelines.train_joint import JointConfig, train_joint

    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        store = build_store(root, args)
        n_frames = store.array("frames/rgb").shape[0] * store.array("frames/rgb").shape[1]
        print(f"store: {store.n_clips} clips of {args.duration_s:g} s, {n_frames} frames of {args.size} px ({time.perf_counter() - start:.0f} s to build)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if args.weights is None else "default")
            application = build_application(args.app, input_shape=(args.size, args.size, 3), weights_file=args.weights)
        encoder = embedding_model(application, args.layer)
        cache_s = cache_visual_embeddings(store, args.app, args.layer, encoder)
        print(f"visual encoder: {args.app} up to {args.layer} ({encoder.output.shape[-1]}-d), {'weights ' + args.weights if args.weights else 'random weights'}; cache built in {cache_s:.1f} s")

        common = {"widths": tuple(int(w) for w in args.widths.split(",")), "head_units": 64, "epochs": args.epochs, "batch_size": 32}
        results: dict[str, dict[int, dict]] = {"cached": {}, "frames": {}, "audio-only": {}}
        for seed in seeds:
            runs = {
                "cached": (JointConfig(name="bench-cached", visual_model=args.app, visual_layer=args.layer, seed=seed, **common), {}),
                "audio-only": (JointConfig(name="bench-audio", seed=seed, **common), {}),
            }
            if seed == seeds[0]:
                runs["frames"] = (JointConfig(name="bench-frames", seed=seed, **common), {"frames_encoder": encoder})
            for variant, (config, extra) in runs.items():
                cfg = train_joint(store, config, **extra)["config"]
                results[variant][seed] = {"epoch_s": float(np.median(cfg["epoch_seconds"][1:] or cfg["epoch_seconds"])), "accuracy": cfg["metrics"]["evaluate"]["clip"]["accuracy"], "n": cfg["metrics"]["evaluate"]["clip"]["n"]}
                print(f"  seed {seed} {variant:>10}: {results[variant][seed]['epoch_s']:.2f} s/epoch, evaluate clip accuracy {results[variant][seed]['accuracy']:.3f}")

    first = seeds[0]
    cached_s, frames_s = results["cached"][first]["epoch_s"], results["frames"][first]["epoch_s"]
    print(f"\none epoch (train + validation; median of epochs 2..{args.epochs}), seed {first}:")
    print("| variant | s / epoch | vs cached |\n| --- | ---: | ---: |")
    for variant in ("cached", "frames", "audio-only"):
        print(f"| {variant} | {results[variant][first]['epoch_s']:.2f} | {results[variant][first]['epoch_s'] / cached_s:.2f}x |")
    print(f"\nframes / cached: {frames_s / cached_s:.1f}x; the cache ({cache_s:.1f} s once) pays for itself after {cache_s / max(frames_s - cached_s, 1e-9):.1f} epochs")
    print(f"\nevaluate clip accuracy ({results['cached'][first]['n']} clips):")
    print("| seed | cached | frames | audio-only | cached - audio-only |\n| --- | ---: | ---: | ---: | ---: |")
    for seed in seeds:
        frames = f"{results['frames'][seed]['accuracy']:.3f}" if seed in results["frames"] else ""
        c, a = results["cached"][seed]["accuracy"], results["audio-only"][seed]["accuracy"]
        print(f"| {seed} | {c:.3f} | {frames} | {a:.3f} | {c - a:+.3f} |")
    margins = [results["cached"][s]["accuracy"] - results["audio-only"][s]["accuracy"] for s in seeds]
    print(f"\njoint (cached) - audio-only: mean {np.mean(margins):+.3f}, min {min(margins):+.3f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
