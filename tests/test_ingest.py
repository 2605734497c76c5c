"""Ingest of the TAU 2021 layout and of generic CSVs, bad metadata, re-ingest, demo data."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
import soundfile

import featstore
from featstore.ingest import IngestError
from featstore.clips import ClipConflict
from featstore.pipelines.ingest import ingest
from tests.conftest import CLIP_S, run_cli


def _fold(root: str, name: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(root, "evaluation_setup", name), sep="\t")


def test_tau_ingest_counts_match_fold_files(demo_store, demo_root):
    clips = demo_store.clips
    train, evaluate = _fold(demo_root, "fold1_train.csv"), _fold(demo_root, "fold1_evaluate.csv")
    assert len(clips) == 20
    assert (clips["split"] == "train").sum() == len(train)
    assert (clips["split"] == "evaluate").sum() == len(evaluate)
    got = clips[clips.split == "train"].groupby("label").size().sort_index()
    want = train.groupby("scene_label").size().sort_index()
    assert got.tolist() == want.tolist() and list(got.index) == list(want.index)
    # no recording location on both sides of the official split
    assert not set(clips[clips.split == "train"].identifier) & set(clips[clips.split == "evaluate"].identifier)
    row = clips.iloc[0]
    assert row.clip_id == os.path.splitext(os.path.basename(row.audio_path))[0]
    assert not os.path.isabs(row.audio_path), "paths are stored relative to the dataset root"
    assert row.duration_s == pytest.approx(CLIP_S)
    assert len(row.audio_fingerprint) == 32 and len(row.video_fingerprint) == 32
    assert demo_store.dataset_root == demo_root


def test_demo_audio_format(demo_root):
    info = soundfile.info(os.path.join(demo_root, "audio", sorted(os.listdir(os.path.join(demo_root, "audio")))[0]))
    assert (info.samplerate, info.channels, info.subtype) == (48000, 2, "PCM_24")


def test_reingest_is_noop_and_more_clips_append(demo_store, demo_root, tmp_path):
    assert ingest(demo_store, demo_root).added == 0
    assert len(demo_store.clips) == 20
    extra = tmp_path / "extra.csv"
    shutil.copy(os.path.join(demo_root, "audio", os.listdir(os.path.join(demo_root, "audio"))[0]), tmp_path / "new.wav")
    # a CSV outside the store's root: refused, paths must stay inside the dataset root
    extra.write_text("audio,video,label,split\nnew.wav,,bus,train\n")
    with pytest.raises(IngestError, match="outside the store's dataset root"):
        ingest(demo_store, str(extra), fmt="csv")
    inside = os.path.join(demo_root, "more.csv")
    with open(inside, "w") as f:
        f.write("audio,video,label,split,clip_id\n" + f"{demo_store.clips.audio_path[0]},,{demo_store.clips.label[0]},train,extra-1\n")
    assert ingest(demo_store, inside, fmt="csv").added == 1
    assert ingest(demo_store, inside, fmt="csv").added == 0
    assert featstore.open_store(demo_store.url).clips.clip_id.iloc[-1] == "extra-1"
    os.remove(inside)


def _tau_copy(demo_root: str, tmp_path) -> str:
    root = str(tmp_path / "tau")
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns("*.mp4"))
    return root


def _edit_meta(root: str, transform) -> str:
    path = os.path.join(root, "meta.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(transform(lines)) + "\n")
    return path


@pytest.mark.parametrize(
    "transform, pattern",
    [
        (lambda L: [L[0].replace("scene_label", "label")] + L[1:], r"meta.csv: line 1: missing column\(s\) scene_label"),
        (lambda L: L + [L[3]], r"meta.csv: line 22: duplicate clip_id .* \(first on line 4\)"),
        (lambda L: L[:2] + [L[2].replace("\tairport\t", "\tbeach\t").replace("\tbus\t", "\tbeach\t")] + L[3:], r"meta.csv: line 3: unknown label 'beach'"),
        (lambda L: L[:4] + ["../../etc/passwd.wav\t\tbus\tx"] + L[4:], r"meta.csv: line 5: path '../../etc/passwd.wav' escapes the dataset root"),
    ],
    ids=["missing-column", "duplicate-clip", "unknown-label", "escaping-path"],
)
def test_bad_metadata_names_file_and_line(demo_root, tmp_path, transform, pattern):
    root = _tau_copy(demo_root, tmp_path)
    _edit_meta(root, transform)
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    with pytest.raises(IngestError, match=pattern):
        ingest(store, root)
    assert len(store.clips) == 0, "nothing is ingested from bad metadata"
    proc = run_cli("ingest", store.url, root)
    assert proc.returncode == 1 and "meta.csv: line" in proc.stderr


def test_missing_files_are_ingested_and_recorded(demo_root, tmp_path):
    root = _tau_copy(demo_root, tmp_path)
    gone = sorted(os.listdir(os.path.join(root, "audio")))[0]
    os.remove(os.path.join(root, "audio", gone))
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    summary = ingest(store, root)
    assert summary.added == 20
    failures = store.failures
    clip_id = os.path.splitext(gone)[0]
    assert failures.clip_id.tolist()[:1] == [clip_id] or clip_id in failures.clip_id.tolist()
    assert "audio file not found" in failures.set_index("clip_id").loc[clip_id, "message"]
    assert failures.set_index("clip_id").loc[clip_id, "stage"] == "ingest"


def test_crlf_and_meta_folder_layout(demo_root, tmp_path):
    """CSVs with CRLF endings, kept in a sibling ``*.meta`` folder, are found and read."""
    root = _tau_copy(demo_root, tmp_path)
    meta_dir = str(tmp_path / "TAU-urban-audio-visual-scenes-2021-development.meta")
    os.makedirs(meta_dir)
    shutil.move(os.path.join(root, "evaluation_setup"), os.path.join(meta_dir, "evaluation_setup"))
    for name in ("meta.csv",):
        shutil.move(os.path.join(root, name), os.path.join(meta_dir, name))
    for dirpath, _, files in os.walk(meta_dir):
        for fn in files:
            p = os.path.join(dirpath, fn)
            text = open(p).read().replace("\n", "\r\n")
            open(p, "w", newline="").write(text)
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    assert ingest(store, root).added == 20
    assert set(store.clips.split) == {"train", "evaluate"}


def test_generic_csv_conflict(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,video,label,split\na.wav,,bus,train\n")
    store = featstore.init_store(str(tmp_path / "s.zarr"))
    ingest(store, str(manifest), fmt="csv")
    manifest.write_text("audio,video,label,split\na.wav,,tram,train\n")
    with pytest.raises(ClipConflict, match=r"clip 'a' .*\(label: 'bus' -> 'tram'\)"):
        ingest(store, str(manifest), fmt="csv")
    manifest.write_text("audio,video,label,split\na.wav,,bus,holdout\n")
    with pytest.raises(IngestError, match="m.csv: line 2: unknown split 'holdout'"):
        ingest(store, str(manifest), fmt="csv")
