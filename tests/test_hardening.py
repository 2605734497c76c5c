"""Hardening (issue 17), one test per point: no path outside the dataset root by any door, no lost
failure records under concurrent stages, damaged side files named and diagnosed, names validated,
bad metadata as one-line errors, and the smaller confusions. Real stores, real processes, real media."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest

import featstore
from featstore.errors import ConfigError, DamagedFile, IngestError, UnsafePath
from featstore.hdf5 import import_h5
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.ingest import ingest
from tests.conftest import CLIP_S, run_cli

N_CLIPS = 3


def _small_dataset(demo_root: str, root: str, *, broken_audio: str = "", broken_video: str = "") -> str:
    """``root`` with N_CLIPS demo clips (c0, c1, ...) and a CSV manifest; returns the manifest.

    ``broken_audio`` / ``broken_video``: a clip whose wav / mp4 is overwritten with garbage.
    """
    os.makedirs(root, exist_ok=True)
    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(demo_root, "audio")))[:N_CLIPS]
    manifest = os.path.join(root, "m.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "video", "label", "split", "clip_id"])
        for i, stem in enumerate(stems):
            clip_id = f"c{i}"
            for kind, ext, broken in (("audio", "wav", broken_audio), ("video", "mp4", broken_video)):
                target = os.path.join(root, f"{clip_id}.{ext}")
                shutil.copy(os.path.join(demo_root, kind, f"{stem}.{ext}"), target)
                if clip_id == broken:
                    open(target, "wb").write(b"garbage, not media")
            w.writerow([f"{clip_id}.wav", f"{clip_id}.mp4", "park", "train", clip_id])
    return manifest


def _small_store(demo_root: str, tmp_path, **broken) -> featstore.Store:
    manifest = _small_dataset(demo_root, str(tmp_path / "data"), **broken)
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(store, manifest, fmt="csv")
    return store


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("featstore: error: "), proc.stderr


# ------------------------------------------------------------------------------------------ point 1
def _crafted_h5(path: str, audio_paths: list[str]) -> None:
    """An HDF5 file in featstore's export layout whose clips table names ``audio_paths``."""
    with h5py.File(path, "w") as f:
        clips = f.create_group("clips")
        clips.create_dataset("clip_id", data=np.array([f"evil{i}".encode() for i in range(len(audio_paths))]))
        clips.create_dataset("audio_path", data=np.array([p.encode() for p in audio_paths]))
        clips.create_dataset("label", data=np.array([b"park"] * len(audio_paths)))
        f.create_dataset("evil/x", data=np.zeros((len(audio_paths), 2), np.float32))


def test_1_no_path_outside_the_dataset_root(demo_root, tmp_path):
    store = _small_store(demo_root, tmp_path)
    root = store.dataset_root
    secret = tmp_path / "outside" / "secret.wav"
    secret.parent.mkdir()
    shutil.copy(os.path.join(root, "c0.wav"), secret)
    # import-h5: a crafted clips table naming an absolute outside path or climbing with ../
    for bad in (str(secret), "../../../../etc/passwd"):
        crafted = str(tmp_path / "crafted.h5")
        _crafted_h5(crafted, ["c0.wav", bad])
        proc = run_cli("import-h5", store.url, crafted)
        assert proc.returncode == 1 and "escapes the dataset root" in proc.stderr and "crafted.h5" in proc.stderr
        _no_traceback(proc)
        again = featstore.open_store(store.url)
        assert again.n_clips == N_CLIPS and not again.has_array("evil/x"), "a refused file changes nothing"
    # a store with no dataset root yet refuses them too
    bare = featstore.init_store(str(tmp_path / "bare.zarr"))
    with pytest.raises(IngestError, match="climbs out"):
        import_h5(bare, crafted)
    # appended clips go through the same check
    with pytest.raises(UnsafePath):
        store.add_clips(pd.DataFrame({"clip_id": ["x"], "audio_path": [str(secret)]}))
    # a symlink swapped in after ingest is refused when the stage opens it
    os.remove(os.path.join(root, "c1.wav"))
    os.symlink(secret, os.path.join(root, "c1.wav"))
    report = extract_audio(featstore.open_store(store.url), workers=0, features=("mel",))
    assert report.done == N_CLIPS - 1 and [f["clip_id"] for f in report.failures] == ["c1"]
    assert "UnsafePath" in report.failures[0]["error"] and "escapes the dataset root" in report.failures[0]["error"]
    # re-pointing the root at a tree whose file leads out of it is refused
    moved = tmp_path / "moved"
    shutil.copytree(root, moved, symlinks=True)
    with pytest.raises(UnsafePath, match="c1.wav"):
        store.set_dataset_root(str(moved))
    assert store.dataset_root == root


# ------------------------------------------------------------------------------------------ point 2
_WRITER = textwrap.dedent(
    """
    import os, sys, time, featstore
    url, array, clip_ids, clear, barrier = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], sys.argv[5]
    record = featstore.open_store(url).failures_record()
    for clip_id in clip_ids:
        record.record(array.split("/")[0], array, clip_id, "MediaError", "broken " + array)
    if clear:
        record.clear(clear.split(":")[0], clear.split(":")[1])
    open(barrier + "." + str(os.getpid()), "w").close()
    while len([n for n in os.listdir(os.path.dirname(barrier)) if n.startswith(os.path.basename(barrier))]) < 2:
        time.sleep(0.05)   # both processes have read the record before either writes it
    record.flush()
    """
)


