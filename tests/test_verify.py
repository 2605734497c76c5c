"""`featstore verify`: a flipped byte or a lost chunk is reported with array and clip_id; --repair
recomputes exactly the damaged clips; temp files of interrupted writes are cleaned."""

from __future__ import annotations

import json
import os

import numpy as np

import featstore
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from tests.conftest import run_cli


def _chunk_file(store: featstore.Store, path: str, clip_index: int) -> str:
    array = store.array(path)
    return os.path.join(store.url, path, "c", str(clip_index), *(["0"] * (array.ndim - 1)))


def test_flipped_byte_and_lost_chunk_are_found_and_repaired(flat_demo_store):
    store = flat_demo_store
    assert extract_audio(store, workers=0, features=("mel",)).done == 20
    assert extract_frames(store, workers=0, size=32).done == 20
    before = {p: store.array(p)[:] for p in ("audio/mel", "frames/rgb")}
    assert run_cli("verify", store.url, check=True).stdout.strip().endswith("ok")

    flipped = _chunk_file(store, "audio/mel", 3)
    raw = bytearray(open(flipped, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(flipped, "wb").write(bytes(raw))
    os.remove(_chunk_file(store, "frames/rgb", 7))
    open(os.path.join(store.url, "audio", "mel", "c", "x.partial"), "wb").write(b"half a chunk")

    proc = run_cli("verify", store.url, "--json")
    assert proc.returncode == 4
    report = json.loads(proc.stdout)
    damaged = {(d["array"], d["clip_id"]) for d in report["damaged"]}
    assert damaged == {("audio/mel", store.clips.clip_id[3]), ("frames/rgb", store.clips.clip_id[7])}
    assert report["partial_files_removed"] == 1
    assert not os.path.exists(os.path.join(store.url, "audio", "mel", "c", "x.partial"))
    text = run_cli("verify", store.url).stdout
    assert f"DAMAGED audio/mel clip {store.clips.clip_id[3]}" in text

    proc = run_cli("verify", store.url, "--repair", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]
    assert "repaired 1 clip(s) of audio/mel" in proc.stderr
    for path, values in before.items():
        assert store.array(path)[:].tobytes() == values.tobytes(), f"{path} not restored bitwise"


def test_verify_reports_inconsistent_done_marks(demo_store):
    store = demo_store
    extract_audio(store, workers=0, features=("mel",))
    ledger = store.ledger("audio/mel")
    ledger.mark_done("no-such-clip", "x", 0)
    ledger.flush(store.side)
    proc = run_cli("verify", store.url, "--json")
    assert proc.returncode == 4
    assert any("unknown clip 'no-such-clip'" in p for p in json.loads(proc.stdout)["problems"])
    assert np.isfinite(store.audio("mel", store.clips.clip_id[0])).all()
