"""Benchmark: the training loader (featstore.loader) reading shuffled batches from the store versus
the same batches gathered from the same arrays held in memory, in one run. Loader only, no model.

Store: ``--clips`` clips of 10 s (default 200) with 224x224 frames (20 per clip, uint8) and MEL
(2 x 128 x 720, float16), as extract-frames / extract-audio write them. To keep set-up short, a
few generated demo clips (``--source-clips``) go through the real stages and their arrays are
copied, row by row through the store's own writer, to fill ``--clips`` rows (real compressed
content, every row its own chunk).

Batches of 64, shuffled with the clip-block shuffle; frames: random resized crop + flip, then mixup;
MEL windows of 1 s with mixup: the static channels (128 x 72 x 2) that models with the deltas layer
take (``train-backbone``'s default: the GPU derives the deltas), and with deltas computed by the
loader (128 x 72 x 6, for models without the layer). Then the same without augmentation and mixup
(the read path alone), and the read path with ``widen=False``: the stored uint8 / float16 values,
for a model that casts on the device, without the float32 batch. The memory baseline serves the identical
batches (same plan, same augmentation, same delta computation) from numpy arrays, gathering each
example directly. ``--workers`` lists the thread counts to try (0 = all in the calling thread: one
core). Thread counts and store / memory alternate within each of ``--rounds`` rounds; the best
epoch of each is kept and the ratio is taken between them (the machine is shared: its load drifts
between runs), and the last thread count against the first is printed as the median of each
round's own ratio. After that table, what the same number of threads gains on this machine with
no loader at all, for a compiled loop of arithmetic and for a compiled copy between arrays (the
ceiling that memory traffic sets for the loader's copies: gather, widen, mix).

First printed: one clip read through zarr (``array[row]``) against featstore's ClipReader, into
fresh and into reused memory (what the loader does), for frames (zstd), MEL (Blosc lz4 +
bit-shuffle, as float arrays are now written) and the same MEL in zstd chunks (``audio/mel_zstd``,
as stores made before wrote them; it also gets a row in the table). Then the read cost per unit of this layout (whole clips, every unit used) against Zarr v3
sharding with one inner chunk per frame or window read at random (why the loader shuffles blocks of
clips instead of changing the layout). Also printed: bytes decompressed per example (over the example's stored size) and the process's
resident memory after each of ``--epochs`` epochs from the store (flat = bounded buffer).

Last, with torch installed: PyTorch's ``DataLoader(StoreDataset(...), batch_size=None, num_workers=N)``
for each N of ``--torch-workers`` against the numpy iterator (:func:`featstore.loader.training_batches`,
inline) on the same MEL windows with mixup, rounds alternating, in windows/s: with the default
``persistent_workers=False``, each pass starts its worker processes, and that start-up is timed too;
with ``persistent_workers=True``, the workers are started by a first pass left out of the timing.
``--torch-only`` builds the store and prints only these rows.

    python benchmarks/bench_loader.py --clips 200 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

# "1 (inline)" means one core: no BLAS threads behind numpy (set before numpy loads its BLAS), and
# no Blosc threads (main()); the loader's own threads are the only parallelism measured
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402


def build_store(work: str, n_clips: int, source_clips: int):
    """A store of ``n_clips`` 10 s clips with frames/rgb (224x224) and audio/mel, done-marked."""
    import pandas as pd

    import featstore
    from featstore.demo import make_demo_dataset
    from featstore.pipelines.extract_audio import extract_audio
    from featstore.pipelines.extract_frames import extract_frames
    from featstore.pipelines.ingest import ingest

    root = make_demo_dataset(os.path.join(work, "data"), clips_per_class=max(1, source_clips // 10), seed=0)
    source = featstore.init_store(os.path.join(work, "source.zarr"))
    ingest(source, root)
    extract_audio(source, features=("mel",), workers=0, progress=False)
    extract_frames(source, size=224, workers=0, progress=False)
    store = featstore.init_store(os.path.join(work, "bench.zarr"))
    copies = -(-n_clips // source.n_clips)
    table = pd.concat([source.clips.assign(clip_id=source.clips.clip_id + f"#{k}") for k in range(copies)])
    store.add_clips(table.iloc[:n_clips].assign(split="train"))
    for path in ("audio/mel", "frames/rgb"):
        prov, values = source.provenance(path), source.array(path)[:]
        target = store.create_array(path, per_clip_shape=tuple(prov["per_clip_shape"]), dtype=prov["dtype"],
                                    dims=tuple(prov["dims"][1:]), stage=prov["stage"], params=prov["params"])
        ledger = store.ledger(path)  # done-marked, as the stages mark them, for training_batches
        for row, clip_id in enumerate(store.clips.clip_id[:n_clips]):
            target[row] = values[row % source.n_clips]
            ledger.mark_done(clip_id, "bench", zlib.crc32(values[row % source.n_clips].tobytes()))
        ledger.flush(store.side)
    # MEL as stores made before Blosc compressed float arrays: zstd chunks, same values
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    mel = store.array("audio/mel")
    old = zarr.create_array(store.group.store, name=OLD_MEL, shape=mel.shape, dtype=mel.dtype, chunks=mel.chunks,
                            fill_value=np.nan, compressors=[ZstdCodec(level=3), Crc32cCodec()], attributes=dict(mel.attrs))
    for row in range(n_clips):
        old[row] = mel[row]
    return store


#: the MEL array copied in the layout stores made before this benchmark's read path had (zstd)
OLD_MEL = "audio/mel_zstd"


def loader(store, path: str, memory=None, *, workers: int, deltas: bool = False, **options):
    """TrainingBatches over every clip of ``path`` (the copied rows carry no done-marks, so the
    ledger filter of :func:`featstore.loader.training_batches` is skipped), from the store or ``memory``."""
    from featstore.loader import TrainingBatches
    from featstore.sources import MemorySource, StoreSource, Units

    units = Units(store, path, deltas=deltas)
    source = MemorySource(memory, units) if memory is not None else StoreSource(store, units, workers)
    pairs = units.index(np.arange(store.n_clips))
    return TrainingBatches(units, source, store.label_indices(store.clips.label), len(store.classes), pairs, workers=workers, **options)


def compare_clip_reads(store, n_clips: int = 64) -> None:
    """ms per clip: zarr's ``array[row]`` vs ClipReader into new memory vs into a reused buffer."""
    from featstore.chunks import ClipReader

    print(f"\nchunk reads, ms per clip over {n_clips} clips in random order (one thread, best of 3):")
    rows = [int(r) for r in np.random.default_rng(1).permutation(n_clips)]
    for path in ("frames/rgb", "audio/mel", OLD_MEL):
        array = store.array(path)
        reader = ClipReader(array)
        buffers = [np.empty(reader.shape, reader.dtype) for _ in range(2)]
        ways = {
            "zarr array[row]": lambda: [array[r] for r in rows],
            "ClipReader, new memory": lambda: [reader.read(r) for r in rows],
            "ClipReader, reused buffer": lambda: [reader.read(r, out=buffers[i % 2]) for i, r in enumerate(rows)],
        }
        ms = {}
        for name, read in ways.items():
            read()
            ms[name] = min(_seconds(read) for _ in range(3)) / n_clips * 1e3
        base = ms["zarr array[row]"]
        print(f"  {path}: " + "; ".join(f"{name} {value:.3f} ms ({base / value:.2f}x zarr's speed)" for name, value in ms.items()))


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def compare_layouts(store, work: str, n_clips: int = 64) -> None:
    """Per-unit read cost: this layout read whole by the block shuffle vs Zarr v3 sharding (one shard
    per clip, one inner chunk per frame or 1 s window) read one unit at random; same codecs."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from featstore.chunks import ClipReader

    print(f"\nlayouts, read cost per unit over {n_clips} clips in random order (one thread):")
    rng = np.random.default_rng(0)
    rows = rng.permutation(n_clips)
    for path in ("frames/rgb", "audio/mel"):
        array, visual = store.array(path), path.endswith("/rgb")
        values = array[:n_clips]
        fps = store.provenance(path)["params"]["frames_per_segment"]
        units = values.shape[1] if visual else values.shape[-1] // fps
        inner = (1, 1, *values.shape[2:]) if visual else (1, *values.shape[1:3], fps)
        sharded = zarr.create_array(os.path.join(work, "sharded.zarr", path.replace("/", "-")), shape=values.shape,
                                    dtype=values.dtype, chunks=inner, shards=(1, *values.shape[1:]),
                                    compressors=[ZstdCodec(level=3), Crc32cCodec()])
        sharded[:] = values
        picks = rng.integers(0, units, n_clips)

        def one_unit(row, unit):
            return sharded[row, unit] if visual else sharded[row, ..., unit * fps : (unit + 1) * fps]

        def ms_per_call(read) -> float:
            read()
            return _seconds(read) / n_clips * 1e3

        reader = ClipReader(array)
        buffer = np.empty(reader.shape, reader.dtype)
        whole = ms_per_call(lambda: [reader.read(int(r), out=buffer) for r in rows]) / units
        random_inner = ms_per_call(lambda: [one_unit(int(r), int(u)) for r, u in zip(rows, picks)])
        print(f"  {path}: whole clip, every unit used (block shuffle): {whole:.3f} ms per unit; "
              f"sharded, one inner chunk per read: {random_inner:.3f} ms per unit = {random_inner / whole:.1f}x")


def epoch_seconds(batches, epoch: int) -> tuple[float, int]:
    started, served = time.perf_counter(), 0
    for _, y in batches.epoch(epoch):  # x may be (x, draws): augment_on="device"
        served += len(y)
    return time.perf_counter() - started, served


def compare_torch(store, workers: list[int], rounds: int, **options) -> None:
    """Windows/s of torch DataLoaders over StoreDataset against the numpy iterator, same batches."""
    try:
        import torch.utils.data
    except ImportError:
        print("\ntorch is not installed: no DataLoader rows (pip install featstore[torch])")
        return
    from featstore.loader import training_batches
    from featstore.torch import StoreDataset

    batches = training_batches(store, "audio/mel", split=None, deltas=False, workers=0, **options)
    dataset = StoreDataset(store, "audio/mel", split=None, deltas=False, **options)
    ways = {"numpy iterator": lambda epoch: batches.epoch(epoch)}
    for n in workers:
        ways[f"DataLoader, num_workers={n}"] = lambda epoch, n=n: _loader_pass(torch, dataset, epoch, n)
    for n in workers:
        persistent = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=n, persistent_workers=True)
        for _ in persistent:  # starts the workers; each later pass serves the next epoch
            pass
        ways[f"DataLoader, num_workers={n}, persistent"] = lambda epoch, loader=persistent: loader
    best = dict.fromkeys(ways, np.inf)
    for r in range(rounds):
        for name, serve in ways.items():
            started, served = time.perf_counter(), 0
            for x, _ in serve(r):
                served += len(x)
            best[name] = min(best[name], time.perf_counter() - started)
    rate = {name: served / seconds for name, seconds in best.items()}
    print(f"\nPyTorch DataLoader(StoreDataset, batch_size=None) against the numpy iterator, MEL windows 128x72x2 with mixup "
          f"(best of {rounds} rounds, each epoch {served} windows):")
    print("| loader | processes reading | windows/s | per core | / numpy iterator |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, value in rate.items():
        processes = int(name.split("=")[1].split(",")[0]) if "=" in name else 1
        cores = min(processes, os.cpu_count() or 1)
        print(f"| {name} | {processes} | {value:,.0f}/s | {value / cores:,.0f}/s | {value / rate['numpy iterator']:.2f}x |")


def _loader_pass(torch, dataset, epoch: int, num_workers: int):
    dataset.set_epoch(epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)


def machine_scaling(threads: int, rounds: int = 5) -> None:
    """What ``threads`` threads gain over one on this machine for three kinds of work with no loader
    at all, each released from the GIL (compiled, numba): a loop of arithmetic on registers, a
    copy that scales a 4.8 MB float32 array into another, one per thread (the kind of work a batch is made of:
    gathering, widening and mixing copy every byte), and the same copy of 16 KiB repeated in each
    core's L1 cache (no memory traffic at all: where it gains less than 2x from 2 threads, the two
    virtual CPUs share one physical core's load and store units, hyper-threads of one core).
    Medians of each round's own ratio."""
    import numba

    @numba.njit(nogil=True)
    def arithmetic(n):  # pragma: no cover - compiled
        s = 0.0
        for i in range(n):
            s += np.sin(i * 1e-3)
        return s

    @numba.njit(nogil=True)
    def copy(a, out):  # pragma: no cover - compiled
        for i in range(a.size):
            out[i] = a[i] * np.float32(0.5)

    source = np.random.default_rng(0).random(1_200_000).astype(np.float32)
    own_buffer = threading.local()  # one output per thread, reused: memory traffic, not page faults

    def copy_into_own_buffer(_):
        if not hasattr(own_buffer, "out"):
            own_buffer.out = np.empty_like(source)
        copy(source, own_buffer.out)

    small = source[:4096]  # 16 KiB: source and output stay in each core's L1 cache
    own_small = threading.local()

    def copy_within_l1(_):
        if not hasattr(own_small, "out"):
            own_small.out = np.empty_like(small)
        for _ in range(300):
            copy(small, own_small.out)

    kinds = {"arithmetic in registers": lambda _: arithmetic(300_000), "copying a 4.8 MB array": copy_into_own_buffer,
             "copying 16 KiB within L1": copy_within_l1}
    for work in kinds.values():
        work(0)  # compiles
    ratios = {}
    for name, work in kinds.items():
        own = []
        for _ in range(rounds):
            one = _seconds(lambda: [work(i) for i in range(64)])
            with ThreadPoolExecutor(threads) as pool:
                many = _seconds(lambda: list(pool.map(work, range(64))))
            own.append(one / many)
        ratios[name] = float(np.median(own))
    print(f"\nthis machine, {threads} threads against 1, no loader (compiled loops outside the GIL, medians of {rounds} rounds): "
          + "; ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items()))


def compare_device_apply(store, options: dict, batches: int = 10) -> None:
    """ms per batch to apply mixup (and the frames' crop and flip) from the loader's draws with
    TensorFlow on this machine's CPU (``featstore.models.device_augment.device_augment`` in a
    ``tf.function``: where ``augment_on="device"`` runs without a GPU) against the host's loader
    making the same batches inline from memory, and the loader serving only the draws."""
    import tensorflow as tf

    from featstore.models.device_augment import device_augment

    from featstore import tflog

    tflog.quiet_first_float16()  # oneDNN's notice at the first float16 tensor, on CPUs without AVX-512 FP16
    apply = tf.function(device_augment)
    print(f"\nmixup and augmentation applied by TensorFlow on this CPU against the host's loader, ms per batch of {options['batch_size']} "
          f"(best of 3 passes over {batches} batches, one loader thread; TensorFlow uses its own threads):")
    for kind, path, extra in (("frames: crop + flip + mixup", "frames/rgb", dict(augment=True, mixup_alpha=0.4)),
                              ("MEL windows 128x72x2: mixup", "audio/mel", dict(mixup_alpha=0.4))):
        memory = store.array(path)[:]
        host = loader(store, path, memory, workers=0, **options, **extra)
        device = loader(store, path, memory, workers=0, augment_on="device", **options, **extra)
        drawn = list(itertools.islice(device.epoch(0), batches))
        apply(*drawn[0][0])  # traces
        ms = {
            "host loader (draws, crops, mix)": min(_seconds(lambda: list(itertools.islice(host.epoch(0), batches))) for _ in range(3)),
            "loader serving the draws": min(_seconds(lambda: list(itertools.islice(device.epoch(0), batches))) for _ in range(3)),
            "TensorFlow applying them (CPU)": min(_seconds(lambda: [apply(*x) for x, _ in drawn]) for _ in range(3)),
        }
        print(f"  {kind}: " + "; ".join(f"{name} {value / batches * 1e3:.1f} ms" for name, value in ms.items()))


def compare_store_and_memory(store, work: str, args, options: dict) -> None:
    """Chunk reads, layouts, memory over epochs and the table of store against memory batches."""
    import psutil

    process = psutil.Process()
    runs = [  # (what, array, loader options): the training settings, then the read path alone
        ("frames: crop + flip + mixup", "frames/rgb", dict(augment=True, mixup_alpha=0.4)),
        ("MEL windows 128x72x2: mixup (deltas in the model)", "audio/mel", dict(mixup_alpha=0.4)),
        ("MEL windows 128x72x6: deltas + mixup in the loader", "audio/mel", dict(mixup_alpha=0.4, deltas=True)),
        ("MEL windows 128x72x2: mixup, zstd chunks (stores made before)", OLD_MEL, dict(mixup_alpha=0.4)),
        ("frames: nothing else", "frames/rgb", dict()),
        ("MEL windows 128x72x2: nothing else", "audio/mel", dict()),
        ("frames: nothing else, uint8 out (widen=False)", "frames/rgb", dict(widen=False)),
        ("MEL windows 128x72x2: nothing else, float16 out (widen=False)", "audio/mel", dict(widen=False)),
        ("frames: crop + flip + mixup drawn for the device, uint8 out", "frames/rgb", dict(augment=True, mixup_alpha=0.4, augment_on="device")),
        ("MEL windows 128x72x2: mixup drawn for the device, float16 out", "audio/mel", dict(mixup_alpha=0.4, augment_on="device")),
    ]
    compare_clip_reads(store, min(64, store.n_clips))
    compare_layouts(store, work, min(64, store.n_clips))

    print(f"\nresident memory after each of {args.epochs} epochs from the store (2 workers):")
    for kind, path, extra in runs[:3]:
        batches = loader(store, path, workers=2, **options, **extra)
        resident = []
        for epoch in range(args.epochs):
            epoch_seconds(batches, epoch)
            resident.append(process.memory_info().rss / 2**20)
        unit_bytes = int(np.prod(store.array(path).shape[1:])) * store.array(path).dtype.itemsize // batches.units.count
        per_example = batches.source.bytes_decoded / (args.epochs * len(batches.pairs))
        print(f"  {kind}: {', '.join(f'{p:.0f}' for p in resident)} MiB; bytes decompressed per example "
              f"{per_example:,.0f} = {per_example / unit_bytes:.2f}x its stored size ({unit_bytes:,} B)")

    print(f"\nshuffled batches of {args.batch_size} (best of {args.rounds} rounds, each epoch {args.clips} clips):")
    print("| examples | threads | from the store | per core | from arrays in memory | store / memory |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    counts = [int(w) for w in args.workers.split(",")]
    scaling = []
    for kind, path, extra in runs:
        memory = store.array(path)[:]
        loaders = {(w, name): loader(store, path, memory if name == "memory" else None, workers=w, **options, **extra)
                   for w in counts for name in ("store", "memory")}
        seconds: dict = {key: [] for key in loaders}
        for r in range(args.rounds):  # thread counts alternate within a round: its runs share the machine's load
            for key, batches in loaders.items():
                took, served = epoch_seconds(batches, r)
                seconds[key].append(took)
        for w in counts:
            rate = {name: served / min(seconds[w, name]) for name in ("store", "memory")}
            cores = min(max(w, 1), os.cpu_count() or 1)  # threads beyond the cores add no cores
            print(f"| {kind} | {w or '1 (inline)'} | {rate['store']:,.0f}/s | {rate['store'] / cores:,.0f}/s | "
                  f"{rate['memory']:,.0f}/s | {rate['store'] / rate['memory']:.2f}x |")
        if len(counts) > 1:
            one, many = counts[0], counts[-1]
            scaling.append((kind, *(float(np.median(np.divide(seconds[one, name], seconds[many, name]))) for name in ("store", "memory"))))
        del memory
    if scaling:
        print(f"\n{counts[-1]} threads against {counts[0] or '1 (inline)'}, the median of each round's own ratio (target >= 1.7x):")
        print("| examples | from the store | from arrays in memory |")
        print("| --- | ---: | ---: |")
        for kind, from_store, from_memory in scaling:
            print(f"| {kind} | {from_store:.2f}x | {from_memory:.2f}x |")
        machine_scaling(max(counts[-1], 1))
    compare_device_apply(store, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--source-clips", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-clips", type=int, default=64)
    parser.add_argument("--workers", default="0,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5, help="epochs from the store for the memory check")
    parser.add_argument("--torch-workers", default="1,2", help="comma-separated DataLoader num_workers to try")
    parser.add_argument("--torch-only", action="store_true", help="only the PyTorch DataLoader rows")
    args = parser.parse_args()
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        store = build_store(work, args.clips, args.source_clips)
        print(f"store: {store.n_clips} clips of 10 s, frames 224x224 and MEL, built in {time.perf_counter() - started:.0f} s; "
              f"{os.cpu_count()} cores (shared machine, under load from other jobs)")
        options = dict(batch_size=args.batch_size, block_clips=args.block_clips, seed=0)
        if not args.torch_only:
            compare_store_and_memory(store, work, args, options)
        compare_torch(store, [int(w) for w in args.torch_workers.split(",")], args.rounds, mixup_alpha=0.4, **options)


if __name__ == "__main__":
    main()
