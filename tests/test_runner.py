"""The stage runner: resume after SIGKILL, skip-if-done, refusal on changed parameters, failures and
exit codes, a real LocalCluster, a separate `dask scheduler` / `dask worker` pair, the writer lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import featstore
from featstore.constants import SHARD_MB
from featstore.lock import LockHeld, WriterLock
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest
from featstore.pipelines.stage import ClipResult, OutputSpec, Stage
from featstore.pipelines.runner import run_stage
from tests.conftest import CLIP_S, run_cli


def _arrays_equal(a: featstore.Store, b: featstore.Store, paths) -> None:
    for path in paths:
        x, y = a.array(path)[:], b.array(path)[:]
        assert x.shape == y.shape
        assert x.tobytes() == y.tobytes(), f"{path} differs"


def _store_copy(demo_root: str, path: str, shard_mb: float = 0.0) -> featstore.Store:
    store = featstore.init_store(path, clip_duration_s=CLIP_S, shard_mb=shard_mb)
    ingest(store, demo_root)
    return store


def test_skip_if_done_and_json_summary(demo_store):
    first = json.loads(run_cli("extract-audio", demo_store.url, "--features", "mel", "--workers", "0", "--json", check=True).stdout)
    assert first["done"] == 20 and first["skipped"] == 0 and first["failed"] == 0
    assert first["stage"] == "extract-audio" and first["array"] == ["audio/mel"] and first["failures"] == []
    second = json.loads(run_cli("extract-audio", demo_store.url, "--features", "mel", "--workers", "0", "--json", check=True).stdout)
    assert second["done"] == 0 and second["skipped"] == 20
    # a subset: only the evaluate split, all already done
    third = json.loads(run_cli("extract-audio", demo_store.url, "--features", "mel", "--workers", "0", "--clips", "evaluate", "--json", check=True).stdout)
    assert third["skipped"] == 10


def _zeros(task, params, names):
    """A stage's per-clip work whose values all equal the fill value (uint8 0), like a black video."""
    return ClipResult({"value": np.zeros((4, 3), dtype=np.uint8)}, {})


@pytest.mark.parametrize("workers", [0, 1])
def test_fill_valued_clip_still_writes_its_chunk(flat_demo_store, workers):
    demo_store = flat_demo_store  # one object per clip: each clip's own chunk must exist
    # zarr drops a chunk equal to the fill value unless write_empty_chunks is set on the handle
    # that writes; the runner's own handles must carry it, in-process and on a worker process
    stage = Stage("zeros", {}, (OutputSpec("value", "test/zeros", (4, 3), "uint8", ("row", "col")),), _zeros, lambda row: "v1")
    report = run_stage(demo_store, stage, workers=workers, progress=False)
    assert report.done == demo_store.n_clips
    assert demo_store.array("test/zeros").nchunks_initialized == demo_store.n_clips


def _environment(task, params, names):
    """A stage's per-clip work that reports the process it ran in and its malloc settings."""
    notes = {"pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS"), "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}
    return ClipResult({"value": np.ones((1,), dtype=np.uint8)}, notes)


def test_local_workers_keep_glibcs_adaptive_malloc(demo_store):
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_, which fixes glibc's mmap threshold: every large
    # array then page-faults anew (1.7x the CPU of a MEL clip); the runner's workers go without it
    stage = Stage("environment", {}, (OutputSpec("value", "test/environment", (1,), "uint8", ("one",)),), _environment, lambda row: "v1")
    assert run_stage(demo_store, stage, workers=1, progress=False).done == demo_store.n_clips
    notes = [entry["info"] for entry in demo_store.ledger("test/environment").entries.values()]
    assert {n["pid"] for n in notes} != {os.getpid()} and len({n["pid"] for n in notes}) == 1, "ran on one worker process"
    assert {n["omp"] for n in notes} == {"1"} and {n["malloc_trim"] for n in notes} == {None}


