"""Same command, same seed: identical weights and numbers, twice on one machine (bitwise)."""

from __future__ import annotations

from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.fuse import FuseConfig, fuse
from featstore.pipelines.ingest import ingest
from featstore.pipelines.train_backbone import TrainConfig, train_backbone

import featstore
from featstore.registry import load_keras, model_file
from featstore.runs import load_run
from tests.conftest import CLIP_S
from tests.test_fuse import make_embedding_store


def _weights(store, entry):
    return load_keras(model_file(store, "aud-mel", entry["fingerprint"])).get_weights()


def test_training_a_backbone_twice_gives_bitwise_equal_weights(tmp_path, demo_root):
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        store = featstore.init_store(str(tmp_path / f"s{i}.zarr"), clip_duration_s=CLIP_S)
        ingest(store, demo_root)
        extract_audio(store, workers=0, features=("mel",))
        config = TrainConfig(model="aud-mel", input_array="audio/mel", window_s=1.0, widths=(4, 8), head_units=16, epochs=1, batch_size=8, mixup_alpha=0.4, seed=seed)
        entry = train_backbone(store, config)
        runs.append((_weights(store, entry), entry["config"]["metrics"]))
    (first, m1), (second, m2), (other, _) = runs
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes(), "same seed, same weights, bit for bit"
    assert m1 == m2
    assert any(a.tobytes() != b.tobytes() for a, b in zip(first, other)), "another seed trains another model"


def test_fusing_twice_gives_bitwise_equal_predictions(tmp_path):
    store = make_embedding_store(tmp_path / "e.zarr", clips_per_class=6)
    probs, histories = [], []
    for name in ("a", "b"):
        fuse(store, FuseConfig(method="f4", name=name, epochs=3, seed=0))
        probs.append(store.array(f"predictions/{name}")[:])
        # every metric of every epoch; wall-clock seconds are the one thing allowed to differ
        histories.append({k: v for k, v in load_run(store, name)["history"].items() if k != "seconds"})
    assert probs[0].tobytes() == probs[1].tobytes()
    assert histories[0] == histories[1]
