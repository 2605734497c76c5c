"""Batched inference in `embed`: the units of many clips per compiled call, equal to the per-clip
eager pass; a clip whose input is broken fails alone."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pytest

from featstore.models import build_model
from featstore.pipelines import embed as embed_mod
from featstore.pipelines.embed import EmbedConfig, compute_embed, embed
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.stage import ClipTask
from tests.conftest import run_cli


def _with_mel_model(store, tmp_path):
    assert extract_audio(store, workers=0, features=("mel",)).done == 20
    keras.utils.set_random_seed(3)
    path = str(tmp_path / "aud-mel.keras")
    build_model("aud-mel", input_shape=(128, 72, 6), widths=(4, 8), head_units=16).save(path)
    return store, path


@pytest.fixture
def mel_model(demo_store, tmp_path):
    return _with_mel_model(demo_store, tmp_path)


@pytest.fixture
def flat_mel_model(flat_demo_store, tmp_path):
    """The same on a store of one object per clip, whose clip 5's chunk file a test damages."""
    return _with_mel_model(flat_demo_store, tmp_path)


def _per_clip_reference(store, stage) -> dict[str, np.ndarray]:
    """Every output of every clip from the eager per-clip compute, stacked (clip, unit, dim)."""
    names = tuple(spec.name for spec in stage.outputs)
    rows = store.clips.to_dict("records")
    results = [compute_embed(ClipTask(i, row["clip_id"], row, store.dataset_root, store.url), stage.params, names) for i, row in enumerate(rows)]
    return {spec.path: np.stack([r.arrays[spec.name] for r in results]) for spec in stage.outputs}


@pytest.mark.slow  # a full embed or a server: over the fast tier's budget
@pytest.mark.parametrize("batch_units", [256, 4, 2])
def test_batched_embed_equals_the_per_clip_pass(mel_model, batch_units):
    """256: all 60 units of 20 clips in one call; 4: one clip (3 units) per call, the next clip
    carried over; 2: a clip wider than a call, forwarded in slices."""
    store, path = mel_model
    report, _ = embed(store, "aud-mel", model_file_path=path, batch_units=batch_units)
    assert report.done == 20 and report.failed == 0
    stage = EmbedConfig(model="aud-mel", layers=("fc1024", "fc10")).build(store)
    assert stage.compute_batch is not None and stage.compute_batch.keywords == {"batch_units": 256}
    for array_path, expected in _per_clip_reference(store, stage).items():
        np.testing.assert_allclose(store.array(array_path)[:], expected, rtol=1e-4, atol=1e-5, err_msg=array_path)


def test_batches_hold_at_most_batch_units_and_one_compiled_graph(mel_model, monkeypatch):
    store, path = mel_model
    embed(store, "aud-mel", model_file_path=path, clips=list(store.clips.clip_id[:1]))  # registers; loads the model
    sizes = []
    real_forward_batch = embed_mod._forward_batch

    def spy(forward, batch, names):
        sizes.append(sum(len(x[0]) for _, x in batch if not isinstance(x, Exception)))
        yield from real_forward_batch(forward, batch, names)

    monkeypatch.setattr(embed_mod, "_forward_batch", spy)
    report, _ = embed(store, "aud-mel", batch_units=7)
    assert report.done == 19
    assert sizes == [6, 6, 6, 6, 6, 6, 6, 6, 6, 3], "whole clips of 3 units, at most 7 units a batch"
    (forward,) = [f for (_, units), f in embed_mod._FORWARDS.items() if units == 7]
    assert forward.graph.experimental_get_tracing_count() <= 2, "a compiled graph, not retraced per batch size"


def test_a_clips_outputs_do_not_depend_on_the_clips_beside_it(mel_model):
    """The units of one clip forwarded alone, or in any slice of a longer run, give the same bits
    as in the full call: every compiled call holds exactly ``batch_units`` units (CPU kernels may
    round differently for another batch size)."""
    store, path = mel_model
    embed(store, "aud-mel", model_file_path=path, clips=list(store.clips.clip_id[:1]))  # registers; loads the model
    stage = EmbedConfig(model="aud-mel", layers=("fc1024",), batch_units=16).build(store)
    embedder = embed_mod._embedder(embed_mod.model_file(store, "aud-mel", stage.params["model_fingerprint"]), stage.params["model_fingerprint"], ("fc1024", "softmax"))
    forward = embed_mod.forward_function(embedder, 16)
    x = np.concatenate([embed_mod.clip_inputs(store, stage.params, cid, embedder)[0] for cid in store.clips.clip_id[:12]])  # 36 units
    full = forward([x])
    for start, stop in ((0, 3), (5, 6), (10, 36), (16, 32)):
        part = forward([x[start:stop]])
        for got, whole in zip(part, full):
            assert got.shape == whole[start:stop].shape
            np.testing.assert_array_equal(got, whole[start:stop])


def test_a_clip_with_a_broken_input_fails_alone(flat_mel_model):
    store, path = flat_mel_model
    bad = store.clips.clip_id[5]
    chunks = sorted(glob.glob(os.path.join(store.url, "audio", "mel", "c", "5", "**", "*"), recursive=True))
    with open([c for c in chunks if os.path.isfile(c)][0], "wb") as f:
        f.write(b"not a zstd frame")
    report, _ = embed(store, "aud-mel", model_file_path=path)
    assert report.done == 19 and report.failed == 1
    assert report.failures[0]["clip_id"] == bad
    assert bad not in store.ledger("embeddings/aud-mel/fc10").entries
    assert len(store.ledger("predictions/aud-mel").entries) == 19
    assert set(store.failures["clip_id"]) == {bad}


def test_cli_batch_units_option_is_checked(mel_model):
    store, path = mel_model
    proc = run_cli("embed", store.url, "--model", "aud-mel", "--model-file", path, "--batch-units", "0")
    assert proc.returncode == 2 and "--batch-units" in proc.stderr
