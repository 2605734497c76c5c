"""Hardening, third round, one test per point: a store recognises its own clips table and locks it,
caches carry the code version that made them, damage is repaired or reported, side files and
systems are checksummed, resources stay bounded, and the smaller confusions. Real stores, real
processes, real media."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import featstore
from featstore.errors import FeatstoreWarning, IngestError
from featstore.pipelines.extract_audio import AudioConfig, extract_audio
from featstore.pipelines.ingest import ingest
from tests.conftest import CLIP_S, run_cli
from tests.test_hardening import N_CLIPS, _no_traceback, _small_dataset, _small_store


# ------------------------------------------------------------------------------------------ point 1
def test_1_a_foreign_clips_table_is_refused_before_anything_is_written(demo_root, tmp_path):
    ours = _small_store(demo_root, tmp_path / "a")
    extract_audio(ours, features=("mel",), workers=0, progress=False)
    other = featstore.init_store(str(tmp_path / "other.zarr"), clip_duration_s=CLIP_S)
    ingest(other, demo_root)
    clips_file = os.path.join(ours.url, "_featstore", "clips.parquet")
    shutil.copy(os.path.join(other.url, "_featstore", "clips.parquet"), clips_file)
    before = sorted(os.listdir(os.path.join(ours.url, "audio")))
    for args in (("info", ours.url), ("extract-audio", ours.url, "--features", "gam", "--workers", "0"),
                 ("ingest", ours.url, "--format", "csv", str(tmp_path / "a" / "data" / "m.csv"))):
        proc = run_cli(*args)
        assert proc.returncode != 0, (args, proc.stdout)
        _no_traceback(proc)
        assert "not this store's clips table" in proc.stderr and proc.stderr.count("\n") == 1
    assert sorted(os.listdir(os.path.join(ours.url, "audio"))) == before  # nothing written
    assert "not this store's clips table" in run_cli("verify", ours.url).stdout


_INGEST = textwrap.dedent("""
    import sys, time
    import featstore
    from featstore.pipelines.ingest import ingest
    store = featstore.open_store(sys.argv[1])
    store.clips  # a long-lived handle: the table as it was before the other ingest wrote
    start = float(sys.argv[4])
    time.sleep(max(0.0, start - time.time()))
    ingest(store, sys.argv[2], fmt=sys.argv[3])