def test_changed_parameters_are_refused(demo_store):
    extract_audio(demo_store, workers=0, features=("mel",))
    before = demo_store.array("audio/mel")[:]
    proc = run_cli("extract-audio", demo_store.url, "--features", "mel", "--hop-ms", "10", "--workers", "0")
    assert proc.returncode == 1
    assert "audio/mel" in proc.stderr and "audio" in proc.stderr and "hop_ms" in proc.stderr
    assert "--overwrite" in proc.stderr and "--name" in proc.stderr
    np.testing.assert_array_equal(demo_store.array("audio/mel")[:], before)
    # --name NEW writes a new array; the old one is untouched
    run_cli("extract-audio", demo_store.url, "--features", "mel", "--hop-ms", "10", "--workers", "0", "--name", "audio_hop10", check=True)
    assert demo_store.array("audio_hop10/mel").shape == (20, 2, 128, 3 * (1 + 32000 // 320))
    np.testing.assert_array_equal(demo_store.array("audio/mel")[:], before)
    # --overwrite recomputes with the new parameters
    out = json.loads(run_cli("extract-audio", demo_store.url, "--features", "mel", "--hop-ms", "10", "--workers", "0", "--overwrite", "--json", check=True).stdout)
    assert out["done"] == 20
    np.testing.assert_array_equal(demo_store.array("audio/mel")[:], demo_store.array("audio_hop10/mel")[:])


def test_failure_gives_exit_code_3_and_is_recorded(demo_store):
    bad = demo_store.source_path(demo_store.clips.audio_path[4])
    original = open(bad, "rb").read()
    try:
        open(bad, "wb").write(b"RIFF garbage, not audio")
        proc = run_cli("extract-audio", demo_store.url, "--features", "mel", "--workers", "0", "--json")
        assert proc.returncode == 3
        summary = json.loads(proc.stdout)
        clip_id = demo_store.clips.clip_id[4]
        assert summary["failed"] == 1 and summary["done"] == 19
        assert summary["failures"][0]["clip_id"] == clip_id
        assert clip_id in proc.stderr, "the error names the clip"
        assert featstore.open_store(demo_store.url).failures.clip_id.tolist() == [clip_id]
    finally:
        open(bad, "wb").write(original)
    proc = run_cli("extract-audio", demo_store.url, "--features", "mel", "--workers", "0", "--json", check=True)
    assert json.loads(proc.stdout)["done"] == 1
    assert len(featstore.open_store(demo_store.url).failures) == 0


@pytest.mark.parametrize("shard_mb", [0.0, SHARD_MB], ids=["unsharded", "sharded"])
def test_local_cluster_equals_in_process(demo_root, tmp_path, shard_mb):
    serial = _store_copy(demo_root, str(tmp_path / "serial.zarr"))
    parallel = _store_copy(demo_root, str(tmp_path / "parallel.zarr"), shard_mb)
    assert extract_audio(serial, workers=0).done == 20
    report = extract_audio(parallel, workers=2)
    assert report.done == 20 and report.failed == 0
    if shard_mb:  # one shard holds all 20 clips: both workers computed parts of it, one wrote it (split_task)
        assert parallel.array("audio/mel").shards[0] >= 20
    _arrays_equal(serial, parallel, ["audio/mel", "audio/gam", "audio/cqt"])
    assert serial.ledger("audio/cqt").entries == parallel.ledger("audio/cqt").entries


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_external_scheduler_and_worker_processes(demo_root, tmp_path):
    store = _store_copy(demo_root, str(tmp_path / "s.zarr"))
    scheduler_file = str(tmp_path / "scheduler.json")
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    scheduler = subprocess.Popen(dask + ["--scheduler-file", scheduler_file, "--no-dashboard", "--host", "127.0.0.1", "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        _wait_for(lambda: os.path.exists(scheduler_file) and os.path.getsize(scheduler_file) > 0, 60, "scheduler")
        time.sleep(0.2)
        address = json.load(open(scheduler_file))["address"]
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard", "--nworkers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = run_cli("extract-audio", store.url, "--features", "mel,cqt", "--json", env={**env, "FEATSTORE_SCHEDULER": address}, timeout=240)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["done"] == 20
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
    reference = _store_copy(demo_root, str(tmp_path / "ref.zarr"))
    extract_audio(reference, workers=0, features=("mel", "cqt"))
    _arrays_equal(store, reference, ["audio/mel", "audio/cqt"])


def _prepare_embed(store: featstore.Store, tmp_path) -> list[str]:
    """Mel features and a small model file; returns the embed command's options."""
    import keras

    from featstore.models import build_model

    extract_audio(store, workers=0, features=("mel",))
    path = str(tmp_path / "aud-mel.keras")
    if not os.path.exists(path):
        keras.utils.set_random_seed(0)
        build_model("aud-mel", input_shape=(128, 72, 6), widths=(32, 64), head_units=64).save(path)
    # 6 units (2 clips) per forward call, in the killed run and the reference alike: with the
    # default 256 all 20 clips went through one call, and the kill could land after the last write
    return ["--model", "aud-mel", "--batch-units", str(EMBED_BATCH_UNITS), "--model-file", path]


EMBED_BATCH_UNITS = 6


def _run_embed(store: featstore.Store, options: list[str]) -> None:
    from featstore.pipelines.embed import embed

    embed(store, "aud-mel", model_file_path=options[-1], batch_units=EMBED_BATCH_UNITS)


# stage -> (prepare(store, tmp_path) -> CLI options, arrays, reference run(store, options))
STAGE_RUNS = {
    "extract-audio": (lambda s, t: ["--features", "mel,gam,cqt"], ["audio/mel", "audio/gam", "audio/cqt"], lambda s, o: extract_audio(s, workers=0)),
    "extract-frames": (lambda s, t: ["--size", "96"], ["frames/rgb", "frames/time_s"], lambda s, o: extract_frames(s, workers=0, size=96)),
    "embed": (_prepare_embed, ["embeddings/aud-mel/fc1024", "embeddings/aud-mel/fc10", "predictions/aud-mel"], _run_embed),
}


@pytest.mark.parametrize("stage", sorted(STAGE_RUNS))
def test_sigkill_then_rerun_is_bitwise_equal(demo_root, tmp_path, stage):
    """Kill the client midway (SIGKILL), re-run: arrays bitwise equal to an uninterrupted run."""
    prepare, paths, run_reference = STAGE_RUNS[stage]
    killed = _store_copy(demo_root, str(tmp_path / "killed.zarr"))
    options = prepare(killed, tmp_path)
    chunk_dir = os.path.join(killed.url, *paths[0].split("/"), "c")
    args = [sys.executable, "-m", "featstore.cli.main", stage, killed.url, *options, "--workers", "0", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FEATSTORE_FLUSH_S": "0.2"})
    _wait_for(lambda: os.path.isdir(chunk_dir) and len(os.listdir(chunk_dir)) >= 4, 180, "some chunks written")
    assert proc.poll() is None, "the run must still be going when it is killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = featstore.open_store(killed.url)
    # a clip is done once every output marks it (the kill may land between two ledgers' flushes)
    n_marked = len(set.intersection(*(set(partial.ledger(p).entries) for p in paths)))
    assert n_marked < 20, "killed before the end"
    # every clip marked done has its chunk written whole and matching its checksum
    from featstore.verify import verify_store

    assert verify_store(partial, paths).ok
    rerun = json.loads(run_cli(stage, killed.url, *options, "--workers", "0", "--json", check=True).stdout)
    assert rerun["done"] + rerun["skipped"] == 20 and rerun["skipped"] == n_marked
    reference = _store_copy(demo_root, str(tmp_path / "ref.zarr"))
    run_reference(reference, prepare(reference, tmp_path))
    _arrays_equal(featstore.open_store(killed.url), reference, paths)


def test_second_writer_refused_and_stale_lock_taken_over(demo_store):
    extract_audio(demo_store, workers=0, features=("mel",))
    holder = WriterLock(demo_store.side, ["audio/mel"], "extract-audio").acquire()
    try:
        proc = run_cli("extract-audio", demo_store.url, "--features", "mel", "--workers", "0", "--overwrite")
        assert proc.returncode == 1
        assert f"pid {os.getpid()}" in proc.stderr and socket.gethostname() in proc.stderr
        # readers are never blocked
        assert demo_store.audio("mel", demo_store.clips.clip_id[0]).shape == (2, 128, 216)
    finally:
        holder.release()
    # a lock left by a dead process is stale: taken over with a warning
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    demo_store.side.write("locks/audio--mel.json", json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x", "stage": "extract-audio"}).encode())
    with pytest.warns(UserWarning, match="stale lock"):
        report = extract_audio(demo_store, workers=0, features=("mel",))
    assert report.skipped == 20
    assert not demo_store.side.exists("locks/audio--mel.json"), "released at the end"
    with pytest.raises(LockHeld):
        with WriterLock(demo_store.side, ["audio/mel"], "a"):
            WriterLock(demo_store.side, ["audio/mel"], "b").acquire()
