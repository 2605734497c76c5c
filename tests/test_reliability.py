"""Faults survived, nothing lost: worker loss, remote stores, a broken-media corpus through every
stage, fuzzed ingest, no pickle."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featstore
from featstore.demo import synth_audio, write_video
from featstore.ingest import IngestError, read_csv_manifest
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest
from tests.conftest import CLIP_S, run_cli
from tests.local_s3 import CREDENTIALS, LocalS3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _same_arrays(a: featstore.Store, b: featstore.Store, paths) -> None:
    for path in paths:
        assert a.array(path)[:].tobytes() == b.array(path)[:].tobytes(), path


@pytest.mark.slow
def test_worker_lost_mid_job(demo_root, tmp_path):
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S, shard_mb=0)  # counts chunk files
    ingest(store, demo_root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sched_file = str(tmp_path / "sched.json")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", sched_file, "--no-dashboard", "--host", "127.0.0.1", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_for(lambda: os.path.exists(sched_file) and os.path.getsize(sched_file) > 0, 60, "scheduler")
        time.sleep(0.2)
        address = json.load(open(sched_file))["address"]
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        procs += workers
        from distributed import Client

        with Client(address) as c:
            c.wait_for_workers(2, timeout=60)
        client = subprocess.Popen([sys.executable, "-m", "featstore.cli.main", "extract-audio", store.url, "--scheduler", address, "--json", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        chunks = os.path.join(store.url, "audio", "cqt", "c")
        _wait_for(lambda: os.path.isdir(chunks) and len(os.listdir(chunks)) >= 2, 120, "first chunks")
        assert client.poll() is None, "the job must still be running when the worker dies"
        workers[0].send_signal(signal.SIGKILL)
        out, err = client.communicate(timeout=300)
        assert client.returncode == 0, err
        summary = json.loads(out)
        assert summary["done"] == 20 and summary["failed"] == 0 and summary["skipped"] == 0
        assert len(featstore.open_store(store.url).failures) == 0, "a lost task is not a failure"
    finally:
        for p in procs:
            p.kill()
            p.wait()
    reference = featstore.init_store(str(tmp_path / "ref.zarr"), clip_duration_s=CLIP_S)
    ingest(reference, demo_root)
    extract_audio(reference, workers=0)
    store = featstore.open_store(store.url)
    for path in ("audio/mel", "audio/gam", "audio/cqt"):
        assert len(store.ledger(path).entries) == 20
    _same_arrays(store, reference, ["audio/mel", "audio/gam", "audio/cqt"])


@pytest.fixture
def local_s3():
    """moto's S3 server on 127.0.0.1, counting the requests it answers (``tests/local_s3.py``)."""
    with LocalS3() as s3:
        yield s3


