"""Correcting clips in place (``ingest --replace``) and removing them (``remove-clips``), on a real
store on disk with real wav files: exactly the edited clips are recomputed, removed ones skipped."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import featstore
from featstore.cli.main import main
from featstore.clip_edits import remove_clips
from featstore.errors import ClipConflict, LockHeld, NotFoundError
from featstore.info import store_info
from featstore.loader import training_batches
from featstore.lock import WriterLock
from featstore.pipelines.extract_audio import AudioConfig, extract_audio
from featstore.pipelines.ingest import ingest
from featstore.readers import read_audio
from featstore.verify import verify_store

from conftest import CLIP_S

MEL = AudioConfig(features=("mel",))
N_CLIPS = 4


@pytest.fixture
def dataset(demo_root, tmp_path):
    """Four clips' wav files copied from the demo dataset, and a CSV manifest writer over them."""
    root = tmp_path / "data"
    root.mkdir()
    wavs = sorted(f for f in os.listdir(os.path.join(demo_root, "audio")) if f.endswith(".wav"))[:N_CLIPS]
    for name in wavs:
        shutil.copy(os.path.join(demo_root, "audio", name), root / name)
    clip_ids = [os.path.splitext(name)[0] for name in wavs]

    def manifest(paths: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> str:
        paths, labels = paths or {}, labels or {}
        lines = ["clip_id,audio,video,label,split"]
        for cid, wav in zip(clip_ids, wavs):
            lines.append(f"{cid},{paths.get(cid, wav)},,{labels.get(cid, cid.split('-')[0])},train")
        (root / "m.csv").write_text("\n".join(lines) + "\n")
        return str(root / "m.csv")

    return clip_ids, wavs, manifest


def _store(tmp_path, name="s.zarr"):
    return featstore.init_store(str(tmp_path / name), clip_duration_s=CLIP_S)


def _mel(store, clip_id):
    return read_audio(store, "mel", clip_id)


def test_replace_corrects_a_path_in_place_and_only_that_clip_is_recomputed(dataset, tmp_path):
    clip_ids, wavs, manifest = dataset
    wrong = clip_ids[1]
    store = _store(tmp_path)
    ingest(store, manifest({wrong: wavs[0]}), fmt="csv")  # clip 1 points at clip 0's file by mistake
    assert extract_audio(store, MEL, workers=0).done == N_CLIPS
    before = {cid: _mel(store, cid) for cid in clip_ids}
    marks = store.ledger("audio/mel").entries
    np.testing.assert_array_equal(before[wrong], before[clip_ids[0]])

    with pytest.raises(ClipConflict, match=r"clip '.*' is already in the store .*audio_path.*re-ingest with --replace"):
        ingest(store, manifest(), fmt="csv")
    summary = ingest(store, manifest(), fmt="csv", replace=True)
    assert (summary.added, summary.replaced) == (0, [wrong])
    assert ingest(store, manifest(), fmt="csv", replace=True).replaced == []  # nothing differs any more

    reopened = featstore.open_store(store.url)  # the rewritten table matches its recorded checksum
    assert reopened.clips["clip_id"].tolist() == clip_ids  # same positions
    assert reopened.clips.loc[1, "audio_path"] == wavs[1]
    assert wrong not in reopened.ledger("audio/mel").entries
    report = extract_audio(reopened, MEL, workers=0)
    assert (report.done, report.skipped) == (1, N_CLIPS - 1)
    after = reopened.ledger("audio/mel").entries
    for cid in clip_ids:
        if cid != wrong:
            assert after[cid] == marks[cid]
            np.testing.assert_array_equal(_mel(reopened, cid), before[cid])
    reference = _store(tmp_path, "reference.zarr")  # the correct manifest ingested from the start
    ingest(reference, manifest(), fmt="csv")
    extract_audio(reference, MEL, workers=0, clips=[wrong])
    np.testing.assert_array_equal(_mel(reopened, wrong), _mel(reference, wrong))
    assert verify_store(reopened).ok


def test_replace_of_a_label_keeps_the_row_and_clears_its_marks(dataset, tmp_path):
    clip_ids, _, manifest = dataset
    store = _store(tmp_path)
    ingest(store, manifest(), fmt="csv")
    extract_audio(store, MEL, workers=0)
    other = "bus" if store.clips.loc[2, "label"] != "bus" else "tram"
    assert ingest(store, manifest(labels={clip_ids[2]: other}), fmt="csv", replace=True).replaced == [clip_ids[2]]
    assert featstore.open_store(store.url).clips.loc[2, "label"] == other
    assert extract_audio(store, MEL, workers=0).done == 1


def test_removed_clips_are_skipped_by_stages_info_and_the_loader_and_restored_by_replace(dataset, tmp_path):
    clip_ids, _, manifest = dataset
    store = _store(tmp_path)
    ingest(store, manifest(), fmt="csv")
    assert extract_audio(store, MEL, workers=0).done == N_CLIPS
    gone = clip_ids[0]
    assert remove_clips(store, [gone]) == [gone]
    assert remove_clips(store, [gone]) == []  # already removed

    store = featstore.open_store(store.url)
    assert store.removed.tolist() == [True] + [False] * (N_CLIPS - 1)
    assert gone not in store.ledger("audio/mel").entries
    report = extract_audio(store, MEL, workers=0)
    assert (report.done, report.skipped) == (0, N_CLIPS - 1)
    assert extract_audio(store, MEL, workers=0, clips=[gone]).done == 0  # not even by id
    info = store_info(store)
    assert (info["clips"], info["removed_clips"]) == (N_CLIPS - 1, 1)
    assert info["arrays"][0]["fraction_done"] == 1.0
    batches = training_batches(store, "audio/mel", split="train", batch_size=2)
    assert 0 not in set(batches.pairs[:, 0].tolist()) and len(set(batches.pairs[:, 0].tolist())) == N_CLIPS - 1
    assert verify_store(store).ok

    assert ingest(store, manifest(), fmt="csv").replaced == []  # a plain re-ingest leaves it removed
    assert featstore.open_store(store.url).removed[0]
    assert ingest(store, manifest(), fmt="csv", replace=True).replaced == [gone]
    store = featstore.open_store(store.url)
    assert not store.removed.any()
    assert extract_audio(store, MEL, workers=0).done == 1


def test_an_unknown_clip_id_names_the_closest_and_changes_nothing(dataset, tmp_path):
    clip_ids, _, manifest = dataset
    store = _store(tmp_path)
    ingest(store, manifest(), fmt="csv")
    typo = clip_ids[1][:-1] + "x"
    with pytest.raises(NotFoundError, match=rf"no clip '{typo}' in the store; did you mean '{clip_ids[1]}'\?"):
        remove_clips(store, [clip_ids[0], typo])
    assert not featstore.open_store(store.url).removed.any()


def test_cli_remove_clips_and_ingest_replace(dataset, tmp_path):
    clip_ids, _, manifest = dataset
    store = _store(tmp_path)
    csv = manifest()
    ingest(store, csv, fmt="csv")
    runner = CliRunner()
    result = runner.invoke(main, ["remove-clips", store.url, "--clips", f"{clip_ids[0]},{clip_ids[1]}"])
    assert result.exit_code == 0 and "removed 2 clip(s) (2 left in store)" in result.output
    result = runner.invoke(main, ["remove-clips", store.url, "--clips", "nope"])
    assert result.exit_code == 1 and "no clip 'nope' in the store" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["ingest", store.url, "--format", "csv", csv, "--replace", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["replaced"] == clip_ids[:2]


def test_an_edit_is_refused_while_a_stage_writes_an_array_and_changes_nothing(dataset, tmp_path):
    clip_ids, _, manifest = dataset
    store = _store(tmp_path)
    ingest(store, manifest(), fmt="csv")
    extract_audio(store, MEL, workers=0)
    with WriterLock(store.side, ["audio/mel"], "extract-audio"):  # a stage run in progress (this live process)
        with pytest.raises(LockHeld, match=r"array 'audio/mel' is being written by extract-audio"):
            remove_clips(store, [clip_ids[0]])
    store = featstore.open_store(store.url)
    assert not store.removed.any() and clip_ids[0] in store.ledger("audio/mel").entries


def test_a_clip_removed_through_another_store_object_is_not_recomputed_nor_read(dataset, tmp_path):
    """The stage reads the clips table again once it holds its lock: a clip another process (here,
    another Store object) removed meanwhile is neither recomputed nor served by the loader."""
    clip_ids, _, manifest = dataset
    first = _store(tmp_path)
    ingest(first, manifest(), fmt="csv")
    assert extract_audio(first, MEL, workers=0, progress=False).done == N_CLIPS
    remove_clips(featstore.open_store(first.url), [clip_ids[1]])
    again = extract_audio(first, MEL, workers=0, progress=False)
    assert (again.done, again.skipped) == (0, N_CLIPS - 1)
    fresh = featstore.open_store(first.url)
    assert clip_ids[1] not in fresh.ledger("audio/mel").entries
    assert not fresh.done_in("audio/mel")[1] and fresh.done_in("audio/mel").sum() == N_CLIPS - 1
    served = training_batches(first, "audio/mel", split=None, batch_size=2, deltas=False)
    assert len(served.pairs) == (N_CLIPS - 1) * first.n_segments


def test_a_store_made_again_at_the_same_path_with_another_layout_is_written_right(dataset, tmp_path):
    """Runs in one process over a store deleted and made again at the same URL with shards: the
    worker's cached handles are per run, so the new layout is written (and verifies)."""
    _, _, manifest = dataset
    url = str(tmp_path / "again.zarr")
    for shard_mb in (0.0, 1.0):
        shutil.rmtree(url, ignore_errors=True)
        store = featstore.init_store(url, clip_duration_s=CLIP_S, shard_mb=shard_mb)
        ingest(store, manifest(), fmt="csv")
        assert extract_audio(store, MEL, workers=0, progress=False).done == N_CLIPS
        reopened = featstore.open_store(url)
        assert verify_store(reopened).ok, shard_mb
        assert np.isfinite(_mel(reopened, reopened.clips["clip_id"].iloc[-1])).all()
