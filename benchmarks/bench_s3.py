"""Benchmark: featstore on an object store. The requests (HEAD / GET / ranged GET / LIST / PUT) of a
cold fusion read and of one training-loader epoch, one object per clip against sharded, and the
loader's windows/s from the S3 server against the same store on the local disk, in the same run.

The S3 server is moto's on 127.0.0.1 (``tests/local_s3.py``), counting every request it answers;
the same bytes are on both sides (the local store's folder is uploaded). moto answers a ranged GET
by reading the whole object, so a sharded store's rate from it measures moto; with ``--s3rver
PATH`` (s3rver, a Node.js S3 server that reads a range from its file, as S3 does not pay for the
object's size: ``npm install --prefix /tmp/s3rver s3rver@3.7.1``, then ``--s3rver
/tmp/s3rver/node_modules/.bin/s3rver``) the loader's rates are measured from that server too.
Then the same epochs go through a delaying proxy on loopback (``--delay-ms`` added to every
request, as a far object store adds its latency) in front of the rate server (s3rver when given,
else moto), against the local disk again.

- Loader: ``featstore.loader.training_batches`` over ``audio/mel`` of ``--clips`` 10 s clips (1 s
  windows, the static channels, batches of 64, blocks of 64 clips, ``--workers`` threads), with
  the clip shuffle on both layouts, and with ``run_clips=16`` (runs of 16 neighbouring clips, one
  request each; blocks of 64 and 128 clips) on the sharded one. Local and S3 epochs alternate for ``--rounds`` rounds; the best of each is kept (the machine is shared).
- The server's own cost per request (moto answers a ranged GET by reading the whole object):
  concurrent ranged 1 KiB GETs from a 1 KiB object and from a 64 MiB one.
- Fusion: ``featstore.pipelines.fuse.load_fusion_data`` of two models' fc1024 embeddings (10
  segments x 1024 float32 a clip) on a store opened cold (no packed cache yet: every embedding is
  read from the arrays, then the packed copy is written), then warm (the packed copy).

    python benchmarks/bench_s3.py --clips 384 --rounds 2 --delay-ms 20 [--s3rver PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/local_s3.py

import featstore  # noqa: E402
from featstore.loader import training_batches  # noqa: E402
from featstore.shards import write_clips  # noqa: E402
from tests.local_s3 import DelayingProxy, LocalS3, free_port  # noqa: E402

LAYOUTS = {"one object per clip": 0.0, "sharded (default)": featstore.constants.SHARD_MB}
#: The loader's rows: (layout, run_clips, block_clips), the clip shuffle on both layouts and runs
#: of 16 clips (one request per run) on the sharded one
LOADERS = {"one object per clip": ("one object per clip", 1, 64), "sharded (default)": ("sharded (default)", 1, 64),
           "sharded, run_clips=16": ("sharded (default)", 16, 64),
           "sharded, run_clips=16, block_clips=128": ("sharded (default)", 16, 128)}
MODELS = ("aud-a", "aud-b")


class FileS3:
    """s3rver (``binary``) on 127.0.0.1 with one bucket, objects in files under ``folder``; ``delay_s``
    > 0 adds the delaying proxy in front. The same interface as :class:`tests.local_s3.LocalS3`
    without the request counts. ``s3rver_suffix_ranges.js`` is preloaded: s3rver 3.7.1 misreads a
    suffix range (the last N bytes), which is how a shard's index is read."""

    def __init__(self, binary: str, folder: str, delay_s: float = 0.0, bucket: str = "featstore"):
        self.binary, self.folder, self.bucket, self.bucket_url = binary, folder, bucket, f"s3://{bucket}"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proxy = DelayingProxy(("127.0.0.1", self.port), delay_s) if delay_s > 0 else None

    def options(self, delayed: bool = False) -> dict:
        endpoint = self.proxy.endpoint if delayed else self.endpoint
        return {"endpoint_url": endpoint, "key": "S3RVER", "secret": "S3RVER"}  # s3rver's fixed credentials

    def __enter__(self) -> FileS3:
        script = os.path.realpath(self.binary)  # node_modules/s3rver/bin/s3rver.js
        preload = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s3rver_suffix_ranges.js")
        env = {**os.environ, "S3RVER_PACKAGE": os.path.dirname(os.path.dirname(script))}
        self._process = subprocess.Popen(["node", "-r", preload, script, "-d", self.folder, "-a", "127.0.0.1", "-p", str(self.port),
                                          "--silent", "--configure-bucket", self.bucket], stdout=subprocess.DEVNULL, env=env)
        for _ in range(200):
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers: listening
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"s3rver ({self.binary}) did not answer on {self.endpoint} within 10 s")
        if self.proxy:
            self.proxy.start()
        return self

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (user + system, from /proc)."""
        with open(f"/proc/{self._process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        if self.proxy:
            self.proxy.stop()
        self._process.terminate()
        self._process.wait()


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


def epoch_rate(store: featstore.Store, workers: int, epoch: int, run_clips: int = 1, block_clips: int = 64) -> float:
    """Windows per second of one loader epoch."""
    batches = training_batches(store, "audio/mel", deltas=False, workers=workers, batch_size=64, block_clips=block_clips, seed=0,
                               run_clips=run_clips)
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
    parser.add_argument("--s3rver", help="path of an s3rver binary: the loader's rates also from it, and the delayed ones through it")
    args = parser.parse_args()
    import contextlib

    import s3fs

    from featstore.pipelines.fuse import load_fusion_data

    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory())
        s3 = stack.enter_context(LocalS3(delay_s=0.0 if args.s3rver else args.delay_ms / 1e3))
        servers = {"moto": s3}
        if args.s3rver:
            os.makedirs(os.path.join(work, "s3rver"))
            servers["s3rver"] = stack.enter_context(FileS3(args.s3rver, os.path.join(work, "s3rver"), delay_s=args.delay_ms / 1e3))
        rate_name = list(servers)[-1]  # the server the delayed epochs go through: s3rver when given
        mel, prov, clips = source_mel(work)
        fss = {name: s3fs.S3FileSystem(**server.options(), skip_instance_cache=True) for name, server in servers.items()}
        fs = fss["moto"]
        print(f"{args.clips} clips of 10 s, MEL (2, 128, 720) float16; {os.cpu_count()} cores (shared machine); "
              f"S3 servers on 127.0.0.1: {', '.join(servers)}; then +{args.delay_ms:g} ms a request through the proxy in front of {rate_name}")
        for name, server in servers.items():
            costs = server_costs(server)
            print(f"{name}'s own cost, ms per ranged 1 KiB GET (64 at once): "
                  + ", ".join(f"from a {size} {ms:.1f} ms" for size, ms in costs.items()) + f" ({costs['64 MiB object'] / costs['1 KiB object']:.1f}x)")
        print("\nrequests (counted by moto):")
        print("| loader | objects of audio/mel | MB of audio/mel | open + training_batches | one epoch | epoch requests per clip |")
        print("| --- | ---: | ---: | --- | --- | ---: |")
        rates = {}
        for name, (layout, run_clips, block_clips) in LOADERS.items():
            shard_mb = LAYOUTS[layout]
            local_url = os.path.join(work, f"mel-{shard_mb:g}.zarr")
            remote_urls = {server_name: f"{server.bucket_url}/mel-{shard_mb:g}.zarr" for server_name, server in servers.items()}
            if not os.path.exists(local_url):
                mel_store(local_url, args.clips, shard_mb, mel, prov, clips)
                for server_name, url in remote_urls.items():
                    fss[server_name].put(local_url, url.removeprefix("s3://"), recursive=True)
            local = featstore.open_store(local_url)
            remote_url = remote_urls["moto"]
            objects = fs.find(f"{remote_url}/audio/mel/c", detail=True)
            megabytes = sum(info["size"] for info in objects.values()) / 1e6
            opened = counted(s3, lambda: training_batches(featstore.open_store(remote_url, storage_options=s3.options()), "audio/mel"))
            remote = featstore.open_store(remote_url, storage_options=s3.options())
            epoch = counted(s3, lambda: epoch_rate(remote, args.workers, 0, run_clips, block_clips))
            print(f"| {name} | {len(objects)} | {megabytes:.0f} | {opened} | {epoch} | {sum(epoch.values()) / args.clips:.3f} |")
            remotes = {server_name: featstore.open_store(url, storage_options=servers[server_name].options())
                       for server_name, url in remote_urls.items()}
            best = {"local": 0.0, **{server_name: 0.0 for server_name in servers}}
            server_cpu = []  # s3rver's CPU seconds per second of its epochs
            for r in range(args.rounds):
                best["local"] = max(best["local"], epoch_rate(local, args.workers, r, run_clips, block_clips))
                for server_name, store in remotes.items():
                    cpu_before, started = servers["s3rver"].cpu_s() if args.s3rver else 0.0, time.perf_counter()
                    best[server_name] = max(best[server_name], epoch_rate(store, args.workers, r, run_clips, block_clips))
                    if server_name == "s3rver":
                        server_cpu.append((servers["s3rver"].cpu_s() - cpu_before) / (time.perf_counter() - started))
            best["s3rver cores"] = float(np.mean(server_cpu)) if server_cpu else float("nan")
            for connections in (10, 64):  # s3fs's default pool, and a block's requests all in flight
                options = {**servers[rate_name].options(delayed=True), "config_kwargs": {"max_pool_connections": connections}}
                delayed = featstore.open_store(remote_urls[rate_name], storage_options=options)
                best[f"delayed {connections}"] = epoch_rate(delayed, args.workers, 0, run_clips, block_clips)
            best["local after"] = epoch_rate(local, args.workers, 0, run_clips, block_clips)
            rates[name] = best

        print(f"\nloader, windows/s (best of {args.rounds} alternating rounds; delayed: one epoch each through {rate_name}, "
              "against a local epoch right after them):")
        print(f"| loader | local disk | {' | '.join(f'{n} | {n} / local' for n in servers)} | +{args.delay_ms:g} ms, 10 connections "
              "(s3fs default) | 64 connections | delayed / local (10, 64) |")
        print("| --- | ---: |" + " ---: | ---: |" * len(servers) + " ---: | ---: | ---: |")
        for name, best in rates.items():
            cells = [f"{best[n]:,.0f} | {best[n] / best['local']:.2f}x" for n in servers]
            print(f"| {name} | {best['local']:,.0f} | {' | '.join(cells)} | {best['delayed 10']:,.0f} | {best['delayed 64']:,.0f} | "
                  f"{best['delayed 10'] / best['local after']:.2f}x, {best['delayed 64'] / best['local after']:.2f}x |")

        if args.s3rver:
            print("cores s3rver itself kept busy during its epochs (of this machine's "
                  f"{os.cpu_count()}, which the loader shares with it): "
                  + ", ".join(f"{name} {best['s3rver cores']:.2f}" for name, best in rates.items()))
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
