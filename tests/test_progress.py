"""Training you can watch: epoch lines, CSV history, TensorBoard event files, TensorFlow's notices."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest

import featstore
from featstore import tflog
from featstore.pipelines.embed import embed
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.ingest import ingest
from featstore.progress import TrainingProgress
from tests.conftest import CLIP_S, run_cli

EPOCH_LINE = r"^featstore: {name} epoch {k}/2: loss [\d.]+, (accuracy [\d.]+, )?val_loss [\d.]+, val_accuracy [\d.]+ \([\d.]+ s(, ETA \d+ s)?\)$"


@pytest.fixture(scope="module")
def mel_store(tmp_path_factory, demo_root):
    store = featstore.init_store(str(tmp_path_factory.mktemp("progress") / "store.zarr"), clip_duration_s=CLIP_S)
    ingest(store, demo_root)
    assert extract_audio(store, workers=0, features=("mel",)).done == 20
    return store


def _history(store, name: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(store.side.read(name)))


def _epoch_lines(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"featstore: {name} epoch ")]


def test_progress_lines_csv_and_event_file(demo_store):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    progress = TrainingProgress("m", 3, store=demo_store, kind="runs", bar=False)
    lines = []
    for k in range(3):
        progress.begin_epoch()
        row = progress.end_epoch({"loss": 1.0 / (k + 1), "val_loss": 2.0 - k / 10, "val_categorical_accuracy": 0.25 * k})
        lines.append(progress.line(row))
    progress.close()
    assert lines[0].startswith("m epoch 1/3: loss 1.0000, val_loss 2.0000, val_accuracy 0.000 (") and "ETA" in lines[0]
    assert "ETA" not in lines[-1]
    history = _history(demo_store, "runs/m.history.csv")
    assert list(history.columns) == ["epoch", "loss", "val_loss", "val_accuracy", "seconds"]
    np.testing.assert_allclose(history["loss"], [1.0, 0.5, 1 / 3])
    assert history["epoch"].tolist() == [1, 2, 3]
    # the event file read back with TensorFlow's own record reader and protocol buffers
    scalars = {}
    for record in tf.data.TFRecordDataset(progress.events.path):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert scalars["val_accuracy"] == [(1, 0.0), (2, 0.25), (3, 0.5)]
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]


def test_tensorflow_notices_are_filtered_and_other_lines_kept():
    captured = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\n"
                b"E0000 util.cc:131] oneDNN supports DT_HALF only on platforms with AVX-512. Falling back to ...\n"
                b"E0000 something real went wrong\n")
    assert tflog._filtered(captured) == b"E0000 something real went wrong\n"


def test_each_training_command_prints_one_line_per_epoch_and_writes_the_csv(mel_store):
    url = mel_store.url
    tiny = ("--epochs", "2", "--batch-size", "8")
    proc = run_cli("train-backbone", url, "--model", "aud-mel", "--widths", "4,8", "--head-units", "8", *tiny, check=True)
    lines = _epoch_lines(proc.stderr, "aud-mel")
    assert len(lines) == 2 and all(re.match(EPOCH_LINE.format(name="aud-mel", k=k + 1), line) for k, line in enumerate(lines)), proc.stderr
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    history = _history(mel_store, "models/aud-mel.history.csv")
    assert history["epoch"].tolist() == [1, 2]
    entry = json.loads(mel_store.side.read("models.json"))["aud-mel"]
    np.testing.assert_allclose(entry["config"]["history"]["val_loss"], history["val_loss"])
    best = int(np.argmin(history["val_loss"])) + 1
    assert entry["config"]["metrics"]["best_epoch"] == best

    proc = run_cli("train-joint", url, "--name", "joint-a", "--widths", "8", "--head-units", "8", "--units-per-clip", "1", *tiny, "--quiet", check=True)
    assert _epoch_lines(proc.stderr, "joint-a") == [], "--quiet prints no epoch lines"
    assert _history(mel_store, "models/joint-a.history.csv")["epoch"].tolist() == [1, 2], "the history is written anyway"

    embed(mel_store, "aud-mel", workers=0)
    proc = run_cli("fuse", url, "--method", "mlp", "--models", "aud-mel", "--widths", "8", "--epochs", "2", check=True)
    lines = _epoch_lines(proc.stderr, "fuse-mlp-aud-mel")
    assert len(lines) == 2 and re.match(EPOCH_LINE.format(name="fuse-mlp-aud-mel", k=1).replace("val_loss", "val_log_loss"), lines[0]), proc.stderr
    history = _history(mel_store, "runs/fuse-mlp-aud-mel.history.csv")
    record = json.loads(mel_store.side.read("runs/fuse-mlp-aud-mel.json"))
    assert history["epoch"].tolist() == [1, 2]
    np.testing.assert_allclose(record["history"]["val_log_loss"], history["val_log_loss"])
    assert record["best_epoch"] == int(np.argmin(history["val_log_loss"])) + 1