""")


def test_1_two_concurrent_ingests_never_lose_clips(demo_root, tmp_path):
    import time

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    manifest = _small_dataset(demo_root, str(root))  # 3 more clips, same root
    n_tau = len(os.listdir(root / "audio"))
    for attempt in range(2):
        url = str(tmp_path / f"s{attempt}.zarr")
        featstore.init_store(url, clip_duration_s=CLIP_S).set_dataset_root(str(root))
        start = time.time() + 6
        procs = [subprocess.Popen([sys.executable, "-c", _INGEST, url, src, fmt, str(start)], stderr=subprocess.PIPE, text=True)
                 for src, fmt in ((str(root), "tau2021"), (manifest, "csv"))]
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
        assert featstore.open_store(url).n_clips == n_tau + 3


# ------------------------------------------------------------------------------------------ point 11
def test_11_a_code_version_bump_recomputes_and_arrays_made_before_keep_matching(demo_root, tmp_path):
    from featstore.pipelines.runner import run_stage

    class FirstMel(AudioConfig):  # the code as it was when code versions were introduced
        code_version = 1

    store = _small_store(demo_root, tmp_path)
    run_stage(store, FirstMel(features=("mel",)).build(store), workers=0, progress=False)
    before = store.array("audio/mel")[:]
    # an array made before code versions were recorded: no code_version in its provenance
    attrs = dict(store.array("audio/mel").attrs["featstore"])
    del attrs["code_version"]
    store.array("audio/mel").attrs["featstore"] = attrs
    again = run_stage(store, FirstMel(features=("mel",)).build(store), workers=0, progress=False)
    assert (again.done, again.skipped) == (0, N_CLIPS)  # still matches: no recompute

    class FixedMel(AudioConfig):  # a developer fixed the MEL code and bumped the version
        code_version = 2

    with pytest.warns(FeatstoreWarning, match="version 1 of extract-audio's code, now 2"):
        bumped = run_stage(store, FixedMel(features=("mel",)).build(store), workers=0, progress=False)
    assert (bumped.done, bumped.skipped) == (N_CLIPS, 0)
    prov = store.provenance("audio/mel")
    assert prov["code_version"] == 2 and prov.fingerprint != attrs["fingerprint"]
    np.testing.assert_array_equal(store.array("audio/mel")[:], before)  # same code here, so the same values
    assert run_stage(store, FixedMel(features=("mel",)).build(store), workers=0, progress=False).done == 0


# ------------------------------------------------------------------------------------------ point 12
def test_12_a_deleted_array_folder_is_never_claimed_done(demo_root, tmp_path):
    store = _small_store(demo_root, tmp_path)
    extract_audio(store, features=("mel",), workers=0, progress=False)
    shutil.rmtree(os.path.join(store.url, "audio", "mel"))
    assert extract_audio(store, features=("mel",), workers=0, progress=False).done == N_CLIPS  # without --overwrite
    shutil.rmtree(os.path.join(store.url, "audio", "mel"))
    proc = run_cli("extract-audio", store.url, "--features", "mel", "--workers", "0", "--overwrite", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["done"] == N_CLIPS, proc.stderr
    info = json.loads(run_cli("info", store.url, "--json", check=True).stdout)
    mel = next(a for a in info["arrays"] if a["path"] == "audio/mel")
    assert mel["done"] == N_CLIPS and mel["bytes_on_disk"] > 0
    assert run_cli("verify", store.url).returncode == 0


# ------------------------------------------------------------------------------------------ points 3-5
@pytest.fixture(scope="module")
def fused(tmp_path_factory, demo_root):
    """A store of the demo with MEL, one tiny backbone and one audio fusion run (one epoch)."""
    import keras

    from featstore.models import build_model
    from featstore.pipelines.embed import embed
    from featstore.pipelines.fuse import FuseConfig, fuse

    work = tmp_path_factory.mktemp("fused")
    store = featstore.init_store(str(work / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(store, demo_root)
    extract_audio(store, AudioConfig(features=("mel",)), workers=0)
    keras.utils.set_random_seed(0)
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(str(work / "aud.keras"))
    embed(store, "aud-mel", model_file_path=str(work / "aud.keras"))
    fuse(store, FuseConfig(method="f4", modalities=("audio",), epochs=1))
    return store, work


def _copy_store(store: featstore.Store, target) -> featstore.Store:
    return featstore.open_store(shutil.copytree(store.url, str(target)))


def _flip_byte(path: str) -> None:
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(path, "wb").write(bytes(raw))


def _damage_chunk(store: featstore.Store, path: str, row: int) -> None:
    array = store.array(path)
    array[row] = np.zeros(array.shape[1:], array.dtype)  # a sound chunk with other values than the ledger's


def test_3_repair_remakes_fusion_predictions_and_names_what_it_cannot(fused, tmp_path):
    store = _copy_store(fused[0], tmp_path / "s.zarr")
    before = store.array("predictions/fuse-f4-audio")[0]
    _damage_chunk(store, "predictions/fuse-f4-audio", 0)
    _damage_chunk(store, "audio/mel", 1)
    proc = run_cli("verify", store.url, "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "repaired 1 clip(s) of predictions/fuse-f4-audio" in proc.stderr and "Traceback" not in proc.stderr
    assert "repaired 1 clip(s) of audio/mel" in proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith("DAMAGED")]
    np.testing.assert_allclose(featstore.open_store(store.url).array("predictions/fuse-f4-audio")[0], before, rtol=1e-5, atol=1e-6)
    # a run whose record is gone cannot be re-made: named, the rest still repaired
    _damage_chunk(store, "predictions/fuse-f4-audio", 2)
    _damage_chunk(store, "audio/mel", 3)
    store.side.delete("runs/fuse-f4-audio.json")
    proc = run_cli("verify", store.url, "--repair")
    assert proc.returncode != 0
    assert "cannot repair predictions/fuse-f4-audio" in proc.stderr and "Traceback" not in proc.stderr
    assert "repaired 1 clip(s) of audio/mel" in proc.stderr


def test_4_damaged_models_and_heads_are_found_and_not_exported(fused, tmp_path):
    for victim in ("models/aud-mel.keras", "runs/fuse-f4-audio.keras", "runs/fuse-f4-audio.json"):
        store = _copy_store(fused[0], tmp_path / victim.replace("/", "-"))
        _flip_byte(os.path.join(store.url, "_featstore", victim))
        proc = run_cli("verify", store.url)
        assert proc.returncode != 0 and f"_featstore/{victim}: damaged" in proc.stdout, proc.stdout
        if victim.endswith(".keras"):
            proc = run_cli("export-system", store.url, "--run", "fuse-f4-audio", "--to", str(tmp_path / f"sys-{victim[:4]}"))
            assert proc.returncode != 0 and victim in proc.stderr, proc.stderr
            _no_traceback(proc)
            assert not os.path.exists(tmp_path / f"sys-{victim[:4]}" / "manifest.json")


def test_5_a_swapped_backbone_is_refused_on_load(fused, tmp_path):
    import hashlib

    from featstore.system import CHECKSUMS, System

    import keras

    from featstore.models import build_model

    store, _ = fused
    from featstore.pipelines.stages import system_from_run

    target = system_from_run(store, "fuse-f4-audio").export(str(tmp_path / "sys"))
    keras.utils.set_random_seed(1)  # another backbone of the same shape, checksums regenerated
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(os.path.join(target, "backbones", "aud-mel.keras"))
    lines = []
    for line in open(os.path.join(target, CHECKSUMS)):
        relative = line.rstrip("\n").split("  ", 1)[1]
        lines.append(f"{hashlib.sha256(open(os.path.join(target, relative), 'rb').read()).hexdigest()}  {relative}\n")
    open(os.path.join(target, CHECKSUMS), "w").writelines(lines)
    with pytest.raises(featstore.ConfigError, match="not the backbone 'aud-mel' the manifest names"):
        System.load(target)


# ------------------------------------------------------------------------------------------ point 7
def test_7_a_cluster_without_workers_is_an_error_naming_the_scheduler(demo_root, tmp_path):
    from distributed import LocalCluster

    store = _small_store(demo_root, tmp_path)
    proc = run_cli("extract-audio", store.url, "--features", "mel", "--workers", "-1")
    assert proc.returncode != 0 and "'--workers': -1 is not in the range x>=0" in proc.stderr
    _no_traceback(proc)
    with LocalCluster(n_workers=0, dashboard_address=None, processes=True) as cluster:  # every worker gone
        env = {**os.environ, "FEATSTORE_LOST_CLUSTER_S": "2"}
        proc = run_cli("extract-audio", store.url, "--features", "mel", "--scheduler", cluster.scheduler_address, env=env, timeout=120)
    assert proc.returncode != 0 and f"no dask worker at scheduler {cluster.scheduler_address}" in proc.stderr, proc.stderr
    _no_traceback(proc)


# ------------------------------------------------------------------------------------------ point 10
def test_10_locks_csvs_and_info_say_what_is_true(demo_root, tmp_path):
    store = _small_store(demo_root, tmp_path)
    # a lock naming a live pid of another program (this test's own process started before the lock's time)
    lock = os.path.join(store.url, "_featstore", "locks", "audio--mel.json")
    os.makedirs(os.path.dirname(lock))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        holder = {"host": socket.gethostname(), "pid": other.pid, "process_start": "1", "started": "x", "stage": "extract-audio"}
        open(lock, "w").write(json.dumps(holder))
        assert extract_audio(store, features=("mel",), workers=0, progress=False).done == N_CLIPS  # pid reused: stale
        holder.pop("process_start")  # an older lock: honoured, and the message says how to break it
        open(lock, "w").write(json.dumps(holder))
        open(lock.replace("mel", "gam"), "w").write(json.dumps(holder))
        proc = run_cli("extract-audio", store.url, "--features", "gam", "--workers", "0")
        assert proc.returncode != 0 and "audio--gam.json" in proc.stderr and "featstore unlock" in proc.stderr, proc.stderr
        assert "removed 2 lock(s)" in run_cli("unlock", store.url, check=True).stdout
        assert run_cli("extract-audio", store.url, "--features", "gam", "--workers", "0").returncode == 0
    finally:
        other.kill()
        other.wait()
    # CSVs: backslashes are separators, a row with no media is refused, quoted TAU files are read
    root = tmp_path / "data"
    (root / "sub").mkdir()
    shutil.copy(root / "c0.wav", root / "sub" / "x0.wav")
    (root / "win.csv").write_text("audio,video,label,split\nsub\\x0.wav,,park,train\n")
    ingest(store, str(root / "win.csv"), fmt="csv")
    assert store.clips.set_index("clip_id").loc["x0", "audio_path"] == "sub/x0.wav"
    (root / "none.csv").write_text("audio,video,label,split,clip_id\n,,park,train,ghost\n")
    with pytest.raises(IngestError, match="line 2: neither audio nor video"):
        ingest(store, str(root / "none.csv"), fmt="csv")
    tau = tmp_path / "tau"
    shutil.copytree(demo_root, tau)
    meta = tau / "evaluation_setup" / "meta.csv" if (tau / "evaluation_setup" / "meta.csv").exists() else tau / "meta.csv"
    rows = list(csv.reader(open(meta), delimiter="\t"))
    with open(meta, "w", newline="") as f:
        csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL).writerows(rows)
    quoted = featstore.init_store(str(tmp_path / "q.zarr"), clip_duration_s=CLIP_S)
    assert ingest(quoted, str(tau)).added == len(rows) - 1
    # info: a clip that failed at ingest and was computed since counts as done only
    failures = store.failures_record()
    failures.record("ingest", "", "c0", "MissingFile", "audio file not found: c0.wav")
    failures.flush()
    info = json.loads(run_cli("info", store.url, "--json", check=True).stdout)
    assert info["failures"] == 0


# ------------------------------------------------------------------------------------------ format version
def test_format_version_is_read_on_open(tmp_path):
    from featstore.upgrade import FORMAT_VERSION

    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    assert store.settings["format_version"] == FORMAT_VERSION
    # an older store's single failures file is read through featstore.upgrade
    import pandas as pd

    old = pd.DataFrame({"stage": ["extract-audio"], "array": ["audio/mel,audio/gam"], "clip_id": ["c0"], "error_type": ["E"],
                        "message": ["m"], "time": [pd.Timestamp(0, unit="s", tz="UTC")]})
    store.side.write("failures.parquet", old.to_parquet(index=False))
    assert sorted(store.failures["array"]) == ["audio/gam", "audio/mel"]
    store.group.attrs["featstore"] = {**store.settings, "format_version": FORMAT_VERSION + 1}
    proc = run_cli("info", store.url)
    assert proc.returncode != 0 and f"store format version {FORMAT_VERSION + 1} is newer" in proc.stderr
    _no_traceback(proc)


# ------------------------------------------------------------------------------------------ your own data
def test_own_data_classes_and_locations(demo_root, tmp_path):
    root = tmp_path / "data"
    manifest = _small_dataset(demo_root, str(root))
    rows = open(manifest).read().splitlines()
    labels, locations = ("kitchen", "office", "kitchen"), ("home-1", "work-1", "home-2")
    lines = [rows[0] + ",location"] + [r.replace(",park,", f",{lab},") + f",{loc}" for r, lab, loc in zip(rows[1:], labels, locations)]
    (root / "own.csv").write_text("\n".join(lines) + "\n")
    # classes taken from the first CSV when init was given none
    url = str(tmp_path / "a.zarr")
    run_cli("init", url, "--clip-duration-s", str(CLIP_S), check=True)
    run_cli("ingest", url, "--format", "csv", str(root / "own.csv"), check=True)
    store = featstore.open_store(url)
    assert store.classes == ["kitchen", "office"]
    assert list(store.clips["identifier"]) == list(locations)
    # classes given: a label outside them is one line naming the fix
    url = str(tmp_path / "b.zarr")
    run_cli("init", url, "--clip-duration-s", str(CLIP_S), "--classes", "kitchen,garden", check=True)
    assert featstore.open_store(url).classes == ["kitchen", "garden"]
    proc = run_cli("ingest", url, "--format", "csv", str(root / "own.csv"))
    assert proc.returncode != 0 and "unknown label 'office'" in proc.stderr and "init --classes" in proc.stderr
    _no_traceback(proc)
    assert proc.stderr.count("\n") == 1
