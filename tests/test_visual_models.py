"""The tiny visual backbones (featstore.models.visual, arch="tiny") used by the demo."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.errors import ConfigError


@pytest.mark.parametrize("name", ["vis-inc", "vis-conv"])
def test_tiny_backbones_are_small_distinct_and_load_in_safe_mode(tmp_path, name):
    from featstore.models import build_model
    from featstore.registry import load_keras

    model = build_model(name, input_shape=(32, 32, 3), head_units=16, arch="tiny", widths=(8, 16))
    n_weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert n_weights < 50_000, n_weights  # the paper's models have millions
    layer_names = {layer.name for layer in model.layers}
    assert ("stage1_dw" in layer_names) == (name == "vis-conv") and ("stage1_concat" in layer_names) == (name == "vis-inc")
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    probs = np.asarray(model(frames))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(load_keras(str(tmp_path / "m.keras"))(frames)), probs, rtol=1e-5, atol=1e-6)


def test_bad_visual_arch_is_a_config_error():
    from featstore.models import build_model

    with pytest.raises(ConfigError, match="visual arch"):
        build_model("vis-inc", input_shape=(32, 32, 3), arch="vgg14")
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_model("vis-conv", input_shape=(32, 32, 3), arch="tiny", weights_file="w.h5")


def test_train_backbone_builds_the_tiny_arch_from_config_extra(demo_store):
    from featstore.pipelines.extract_frames import extract_frames
    from featstore.pipelines.train_backbone import TrainConfig, train_backbone
    from featstore.registry import load_keras, model_file

    assert extract_frames(demo_store, workers=0, size=32).done == 20
    extra = {"arch": "tiny", "widths": [8, 16]}
    config = TrainConfig(model="vis-inc", input_array="frames/rgb", window_s=1.0, head_units=16, epochs=1, batch_size=16, units_per_clip=2, extra=extra)
    entry = train_backbone(demo_store, config)
    assert entry["config"]["extra"] == extra
    model = load_keras(model_file(demo_store, "vis-inc", entry["fingerprint"]))
    assert "stage1_concat" in {layer.name for layer in model.layers} and model.count_params() < 50_000