@pytest.fixture
def s3_server(local_s3, monkeypatch):
    """The URL of a bucket on ``local_s3``, with fsspec pointed at it (env for worker processes too)."""
    import fsspec.config
    import s3fs

    for key, value in {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": local_s3.endpoint}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": local_s3.endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    return local_s3.bucket_url


@pytest.mark.slow
def test_stages_on_s3_and_memory_stores(s3_server, demo_root, tmp_path):
    local = featstore.init_store(str(tmp_path / "local.zarr"), clip_duration_s=CLIP_S)
    ingest(local, demo_root)
    extract_audio(local, workers=0, features=("mel",))
    extract_frames(local, workers=0, size=32)
    for url, workers in ((f"{s3_server}/store", 2), ("memory://featstore-memory-test", 2)):
        remote = featstore.init_store(url, clip_duration_s=CLIP_S)
        ingest(remote, demo_root)
        assert extract_audio(remote, workers=workers, features=("mel",)).done == 20
        assert extract_frames(remote, workers=workers, size=32).done == 20
        again = featstore.open_store(url)
        assert extract_audio(again, workers=0, features=("mel",)).skipped == 20
        _same_arrays(again, local, ["audio/mel", "frames/rgb", "frames/time_s"])
        assert again.clips.clip_id.tolist() == local.clips.clip_id.tolist()
        from featstore.verify import verify_store

        assert verify_store(again).ok


# ---------------------------------------------------------------------------------- broken media
def _broken_corpus(root: str) -> dict[str, tuple[str, str]]:
    """Write the corpus; return {clip_id: (audio file, video file)} relative to ``root``."""
    rng = np.random.default_rng(3)
    sr = 48000
    good_audio = synth_audio(2, rng, CLIP_S)
    frame = lambda i: np.full((64, 64, 3), (i * 7) % 255, np.uint8)  # noqa: E731

    def wav(name, data, rate=sr, subtype="PCM_16"):
        soundfile.write(os.path.join(root, name), data, rate, subtype=subtype)
        return name

    def mp4(name, n=int(CLIP_S * 30), fps=30):
        write_video(os.path.join(root, name), frame, n_frames=n, fps=fps)
        return name

    def raw(name, data: bytes):
        open(os.path.join(root, name), "wb").write(data)
        return name

    good_wav, good_mp4 = wav("good.wav", good_audio), mp4("good.mp4")
    corpus = {
        "good": (good_wav, good_mp4),
        "empty": (raw("empty.wav", b""), raw("empty.mp4", b"")),
        "truncated": (raw("trunc.wav", open(os.path.join(root, good_wav), "rb").read()[:20000]), raw("trunc.mp4", open(os.path.join(root, good_mp4), "rb").read()[:3000])),
        "random-bytes": (raw("random.wav", rng.bytes(8000)), raw("random.mp4", rng.bytes(8000))),
        "wrong-container": (good_mp4, good_wav),  # an mp4 without audio as audio, a wav as video
    }
    nan = good_audio.copy()
    nan[1000, 0] = np.nan
    corpus["nan-samples"] = (wav("nan.wav", nan, subtype="FLOAT"), good_mp4)
    zero = os.path.join(root, "zero-frames.mp4")
    with av.open(zero, "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    corpus["zero-length-video"] = (good_wav, "zero-frames.mp4")
    two_hours = os.path.join(root, "two-hours.wav")
    with soundfile.SoundFile(two_hours, "w", 8000, 1, "PCM_U8") as f:
        block = (0.1 * rng.standard_normal(8000 * 600)).astype(np.float32)
        for _ in range(12):  # 12 x 10 min
            f.write(block)
    write_video(os.path.join(root, "two-hours.mp4"), frame, n_frames=3600, fps=Fraction(1, 2))
    corpus["two-hours"] = ("two-hours.wav", "two-hours.mp4")
    spaced = "clip é ü 1"
    corpus[spaced] = (wav(f"{spaced}.wav", good_audio), mp4(f"{spaced}.mp4"))
    return corpus


@pytest.mark.slow
def test_broken_media_corpus_through_every_stage(tmp_path):
    root = str(tmp_path / "corpus")
    os.makedirs(root)
    corpus = _broken_corpus(root)
    with open(os.path.join(root, "m.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "video", "label", "split", "clip_id"])
        for clip_id, (a, v) in corpus.items():
            w.writerow([a, v, "park", "train", clip_id])
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    assert ingest(store, os.path.join(root, "m.csv"), fmt="csv").added == len(corpus)
    audio = run_cli("extract-audio", store.url, "--workers", "0", "--features", "mel", "--json")
    frames = run_cli("extract-frames", store.url, "--workers", "0", "--size", "32", "--json")
    assert audio.returncode == 3 and frames.returncode == 3, "partial success"
    audio_failed = {f["clip_id"] for f in json.loads(audio.stdout)["failures"]}
    frames_failed = {f["clip_id"] for f in json.loads(frames.stdout)["failures"]}
    assert audio_failed == {"empty", "random-bytes", "wrong-container", "nan-samples"}
    assert frames_failed == {"empty", "truncated", "random-bytes", "wrong-container", "zero-length-video"}
    for clip_id in ("empty", "nan-samples", "wrong-container"):
        assert clip_id in audio.stderr, "each failure is named on stderr"
    store = featstore.open_store(store.url)
    notes = store.ledger("audio/mel").info_table()
    assert notes.loc["truncated", "padded_s"] > 0, "a truncated wav is padded, with a note"
    assert notes.loc["two-hours", "cut_s"] > 0, "a 2-hour file is cut to the clip"
    assert notes.loc["two-hours", "source_sr"] == 8000
    for clip_id in ("good", "clip é ü 1", "two-hours", "truncated"):
        assert np.isfinite(store.audio("mel", clip_id)).all()
    for clip_id in ("good", "clip é ü 1", "two-hours", "nan-samples"):
        frames_, times = store.frames(clip_id)
        assert frames_.shape == (6, 32, 32, 3)
    _, times = store.frames("two-hours")
    assert times.tolist() == [0.0, 0.0, 0.0, 2.0, 2.0, 2.0], "nearest of 1 frame per 2 s; the 1.0 s tie goes to the earlier"
    failures = store.failures
    assert set(failures[failures.stage == "extract-frames"].clip_id) == frames_failed
    messages = dict(zip(failures[failures.stage == "extract-audio"].clip_id, failures[failures.stage == "extract-audio"].message))
    assert "NaN or Inf" in messages["nan-samples"] and "no audio stream" in messages["wrong-container"]


# ---------------------------------------------------------------------------------- fuzzed ingest
cell = st.lists(st.sampled_from(list("ab,.\"'\t /\\-_é") + ["..", "\n", "../"]), max_size=6).map("".join)
labels = st.sampled_from(list(featstore.CLASSES) + ["", "beach", "Bus"])
splits = st.sampled_from(["train", "evaluate", "test", "", "dev"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(cell, cell, labels, splits, cell), min_size=1, max_size=6))
def test_fuzzed_csv_ingest_errors_cleanly(tmp_path, rows):
    manifest = tmp_path / "fuzz.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "video", "label", "split", "clip_id"])
        w.writerows(rows)
    try:
        report = read_csv_manifest(str(manifest), classes=list(featstore.CLASSES))
    except IngestError as exc:
        assert re.search(r"fuzz\.csv: line \d+: ", str(exc)), str(exc)
        return
    assert len(report.clips) == len(rows)
    assert report.clips.clip_id.is_unique
    assert set(report.clips.label) <= set(featstore.CLASSES) | {""}
    for col in ("audio_path", "video_path"):
        for p in report.clips[col]:
            assert ".." not in os.path.normpath(p).split(os.sep) and not os.path.isabs(p)
    assert len(report.missing) == sum(1 for a, v, *_ in report.clips[["audio_path", "video_path"]].itertuples(index=False) if a or v)


def test_no_pickle_in_the_code():
    pattern = re.compile(r"import pickle|allow_pickle\s*=\s*True|read_pickle|to_pickle|dtype=object|cloudpickle\.load|import joblib")
    for package in ("featstore", "pipelines", "cli"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                    assert not pattern.search(text), f"{package}/{name} uses pickle or object arrays"


def test_sigkill_mid_shard_then_resume_is_bitwise_equal(demo_root, tmp_path):
    """A sharded store: the run is killed (SIGKILL) with some shards written and others not; the
    resumed run recomputes only the clips not done, rewriting their shards once: bitwise equal to a
    clean run."""
    killed = featstore.init_store(str(tmp_path / "killed.zarr"), clip_duration_s=CLIP_S, shard_mb=0.25)
    ingest(killed, demo_root)
    args = [sys.executable, "-m", "featstore.cli.main", "extract-audio", killed.url, "--features", "mel", "--workers", "0", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FEATSTORE_FLUSH_S": "0.1"})
    ledger = os.path.join(killed.url, "_featstore", "ledger")

    def some_done() -> bool:
        try:
            return any(len(json.load(open(os.path.join(ledger, n))).get("clips", {})) >= 3 for n in os.listdir(ledger))
        except (OSError, ValueError):
            return False

    _wait_for(some_done, 180, "some clips done")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = featstore.open_store(killed.url)
    n_done = len(partial.ledger("audio/mel").entries)
    assert 0 < n_done < 20, "killed part-way"
    from featstore.verify import verify_store

    assert verify_store(partial, ["audio/mel"]).ok
    rerun = extract_audio(partial, workers=0, features=("mel",), progress=False)
    assert rerun.skipped == n_done and rerun.done == 20 - n_done
    reference = featstore.init_store(str(tmp_path / "ref.zarr"), clip_duration_s=CLIP_S, shard_mb=0)
    ingest(reference, demo_root)
    extract_audio(reference, workers=0, features=("mel",), progress=False)
    _same_arrays(featstore.open_store(killed.url), reference, ["audio/mel"])


@pytest.mark.slow  # a full embed or a server: over the fast tier's budget
def test_sharded_store_on_s3_reads_as_local(s3_server, demo_root, tmp_path):
    """A sharded store on the S3 server: ClipReader's ranged, concurrent reads and the loader give
    the local store's values."""
    from featstore.chunks import ClipReader
    from featstore.loader import training_batches

    local = featstore.init_store(str(tmp_path / "local.zarr"), clip_duration_s=CLIP_S, shard_mb=0.25)
    remote = featstore.init_store(f"{s3_server}/sharded", clip_duration_s=CLIP_S, shard_mb=0.25)
    for store in (local, remote):
        ingest(store, demo_root)
        assert extract_audio(store, workers=0, features=("mel",), progress=False).done == 20
    reader = ClipReader(featstore.open_store(remote.url).array("audio/mel"))
    assert reader.direct and not reader.local and reader.clips_per_shard
    expected = local.array("audio/mel")[:]
    assert np.stack(reader.read_clips(list(range(20)))).tobytes() == expected.tobytes()
    assert reader.read(13).tobytes() == expected[13].tobytes()
    options = {"split": None, "batch_size": 8, "block_clips": 4, "seed": 1}
    for (xa, _), (xb, _) in zip(training_batches(local, "audio/mel", **options), training_batches(remote, "audio/mel", **options)):
        assert xa.tobytes() == xb.tobytes()


@pytest.mark.slow  # a server and two extractions: over the fast tier's budget
def test_a_loader_epoch_on_s3_costs_requests_per_shard_not_per_clip(local_s3, demo_root, tmp_path):
    """The requests the S3 server answers for one loader epoch: sharded, at most one per shard and
    block plus each shard's index (a read per clip would be 20 + 3); one object per clip, one GET
    per clip; never a HEAD. The batches equal the local store's in both layouts."""
    import s3fs

    from featstore.loader import training_batches

    fs = s3fs.S3FileSystem(**local_s3.options(), skip_instance_cache=True)
    options = {"split": None, "batch_size": 8, "block_clips": 8, "seed": 3, "deltas": False}
    for shard_mb in (0, 1):  # 1 MiB: shards of 8 clips of 3 s MEL (110 KiB each), 3 shards for 20 clips
        local = featstore.init_store(str(tmp_path / f"local-{shard_mb}.zarr"), clip_duration_s=CLIP_S, shard_mb=shard_mb)
        ingest(local, demo_root)
        assert extract_audio(local, workers=0, features=("mel",), progress=False).done == 20
        fs.put(local.url, f"{local_s3.bucket}/store-{shard_mb}", recursive=True)
        remote = featstore.open_store(f"{local_s3.bucket_url}/store-{shard_mb}", storage_options=local_s3.options())
        batches = training_batches(remote, "audio/mel", **options)
        local_s3.reset()
        served = [(x.tobytes(), y.tobytes()) for x, y in batches.epoch(0)]
        requests = local_s3.requests()
        assert served == [(x.tobytes(), y.tobytes()) for x, y in training_batches(local, "audio/mel", **options).epoch(0)]
        assert set(requests) == {"RANGE"}, requests
        blocks = len(batches.plan(0))
        if shard_mb:
            shards = -(-20 // local.array("audio/mel").shards[0])
            assert shards == 3 and blocks == 3
            assert requests["RANGE"] <= shards + blocks * shards < 20, requests
            # runs of 8 neighbours, a shard's clips: one request per shard a block touches, besides
            # the shards' indices (read again: a new loader has a new reader)
            runs = training_batches(remote, "audio/mel", **options, run_clips=8)
            local_s3.reset()
            assert sum(len(x) for x, _ in runs.epoch(0)) == 60
            touched = sum(len({int(r) // 8 for r in block.rows}) for block in runs.plan(0))
            assert local_s3.requests() == {"RANGE": shards + touched} and touched < requests["RANGE"] - shards, local_s3.requests()
        else:
            assert requests["RANGE"] == 20, requests
