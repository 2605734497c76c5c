"""Every command, given wrong input, fails with one line naming the thing (and how to fix it), a
non-zero exit status and no traceback; an unknown name lists what exists and the closest match.

Runs in-process (click's CliRunner) against a real store on disk: an empty one, and one with the
demo clips ingested."""

from __future__ import annotations

import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featstore
import featstore.hdf5
from featstore.cli.main import main
from featstore.pipelines.ingest import ingest
from tests.conftest import CLIP_S


@pytest.fixture(scope="module")
def stores(tmp_path_factory, demo_root) -> dict[str, str]:
    """{"EMPTY": an empty store, "S": the demo clips ingested, "MISSING": no store, "TMP": a folder,
    "DATA": the demo dataset, "PLAIN": a text file}."""
    work = tmp_path_factory.mktemp("cli-errors")
    empty = featstore.init_store(str(work / "empty.zarr"), clip_duration_s=CLIP_S)
    full = featstore.init_store(str(work / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(full, demo_root)
    with h5py.File(work / "bad.h5", "w") as f:
        f.create_dataset("clips/clip_id", data=np.array([b"a", b"b"]))
        f.create_dataset("audio/mel", data=np.zeros((1, 3), np.float32))  # a row for one of the two clips
    with h5py.File(work / "bad-json.h5", "w") as f:
        f.create_dataset("clips/clip_id", data=np.array([b"a"]))
        f.create_dataset("audio/mel", data=np.zeros((1, 3), np.float32)).attrs["featstore"] = "{not json"
    (work / "plain.txt").write_text("not a model, not a folder\n")
    return {"EMPTY": empty.url, "S": full.url, "MISSING": str(work / "missing.zarr"), "TMP": str(work), "DATA": demo_root,
            "PLAIN": str(work / "plain.txt")}


#: (arguments with placeholders, exit status, words the one line must hold)
CASES = [
    # unknown stores, files and folders
    ("info {MISSING}", 1, ["no featstore store", "featstore init"]),
    ("extract-audio {MISSING}", 1, ["no featstore store"]),
    ("ingest {EMPTY} {TMP}/no-such-dataset", 1, ["no-such-dataset"]),
    ("ingest {EMPTY} {TMP}/none.csv --format csv", 1, ["none.csv"]),
    ("import-h5 {EMPTY} {TMP}/missing.h5", 1, ["missing.h5", "no such file"]),
    ("import-h5 {EMPTY} {TMP}/bad.h5", 1, ["bad.h5", "audio/mel has 1 rows for the file's 2 clips"]),
    ("import-h5 {EMPTY} {TMP}/bad-json.h5", 1, ["bad-json.h5", "'featstore' is not valid JSON"]),
    ("predict {S} --system {TMP}/no-system", 1, ["no-system", "export-system"]),
    ("predict --system {TMP}/no-system --file {TMP}/none.mp4", 1, ["no-system"]),
    # unknown names: what exists and the closest match
    ("export-system {S} --run fuse-f4-ab --to {TMP}/sys", 1, ["no run 'fuse-f4-ab'"]),
    ("predict {S} --run nope", 1, ["no run 'nope'"]),
    ("embed {S} --model aud-mle", 1, ["aud-mle", "train-backbone"]),
    ("verify {S} --arrays audio/mle", 1, ["audio/mle"]),
    ("export {S} --to {TMP}/x.h5 --arrays audio/mle", 1, ["audio/mle"]),
    ("ensemble {S} --rule mean --inputs aud-mel,aud-gam", 1, ["no predictions of 'aud-mel'", "--inputs"]),
    ("ensemble {S} --rule mean --inputs aud-mel", 1, ["at least two --inputs"]),
    ("ensemble {S} --rule median --inputs a,b", 2, ["--rule", "median"]),
    ("ensemble {S} --rule mean --inputs a,b --split evaluation", 2, ["--split", "did you mean 'evaluate'"]),
    ("fuse {S} --method f9", 2, ["--method", "f9"]),
    ("fuse {S} --method f4 --modalities foo", 1, ["--modalities", "foo"]),
    ("fuse {S} --method f4 --modalities audio,video", 1, ["--modalities", "video"]),
    ("fuse {S} --method f4 --models nope", 1, ["nope", "featstore embed"]),
    ("fuse {S} --method concat --layer nope", 1, ["no nope embeddings"]),
    ("fuse {S} --method mlp --models aud-mel --layer nope", 1, ["no nope embeddings of aud-mel", "featstore embed"]),
    ("train-joint {S} --name j --visual-model nope --audio-input audio/mel", 1, ["audio/mel"]),
    ("fuse {S} --method f4 --split tset", 2, ["--split", "did you mean 'test'"]),
    ("fuse {S} --method f4 --name a/b", 2, ["--name", "'/'"]),
    ("predict {S} --run r --name ../evil", 2, ["--name", "../evil"]),
    ("predict {S} --run r --name a/b", 2, ["--name", "'/'"]),
    ("train-backbone {S} --model aud-mle", 2, ["--model", "did you mean 'aud-mel'"]),
    ("train-joint {S} --name j --encoder lstm", 2, ["--encoder", "lstm"]),
    ("extract-audio {S} --features mle", 1, ["--features", "did you mean 'mel'"]),
    ("extract-audio {S} --clips nosplit --workers 0", 1, ["--clips", "nosplit"]),
    ("remove-clips {S} --clips nope", 1, ["no clip 'nope' in the store"]),
    ("remove-clips {S} --clips ,", 1, ["--clips names no clip"]),
    ("extract-frames {S} --resize stretch", 2, ["--resize", "stretch"]),
    ("embed {S} --model keras:../x", 2, ["--model"]),
    ("embed {S} --model keras:ResNet50", 1, ["no array 'frames/rgb'", "run the stage that makes it"]),
    ("report {S} --out {TMP}/r --split nosplit", 2, ["--split", "nosplit"]),
    ("frobnicate {S}", 2, ["frobnicate"]),
    ("fuse {S} --metod f4", 2, ["--metod", "--method"]),
    # out-of-range numbers
    ("init {TMP}/a.zarr --segment-s nan", 1, ["--segment-s", "finite"]),
    ("init {TMP}/b.zarr --clip-duration-s inf", 1, ["--clip-duration-s", "finite"]),
    ("init {TMP}/c.zarr --segment-s 1e-9", 1, ["--segment-s", "0.01"]),
    ("fuse {S} --method f4 --batch-size 0", 1, ["--batch-size must be >= 1, got 0"]),
    ("fuse {S} --method f4 --epochs 0", 1, ["--epochs must be >= 1, got 0"]),
    ("fuse {S} --method f4 --epochs -1", 1, ["--epochs must be >= 1"]),
    ("fuse {S} --method f4 --lr nan", 1, ["--lr must be a finite number > 0, got nan"]),
    ("fuse {S} --method f4 --val-fraction 1.5", 1, ["--val-fraction must be > 0 and < 1, got 1.5"]),
    ("fuse {S} --method f4 --mixup-alpha -1", 1, ["--mixup-alpha must be >= 0"]),
    ("fuse {S} --method f4 --joint-mixup 2", 1, ["--joint-mixup must be >= 0 and <= 1"]),
    ("fuse {S} --method mlp --widths 0,4", 1, ["--widths must be >= 1, got 0"]),
    ("train-backbone {S} --model aud-mel --lr -1", 1, ["--lr must be a finite number > 0" if False else "--lr must be > 0"]),
    ("train-backbone {S} --model aud-mel --window-s 0", 1, ["--window-s must be > 0"]),
    ("train-backbone {S} --model aud-mel --widths a,b", 2, ["--widths", "int"]),
    ("train-joint {S} --name j --head-units 0", 1, ["--head-units must be >= 1"]),
    ("extract-frames {S} --size -5", 1, ["--size must be >= 1, got -5"]),
    ("extract-frames {S} --size 0", 1, ["--size must be >= 1, got 0"]),
    ("extract-frames {S} --fps 0", 1, ["--fps must be > 0"]),
    ("extract-audio {S} --sr 0", 1, ["--sr must be >= 1000, got 0"]),
    ("extract-audio {S} --n-bins 0", 1, ["--n-bins must be >= 1, got 0"]),
    ("extract-audio {S} --hop-ms nan", 1, ["--hop-ms must be a finite number > 0"]),
    ("extract-audio {S} --workers -1", 2, ["--workers", "-1"]),
    ("embed {S} --model aud-mel --workers -1", 2, ["--workers", "-1"]),
    ("verify {S} --workers -1", 2, ["--workers", "-1"]),
    ("predict {S} --run r --workers -1", 2, ["--workers", "-1"]),
    ("demo-data {TMP}/d --clips-per-class 0", 2, ["--clips-per-class", "0"]),
    ("demo-data {TMP}/d --duration-s 0", 2, ["--duration-s", "x>0"]),
    # a stage before the one it needs, options that contradict the store, paths of the wrong kind
    ("extract-audio {EMPTY} --workers 0", 1, ["no clips yet", "featstore ingest"]),
    ("ingest {EMPTY} {DATA} --fold 7", 1, ["fold7_train.csv", "check --fold"]),
    ("embed {S} --model aud-cqt", 1, ["no model registered as 'aud-cqt'", "featstore train-backbone STORE --model aud-cqt"]),
    ("embed {S} --model mine --model-file {PLAIN} --input audio/mel", 1, ["plain.txt", "not a Keras model"]),
    ("predict {S} --run r --submission {TMP}", 1, ["--submission", "a file path in an existing folder"]),
    ("init {PLAIN}", 1, ["File exists", "a file is in the way"]),
    ("train-backbone {S} --model aud-mel --deltas loader --augment-on device", 1, ["--deltas model", "--augment-on host"]),
]


@pytest.mark.parametrize("args, status, words", CASES, ids=[c[0].split(" {")[0] + ": " + c[0].split("} ", 1)[-1] for c in CASES])
def test_wrong_input_is_one_line(stores, args, status, words):
    argv = [a.format(**stores) for a in args.split()]
    result = CliRunner().invoke(main, argv)
    assert isinstance(result.exception, SystemExit), f"not a clean exit: {result.exception!r}"
    assert result.exit_code == status, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featstore: error: "), result.stderr
    assert "Traceback" not in result.output
    assert featstore.open_store(stores["S"]).array_paths() == [], "a refused command left an array behind"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def test_a_missing_tensorflow_names_the_package(stores, monkeypatch):
    """train-backbone and fuse where TensorFlow is not installed: one line saying what to install."""
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` now raises ModuleNotFoundError
    for argv in (["train-backbone", stores["S"], "--model", "aud-mel"],):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 1, (argv, result.exception)
        assert "needs tensorflow-cpu, which is not installed: pip install tensorflow-cpu" in result.stderr


def test_unknown_names_list_what_exists_and_the_closest(tmp_path):
    store = featstore.init_store(str(tmp_path / "x.zarr"), clip_duration_s=CLIP_S)
    with pytest.raises(featstore.NotFoundError, match="run the stage that makes it"):
        store.array("audio/mel")
    store.create_array("audio/mel", per_clip_shape=(2, 4, 3), dtype="float32", dims=("channel", "bin", "frame"), stage="test", params={})
    with pytest.raises(featstore.NotFoundError, match=r"no array 'audio/mle' \(there are: audio/mel; did you mean 'audio/mel'\?\)"):
        store.array("audio/mle")


def test_a_refused_import_leaves_the_store_as_it_was(tmp_path):
    """import-h5 checks the whole file first: too few rows, an oversized dataset or a bad attribute
    in the last dataset refuses the file before its clips or any array are written."""
    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ids = np.array([b"c1", b"c2"])
    cases = {
        "short.h5": lambda f: f.create_dataset("z/short", data=np.zeros((1, 3), np.float32)),
        "huge.h5": lambda f: f.create_dataset("z/huge", shape=(2, 100_000, 10_000), dtype="float64", chunks=(1, 100, 100)),
        "json.h5": lambda f: f.create_dataset("z/json", data=np.zeros((2, 3), np.float32)).attrs.create("featstore_done", "[c1"),
    }
    for name, last in cases.items():
        with h5py.File(tmp_path / name, "w") as f:
            f.create_dataset("clips/clip_id", data=ids)
            f.create_dataset("a/good", data=np.ones((2, 3), np.float32))
            last(f)
        with pytest.raises(featstore.IngestError, match=name):
            featstore.hdf5.import_h5(store, str(tmp_path / name))
        assert store.n_clips == 0 and store.array_paths() == [], name


def test_an_unreachable_scheduler_is_one_line_naming_the_fix(tmp_path, demo_root):
    """--scheduler at an address where nothing listens: dask's connect timeout (1 s here), then one
    line with the address and what to do, exit 1."""
    import dask.config
    import distributed  # noqa: F401 - its defaults loaded first: set() on an unloaded key leaves dask's config without them

    store = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(store, demo_root)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(main, ["extract-audio", store.url, "--features", "mel", "--scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no dask scheduler answers at tcp://127.0.0.1:9" in lines[0] and "leave out --scheduler" in lines[0], result.stderr
