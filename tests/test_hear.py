"""HEAR-API and plain torch embedding models on raw audio: embedded, cached, fused, exported in a
system and predicted with (tiny models written in the tests: tests/hear_tiny.py,
tests/torch_tiny.py; nothing downloaded)."""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import soxr

import featstore
from featstore.errors import ConfigError, NotFoundError
from featstore.models.hear import model_fingerprint
from featstore.packed import packed_segment_embeddings
from featstore.pipelines.embed import embed
from featstore.pipelines.fuse import FuseConfig, fuse
from featstore.pipelines.ingest import ingest
from featstore.pipelines.predict import predict, predict_file
from featstore.pipelines.stages import system_from_run
from featstore.registry import model_entry
from featstore.runs import load_run
from featstore.system import System
from tests.conftest import CLIP_S, run_cli

torch = pytest.importorskip("torch")  # the optional torch extra; the tiny models below need it
from tests import hear_tiny, torch_tiny

HEAR = "tests.hear_tiny"
TORCH = "tests.torch_tiny.tiny_net"


def _segments(store, clip_id: str, sr: int) -> np.ndarray:
    """Reference input: the clip's source file decoded with soundfile, resampled whole, mono, cut
    into the store's segments (sound, samples)."""
    row = store.clips.set_index("clip_id").loc[clip_id]
    samples, source_sr = soundfile.read(f"{store.dataset_root}/{row['audio_path']}", dtype="float32", always_2d=True)
    mono = soxr.resample(samples, source_sr, sr, quality="HQ").mean(axis=1)
    n = round(store.segment_s * sr)
    mono = np.pad(mono, (0, max(0, store.n_segments * n - len(mono))))
    return mono[: store.n_segments * n].reshape(store.n_segments, n).astype(np.float32)