def test_2_failure_records_of_concurrent_stages_are_all_kept(demo_root, tmp_path):
    store = _small_store(demo_root, tmp_path)
    seed = store.failures_record()
    seed.record("audio", "audio/mel", "c2", "MediaError", "broken before")
    seed.flush()
    barrier = str(tmp_path / "sync" / "ready")
    os.makedirs(os.path.dirname(barrier))
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, store.url, "audio/mel", "c0", "audio:c2", barrier]),
        subprocess.Popen([sys.executable, "-c", _WRITER, store.url, "frames/rgb", "c1", "", barrier]),
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    table = featstore.open_store(store.url).failures
    assert sorted(zip(table.array, table.clip_id)) == [("audio/mel", "c0"), ("frames/rgb", "c1")], "none lost, the cleared one stays cleared"

    # the real stages, two processes at once on different arrays of one store
    store = _small_store(demo_root, tmp_path / "cli", broken_audio="c0", broken_video="c2")
    args = ["--workers", "0", "--json", "--quiet"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "featstore.cli.main", "extract-audio", store.url, "--features", "mel", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        subprocess.Popen([sys.executable, "-m", "featstore.cli.main", "extract-frames", store.url, "--size", "32", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE),
    ]
    assert [p.wait(timeout=300) for p in procs] == [3, 3]
    table = featstore.open_store(store.url).failures
    assert sorted(zip(table.stage, table.array, table.clip_id)) == [
        ("extract-audio", "audio/mel", "c0"), ("extract-frames", "frames/rgb", "c2"), ("extract-frames", "frames/time_s", "c2"),
    ]


# ------------------------------------------------------------------------------------------ point 3
def _truncate(path: str) -> bytes:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return data[: len(data) // 2]


def test_3_damaged_side_files_are_named_and_diagnosed(demo_root, tmp_path):
    store = _small_store(demo_root, tmp_path)
    assert extract_audio(store, workers=0, features=("mel", "gam")).done == N_CLIPS
    side = os.path.join(store.url, "_featstore")
    cases = {
        "clips.parquet": os.path.join(side, "clips.parquet"),
        "zarr.json": os.path.join(store.url, "audio", "gam", "zarr.json"),
        "ledger": os.path.join(side, "ledger", "audio--gam.json"),
    }
    for what, path in cases.items():
        original = open(path, "rb").read()
        damaged = _truncate(path)
        try:
            commands = [["info"], ["verify"], ["verify", "--repair"], ["extract-audio", "--features", "gam", "--workers", "0"]]
            if what == "clips.parquet":
                commands.append(["ingest", "--format", "csv", os.path.join(store.dataset_root, "m.csv")])
            for command in commands:
                proc = run_cli(command[0], store.url, *command[1:])
                assert os.path.basename(path) in (proc.stdout + proc.stderr), (what, command, proc.stdout, proc.stderr)
                assert "Traceback" not in proc.stderr and "<Buffer>" not in proc.stderr, (what, command, proc.stderr)
                if command[0] == "verify":
                    assert proc.returncode == 4 and "PROBLEM" in proc.stdout and "damaged" in proc.stdout
                    if what != "clips.parquet":
                        assert f"checked {N_CLIPS} clip chunks" in proc.stdout, "audio/mel is still checked"
                else:
                    assert proc.returncode == 1
                assert open(path, "rb").read() == damaged, f"{what}: nothing overwritten while diagnosing"
        finally:
            open(path, "wb").write(original)
    assert run_cli("verify", store.url).returncode == 0
    # a truncated lock names no live holder: taken over as stale, with a warning
    lock = os.path.join(side, "locks", "audio--mel.json")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    open(lock, "w").write('{"host": "x", "pi')
    with pytest.warns(UserWarning, match="stale lock.*damaged"):
        assert extract_audio(store, workers=0, features=("mel",)).skipped == N_CLIPS
    assert not os.path.exists(lock)
    with pytest.raises(DamagedFile, match="clips.parquet"):
        _truncate(cases["clips.parquet"])
        featstore.open_store(store.url).clips


# ------------------------------------------------------------------------------------------ point 5
def test_5_names_are_validated(demo_root, tmp_path):
    store = _small_store(demo_root, tmp_path)
    for bad in ("", "/abs/path", "_featstore", "a/../b", "x\ny", "a//b", "a--b"):
        proc = run_cli("extract-audio", store.url, "--features", "mel", "--workers", "0", "--name", bad)
        assert proc.returncode == 1 and "--name" not in proc.stdout, (bad, proc.stdout, proc.stderr)
        _no_traceback(proc)
    for command in (["embed", store.url, "--model", "../x"], ["fuse", store.url, "--name", "a/b"], ["ensemble", store.url, "--inputs", "a,b", "--name", "_x"]):
        proc = run_cli(*command)
        assert proc.returncode == 2 and "Invalid value" in proc.stderr, (command, proc.stderr)
    after = featstore.open_store(store.url)
    assert after.array_paths() == [], "nothing written"
    assert sorted(os.listdir(os.path.join(store.url, "_featstore"))) == ["clips.parquet"]
    with pytest.raises(ConfigError, match="start with a letter or digit"):
        after.create_array("_featstore/x", per_clip_shape=(1,), dtype="float32", dims=("x",), stage="t", params={})
    assert after.create_array("feats/v2.1/mel_64", per_clip_shape=(1,), dtype="float32", dims=("x",), stage="t", params={}).shape == (N_CLIPS, 1)


# ------------------------------------------------------------------------------------------ point 6
def test_6_bad_metadata_is_a_one_line_error(demo_root, tmp_path):
    root = str(tmp_path / "tau")
    os.makedirs(root)
    open(os.path.join(root, "meta.csv"), "w").write("filename_audio\tfilename_video\tscene_label\tidentifier\n")
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    proc = run_cli("ingest", store.url, root)
    assert proc.returncode == 1 and "meta.csv: line 2: no rows" in proc.stderr
    _no_traceback(proc)
    manifest = _small_dataset(demo_root, str(tmp_path / "data"))
    lines = open(manifest).read().splitlines()
    cases = {
        "long-field": (lines[:2] + ["c1.wav,c1.mp4,park,train," + "x" * 140_000], "line 3: field larger than field limit"),
        "newline-id": (lines[:2] + ['c1.wav,c1.mp4,park,train,"c\n1"'], "line 4: clip_id 'c\\n1' holds a control character"),
        "slash-id": (lines[:2] + ["c1.wav,c1.mp4,park,train,a/b"], "line 3: clip_id 'a/b' holds a path separator"),
    }
    for name, (rows, message) in cases.items():
        bad = os.path.join(os.path.dirname(manifest), f"{name}.csv")
        open(bad, "w").write("\n".join(rows) + "\n")
        proc = run_cli("ingest", store.url, "--format", "csv", bad)
        assert proc.returncode == 1 and f"{name}.csv: {message}" in proc.stderr, (name, proc.stderr)
        _no_traceback(proc)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert featstore.open_store(store.url).n_clips == 0


# ------------------------------------------------------------------------------------------ point 7
def test_7_smaller_confusions(demo_root, tmp_path):
    # an absolute path inside the dataset root is accepted (stored relative)
    manifest = _small_dataset(demo_root, str(tmp_path / "data"), broken_video="c1")
    root = os.path.dirname(manifest)
    rows = open(manifest).read().replace("c0.wav", os.path.join(root, "c0.wav"))
    open(manifest, "w").write(rows)
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(store, manifest, fmt="csv")
    assert store.clips.audio_path[0] == "c0.wav"
    # a failure counts against each array the stage writes
    from featstore.pipelines.extract_frames import extract_frames

    assert extract_frames(store, workers=0, size=32).failed == 1
    proc = run_cli("info", store.url, "--json", check=True)
    info = json.loads(proc.stdout)
    assert {a["path"]: a["failures"] for a in info["arrays"]} == {"frames/rgb": 1, "frames/time_s": 1}
    assert info["failures"] == 1
    # a mistyped path is not created
    for command in ("info", "verify"):
        typo = str(tmp_path / f"typo-{command}.zarr")
        proc = run_cli(command, typo)
        assert proc.returncode == 1 and "no featstore store" in proc.stderr
        assert not os.path.exists(typo)
    # side files follow the umask, as the chunks do
    shared = str(tmp_path / "shared.zarr")
    for args in (["init", shared, "--clip-duration-s", str(CLIP_S)], ["ingest", shared, "--format", "csv", manifest]):
        subprocess.run([sys.executable, "-m", "featstore.cli.main", *args], check=True, capture_output=True, preexec_fn=lambda: os.umask(0o027))
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(os.path.join(shared, "_featstore", "clips.parquet")) == mode(os.path.join(shared, "zarr.json")) == 0o640
    # the stale-lock warning is one line, no Python source location
    lock = os.path.join(store.url, "_featstore", "locks", "frames--rgb.json")
    open(lock, "w").write("{")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = run_cli("extract-frames", store.url, "--size", "32", "--workers", "0", "--quiet", env=env)
    assert "featstore: warning: taking over the stale lock of 'frames/rgb'" in proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


def test_7_embed_skips_clips_that_failed_upstream(demo_root, tmp_path):
    from featstore.models import build_model
    from featstore.pipelines.embed import embed

    store = _small_store(demo_root, tmp_path, broken_audio="c1")
    assert extract_audio(store, workers=0, features=("mel",)).failed == 1
    model_file = str(tmp_path / "aud-mel.keras")
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(model_file)
    report, note = embed(store, "aud-mel", model_file_path=model_file)
    assert report.done == N_CLIPS - 1 and report.failed == 0
    assert "1 clip(s) skipped" in note and "audio/mel" in note and "c1" in note
    table = featstore.open_store(store.url).failures
    assert table[table.stage == "embed"].empty and list(table.clip_id) == ["c1"]
