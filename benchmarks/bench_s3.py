"""Benchmark: featstore on an object store. The requests (HEAD / GET / ranged GET / LIST / PUT) of a
cold fusion read and of one training-loader epoch, one object per clip against sharded, and the
loader's windows/s from the S3 server against the same store on the local disk, in the same run.

The S3 server is moto's on 127.0.0.1 (``tests/local_s3.py``), counting every request it answers;
the same bytes are on both sides (the local store's folder is uploaded). Then the same epochs go
through a delaying proxy on loopback (``--delay-ms`` added to every request, as a far object store
adds its latency), against the local disk again.

- Loader: ``featstore.loader.training_batches`` over ``audio/mel`` of ``--clips`` 10 s clips (1 s
  windows, the static channels, batches of 64, blocks of 64 clips, ``--workers`` threads). Local
  and S3 epochs alternate for ``--rounds`` rounds; the best of each is kept (the machine is shared).
- The server's own cost per request (moto answers a ranged GET by reading the whole object):
  concurrent ranged 1 KiB GETs from a 1 KiB object and from a 64 MiB one.
- Fusion: ``featstore.pipelines.fuse.load_fusion_data`` of two models' fc1024 embeddings (10
  segments x 1024 float32 a clip) on a store opened cold (no packed cache yet: every embedding is
  read from the arrays, then the packed copy is written), then warm (the packed copy).

    python benchmarks/bench_s3.py --clips 384 --rounds 2 --delay-ms 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/local_s3.py

import featstore  # noqa: E402
from featstore.loader import training_batches  # noqa: E402
from featstore.shards import write_clips  # noqa: E402
from tests.local_s3 import LocalS3  # noqa: E402

LAYOUTS = {"one object per clip": 0.0, "sharded (default)": featstore.constants.SHARD_MB}
MODELS = ("aud-a", "aud-b")


def source_mel(work: str):
    """(per-clip MEL values of the generated demo's 10 clips of 10 s, their provenance)."""
    from featstore.demo import make_demo_dataset
    from featstore.pipelines.extract_audio import extract_audio
    from featstore.pipelines.ingest import ingest

    source = featstore.init_store(os.path.join(work, "source.zarr"))
    ingest(source, make_demo_dataset(os.path.join(work, "data"), clips_per_class=1, seed=0))
    extract_audio(source, features=("mel",), workers=0, progress=False)
    return source.array("audio/mel")[:], source.provenance("audio/mel"), source.clips


def _with_clips(path: str, n: int, shard_mb: float, clips: pd.DataFrame) -> featstore.Store:
    store = featstore.init_store(path, shard_mb=shard_mb)
    copies = -(-n // len(clips))
    table = pd.concat([clips.assign(clip_id=clips.clip_id + f"#{k}") for k in range(copies)]).iloc[:n]
    store.add_clips(table.assign(split="train"))
    return store


def _write(store: featstore.Store, path: str, values, **create) -> None:
    """Write ``values[k]`` to row k of a new array ``path`` and mark every clip done."""
    write_clips(store.create_array(path, **create), range(len(values)), values)
    ledger = store.ledger(path)
    for clip_id in store.clips.clip_id:
        ledger.mark_done(clip_id, "generated", 0)
    ledger.flush(store.side)


def mel_store(path: str, n: int, shard_mb: float, mel, prov, clips) -> featstore.Store:
    store = _with_clips(path, n, shard_mb, clips)
    _write(store, "audio/mel", [mel[r % len(mel)] for r in range(n)], per_clip_shape=tuple(prov["per_clip_shape"]),
           dtype=prov["dtype"], dims=tuple(prov["dims"][1:]), stage=prov["stage"], params=prov["params"])
    return store


def embedding_store(path: str, n: int, shard_mb: float, clips) -> featstore.Store:
    store = _with_clips(path, n, shard_mb, clips)
    rng = np.random.default_rng(0)
    for model in MODELS:
        _write(store, f"embeddings/{model}/fc1024", rng.standard_normal((n, 10, 1024), np.float32), per_clip_shape=(10, 1024),
               dtype="float32", dims=("segment", "dim"), stage="embed",
               params={"input": "audio/mel", "frames_per_segment": 1, "layer": "fc1024"})
    return store


def epoch_rate(store: featstore.Store, workers: int, epoch: int) -> float:
    """Windows per second of one loader epoch."""
    batches = training_batches(store, "audio/mel", deltas=False, workers=workers, batch_size=64, block_clips=64, seed=0)
    started, served = time.perf_counter(), 0
    for x, _ in batches.epoch(epoch):
        served += len(x)
    return served / (time.perf_counter() - started)


def server_costs(s3: LocalS3, n: int = 64) -> dict[str, float]:
    """ms per request of ``n`` concurrent ranged 1 KiB GETs (what the loader sends), from a 1 KiB
    object and from a 64 MiB one (a shard's size): what the S3 server itself costs per request."""
    import asyncio

    import s3fs
    from fsspec.asyn import sync

    fs = s3fs.S3FileSystem(**s3.options(), skip_instance_cache=True)
    costs = {}
    for name, size in (("1 KiB object", 2**10), ("64 MiB object", 2**26)):
        key = f"{s3.bucket}/probe-{size}"
        fs.pipe_file(key, np.random.default_rng(0).bytes(size))

        async def gets(key=key):
            return await asyncio.gather(*(fs._cat_file(key, start=0, end=2**10) for _ in range(n)))

        started = time.perf_counter()
        sync(fs.loop, gets)
        costs[name] = (time.perf_counter() - started) / n * 1e3
    return costs


def counted(s3: LocalS3, call) -> dict:
    s3.reset()
    call()
    return dict(sorted(s3.requests().items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    import s3fs

    from featstore.pipelines.fuse import load_fusion_data

    with tempfile.TemporaryDirectory() as work, LocalS3(delay_s=args.delay_ms / 1e3) as s3:
        mel, prov, clips = source_mel(work)
        fs = s3fs.S3FileSystem(**s3.options(), skip_instance_cache=True)
        print(f"{args.clips} clips of 10 s, MEL (2, 128, 720) float16; {os.cpu_count()} cores (shared machine); "
              f"S3: moto on 127.0.0.1, then +{args.delay_ms:g} ms a request through the proxy")
        costs = server_costs(s3)
        print("the S3 server's own cost, ms per ranged 1 KiB GET (64 at once): "
              + ", ".join(f"from a {name} {ms:.1f} ms" for name, ms in costs.items()) + f" ({costs['64 MiB object'] / costs['1 KiB object']:.1f}x)\n")
        print("| layout | objects of audio/mel | open + training_batches | one epoch | epoch requests per clip |")
        print("| --- | ---: | --- | --- | ---: |")
        rates = {}
        for name, shard_mb in LAYOUTS.items():
            local_url = os.path.join(work, f"mel-{shard_mb:g}.zarr")
            local = mel_store(local_url, args.clips, shard_mb, mel, prov, clips)
            remote_url = f"{s3.bucket_url}/mel-{shard_mb:g}.zarr"
            fs.put(local_url, remote_url.removeprefix("s3://"), recursive=True)
            objects = len(fs.find(f"{remote_url}/audio/mel/c"))
            opened = counted(s3, lambda: training_batches(featstore.open_store(remote_url, storage_options=s3.options()), "audio/mel"))
            remote = featstore.open_store(remote_url, storage_options=s3.options())
            epoch = counted(s3, lambda: epoch_rate(remote, args.workers, 0))
            print(f"| {name} | {objects} | {opened} | {epoch} | {sum(epoch.values()) / args.clips:.3f} |")
            best = {"local": 0.0, "S3": 0.0}
            for r in range(args.rounds):
                best["local"] = max(best["local"], epoch_rate(local, args.workers, r))
                best["S3"] = max(best["S3"], epoch_rate(remote, args.workers, r))
            for connections in (10, 64):  # s3fs's default pool, and a block's requests all in flight
                options = {**s3.options(delayed=True), "config_kwargs": {"max_pool_connections": connections}}
                best[f"delayed {connections}"] = epoch_rate(featstore.open_store(remote_url, storage_options=options), args.workers, 0)
            best["local after"] = epoch_rate(local, args.workers, 0)
            rates[name] = best

        print(f"\nloader, windows/s (best of {args.rounds} alternating rounds; delayed: one epoch each, against a local epoch right after them):")
        print(f"| layout | local disk | S3 server | S3 / local | S3 + {args.delay_ms:g} ms, 10 connections (s3fs default) | 64 connections | delayed / local (10, 64) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, best in rates.items():
            print(f"| {name} | {best['local']:,.0f} | {best['S3']:,.0f} | {best['S3'] / best['local']:.2f}x | {best['delayed 10']:,.0f} | "
                  f"{best['delayed 64']:,.0f} | {best['delayed 10'] / best['local after']:.2f}x, {best['delayed 64'] / best['local after']:.2f}x |")

        print("\ncold fusion read (load_fusion_data of 2 models' fc1024), requests:")
        print("| layout | objects of the arrays | cold (arrays read, packed copy written) | warm (packed copy) |")
        print("| --- | ---: | --- | --- |")
        for name, shard_mb in LAYOUTS.items():
            local_url = os.path.join(work, f"emb-{shard_mb:g}.zarr")
            embedding_store(local_url, args.clips, shard_mb, clips)
            remote_url = f"{s3.bucket_url}/emb-{shard_mb:g}.zarr"
            fs.put(local_url, remote_url.removeprefix("s3://"), recursive=True)
            objects = sum(len(fs.find(f"{remote_url}/embeddings/{m}/fc1024/c")) for m in MODELS)
            cold = counted(s3, lambda: load_fusion_data(featstore.open_store(remote_url, storage_options=s3.options()), MODELS, "fc1024"))
            warm = counted(s3, lambda: load_fusion_data(featstore.open_store(remote_url, storage_options=s3.options()), MODELS, "fc1024"))
            print(f"| {name} | {objects} | {cold} | {warm} |")


if __name__ == "__main__":
    main()