def test_hear_model_embedded_cached_refreshed_and_fused(demo_store, tmp_path):
    store = demo_store
    report, note = embed(store, f"hear:{HEAR}", workers=0)
    assert report.done == 20 and report.failed == 0 and note is None
    scene, timestamp = store.array(f"embeddings/{HEAR}/scene"), store.array(f"embeddings/{HEAR}/timestamp")
    assert scene.shape == (20, store.n_segments, 12) and timestamp.shape == (20, store.n_segments, 6)
    # against the HEAR API called directly on the clip's audio
    clip_id = str(store.clips["clip_id"].iloc[3])
    audio = torch.from_numpy(_segments(store, clip_id, hear_tiny.SAMPLE_RATE))
    model = hear_tiny.load_model()
    with torch.no_grad():
        ref_scene, (ref_timestamp, _) = hear_tiny.get_scene_embeddings(audio, model), hear_tiny.get_timestamp_embeddings(audio, model)
    np.testing.assert_allclose(scene[3], ref_scene.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(timestamp[3], ref_timestamp.numpy().mean(axis=1), rtol=1e-3, atol=1e-3)

    before = timestamp[3]
    again, _ = embed(store, f"hear:{HEAR}", workers=0)
    assert again.done == 0 and again.skipped == 20, "a second run is a cache hit"

    other = hear_tiny.TinyHear()
    with torch.no_grad():
        other.proj.weight.mul_(2.0)
    weights = str(tmp_path / "tiny.pt")
    torch.save(other.state_dict(), weights)
    refreshed, note = embed(store, f"hear:{HEAR}", weights_file=weights, workers=0)
    assert refreshed.done == 20 and "another model" in note
    assert not np.allclose(store.array(f"embeddings/{HEAR}/timestamp")[3], before)
    assert store.provenance(f"embeddings/{HEAR}/scene").modality == "audio"

    record = fuse(store, FuseConfig(method="mlp", models=(HEAR,), layer="scene", widths=(8,), epochs=2, batch_size=16))
    assert record["models"] == [HEAR] and len(record["history"]["loss"]) == 2
    assert load_run(store, record["name"])["layer"] == "scene"
    assert store.array(f"predictions/{record['name']}").shape == (20, store.n_segments, 10)


def test_torch_factory_embedded_and_cached_from_the_command_line(demo_store):
    store = demo_store
    proc = run_cli("embed", store.url, "--model", "torch:tests.torch_tiny:tiny_net", "--json", check=True)
    assert '"done": 20' in proc.stdout
    embedding, frames = store.array(f"embeddings/{TORCH}/embedding"), store.array(f"embeddings/{TORCH}/frames")
    assert embedding.shape == (20, store.n_segments, 4) and frames.shape == (20, store.n_segments, 3)
    net = torch_tiny.tiny_net().eval()
    with torch.no_grad():
        out = net(torch.from_numpy(_segments(store, str(store.clips["clip_id"].iloc[5]), net.sample_rate)))
    np.testing.assert_allclose(embedding[5], out["embedding"].numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(frames[5], out["frames"].numpy().mean(axis=2), rtol=1e-3, atol=1e-4)
    again = run_cli("embed", store.url, "--model", "torch:tests.torch_tiny:tiny_net", check=True)
    assert "0 done, 20 already done" in again.stdout
    bad = run_cli("embed", store.url, "--model", "torch:tests.torch_tiny")
    assert bad.returncode == 1 and "torch:PKG.MODULE:FACTORY" in bad.stderr and "Traceback" not in bad.stderr


def test_featstore_does_not_import_torch():
    code = "import sys, featstore, featstore.pipelines.embed, featstore.models.hear; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


#: tests/hear_tiny.py as an installed package with a version (a HEAR module on sys.path).
VERSIONED = """from tests.hear_tiny import SAMPLE_RATE, TinyHear, get_scene_embeddings, get_timestamp_embeddings, load_model  # noqa: F401
__version__ = "{version}"
"""


@pytest.fixture
def hear_package(tmp_path, monkeypatch):
    """The module ``hear_versioned`` at version 1.0 on ``sys.path``; yields ``install(version)``,
    which replaces it by another version (as ``pip install -U`` would)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(site))

    def install(version: str) -> None:
        (site / "hear_versioned.py").write_text(VERSIONED.format(version=version))
        sys.modules.pop("hear_versioned", None)
        importlib.invalidate_caches()

    install("1.0")
    yield install
    sys.modules.pop("hear_versioned", None)


def _fresh_store(path, root) -> featstore.Store:
    store = featstore.init_store(str(path), clip_duration_s=CLIP_S)
    ingest(store, root)
    return store


def _head_by_hand(system: System, embeddings: np.ndarray) -> np.ndarray:
    """The system's fusion head on (segment, dim) embeddings of one model: (segment, class)."""
    head = system.load_keras(system.decision["head"])
    return np.asarray(head(embeddings[:, None, :].astype(np.float32), training=False))


def test_hear_system_carries_its_weights_predicts_a_new_store_and_refuses_another_version(demo_store, demo_root, hear_package, tmp_path):
    store, model = demo_store, "hear_versioned"
    net = hear_tiny.TinyHear()
    with torch.no_grad():
        net.proj.weight.mul_(-1.5)
    weights = str(tmp_path / "tiny.pt")
    torch.save(net.state_dict(), weights)
    with open(weights, "rb") as f:
        weight_bytes = f.read()
    embed(store, f"hear:{model}", weights_file=weights, workers=0)
    run = fuse(store, FuseConfig(method="mlp", models=(model,), layer="scene", widths=(8,), epochs=1, batch_size=16))["name"]
    system_dir = system_from_run(store, run).export(str(tmp_path / "system"))
    os.remove(weights)  # the system carries its own copy

    system = System.load(system_dir)
    assert system.backbones[model] == {
        "kind": "hear", "spec": model, "version": "hear_versioned==1.0", "fingerprint": model_entry(store, model)["fingerprint"],
        "sample_rate": hear_tiny.SAMPLE_RATE, "layers": {"scene": 12, "timestamp": 6}, "used_layers": ["scene"],
        "input": "source audio", "file": f"backbones/{model}.pt",
    }
    assert system.inputs == {}  # nothing to extract: the model reads the source audio
    with open(os.path.join(system_dir, "SHA256SUMS")) as f:
        assert f"{hashlib.sha256(weight_bytes).hexdigest()}  backbones/{model}.pt\n" in f.read()

    fresh = _fresh_store(tmp_path / "fresh.zarr", demo_root)
    report = predict(fresh, system, workers=0)
    assert report.done == 20 and report.ok
    probs, rows = packed_segment_embeddings(fresh, f"predictions/{run}")
    assert list(rows) == list(range(20))
    for row in (2, 13):  # the HEAR API with those weights on the clip's audio, then the head, by hand
        audio = torch.from_numpy(_segments(fresh, str(fresh.clips["clip_id"].iloc[row]), hear_tiny.SAMPLE_RATE))
        with torch.no_grad():
            scene = hear_tiny.get_scene_embeddings(audio, net.eval()).numpy()
        np.testing.assert_allclose(fresh.array(f"embeddings/{model}/scene")[row], scene, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(probs[row], _head_by_hand(system, scene), atol=1e-4)
    trained, trained_rows = packed_segment_embeddings(store, f"predictions/{run}")
    np.testing.assert_allclose(probs, trained[np.searchsorted(trained_rows, rows)], atol=1e-5)

    again = predict(fresh, system, workers=0)
    assert again.done == 0 and again.skipped == 20
    cached, _ = embed(fresh, model, workers=0)  # the registered copy is the model the embeddings were made with
    assert cached.done == 0 and cached.skipped == 20

    other = io.BytesIO()  # other weights, SHA256SUMS regenerated by export: the manifest's fingerprint refuses them
    torch.save(hear_tiny.TinyHear().state_dict(), other)
    swapped = System(system.manifest, {**system.files, f"backbones/{model}.pt": other.getvalue()}).export(str(tmp_path / "swapped"))
    with pytest.raises(ConfigError, match="its weights are not the ones it was made with"):
        System.load(swapped)

    hear_package("1.1.0")  # the package upgraded: the system and the run are refused, naming both versions
    with pytest.raises(ConfigError) as refused:
        System.load(system_dir)
    message = str(refused.value)
    installed = model_fingerprint("hear", model, None)
    assert "hear_versioned==1.0" in message and "hear_versioned==1.1.0" in message
    assert system.backbones[model]["fingerprint"][:12] in message and "with hear_versioned==1.0 installed" in message
    with pytest.raises(NotFoundError, match="tiny.pt of model 'hear_versioned' is missing"):
        system_from_run(store, run)
    with open(weights, "wb") as f:
        f.write(weight_bytes)
    with pytest.raises(ConfigError, match="embed with --model hear:hear_versioned again"):
        system_from_run(store, run)
    assert installed != system.backbones[model]["fingerprint"]


def test_torch_factory_system_predicts_a_new_store_and_a_file(demo_store, demo_root, tmp_path):
    store, model = demo_store, TORCH
    embed(store, "torch:tests.torch_tiny:tiny_net", workers=0)
    run = fuse(store, FuseConfig(method="mlp", models=(model,), layer="embedding", widths=(8,), epochs=1, batch_size=16))["name"]
    system = System.load(system_from_run(store, run).export(str(tmp_path / "system")))
    spec = system.backbones[model]
    assert (spec["kind"], spec["spec"], spec["sample_rate"], spec["used_layers"]) == ("torch", "tests.torch_tiny:tiny_net", 8_000, ["embedding"])
    assert "file" not in spec and spec["version"] == model_entry(store, model)["version"]
    assert [f for f in system.files if f.startswith("backbones/")] == []

    fresh = _fresh_store(tmp_path / "fresh.zarr", demo_root)
    assert predict(fresh, system, workers=0).done == 20
    probs, rows = packed_segment_embeddings(fresh, f"predictions/{run}")
    net = torch_tiny.tiny_net().eval()
    for row in (0, 19):
        with torch.no_grad():
            out = net(torch.from_numpy(_segments(fresh, str(fresh.clips["clip_id"].iloc[row]), net.sample_rate)))["embedding"].numpy()
        np.testing.assert_allclose(probs[row], _head_by_hand(system, out), atol=1e-4)
    again = predict(fresh, system, workers=0)
    assert again.done == 0 and again.skipped == 20
    clip = fresh.clips.iloc[0]  # one file, as predict --file classifies it: the clip's own predictions
    result = predict_file(system, f"{demo_root}/{clip['video_path']}", f"{demo_root}/{clip['audio_path']}")
    np.testing.assert_allclose(result["per_segment"], probs[0], atol=1e-5)
