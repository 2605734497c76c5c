"""Phase I training from the store (CPU, tiny widths, 1-2 epochs)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from featstore.errors import ConfigError
from featstore.registry import load_keras, model_entry, model_file
from featstore.pipelines.embed import embed
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.train_backbone import TrainConfig, train_backbone
from featstore.splits import validation_split
from featstore.augment import mixup


def test_validation_split_keeps_locations_apart():
    clips = pd.DataFrame({
        "split": ["train"] * 12 + ["evaluate"] * 4,
        "identifier": [f"loc{i // 2}" for i in range(12)] + ["e1"] * 4,
    })
    train, val = validation_split(clips, fraction=0.25, seed=3)
    assert len(val) >= 3 and len(train) + len(val) == 12
    assert not set(clips.identifier[train]) & set(clips.identifier[val])
    assert set(clips.split[np.concatenate([train, val])]) == {"train"}, "evaluate is never used"


def test_mixup_labels_sum_to_one():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4, 5, 6)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    xm, ym = mixup(x, y, 0.4, rng)
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, rtol=1e-6)
    assert xm.shape == x.shape and (ym >= 0).all()
    assert not np.allclose(xm, x)
    assert mixup(x, y, 0.0, rng)[0] is x


def test_kl_loss_equals_numpy():
    rng = np.random.default_rng(1)
    y = rng.dirichlet(np.ones(10), size=8).astype(np.float32)
    p = rng.dirichlet(np.ones(10), size=8).astype(np.float32)
    ours = float(keras.losses.KLDivergence()(y, p))
    ref = float(np.mean(np.sum(y * np.log(y / p), axis=1)))
    assert abs(ours - ref) < 1e-5


def test_train_register_and_embed(demo_store):
    store = demo_store
    assert extract_audio(store, workers=0, features=("mel",)).done == 20
    config = TrainConfig(model="aud-mel", input_array="audio/mel", window_s=1.0, widths=(4, 8), head_units=16, epochs=2, batch_size=8)
    entry = train_backbone(store, config)
    assert entry["input"] == "audio/mel" and entry["fc1024_units"] == 16
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert entry["config"]["augment_on"] == ("device" if gpu else "host"), "auto: mixup on the GPU where there is one"
    metrics = entry["config"]["metrics"]
    assert 1 <= metrics["best_epoch"] <= 2 and np.isfinite(metrics["val_loss"])
    trained_on = json.loads(store.side.read("models/aud-mel.train_clips.json"))
    clips = store.clips.set_index("clip_id")
    assert set(clips.loc[trained_on, "split"]) == {"train"}
    assert entry["config"]["n_train_clips"] == len(trained_on) and entry["config"]["n_val_clips"] > 0
    model = load_keras(model_file(store, "aud-mel", entry["fingerprint"]))
    assert model.input_shape == (None, 128, 72, 2), "the static channels: the model derives the deltas"
    assert model.get_layer("deltas").output.shape == (None, 128, 72, 6)
    report, _ = embed(store, "aud-mel")
    assert report.done == 20
    assert model_entry(store, "aud-mel")["fingerprint"] == entry["fingerprint"]


def test_train_visual_backbone_on_a_subset_of_frames(demo_store):
    from featstore.pipelines.extract_frames import extract_frames
    from featstore.sources import Units

    store = demo_store
    assert extract_frames(store, workers=0, size=32, name="frames32").done == 20
    pairs = Units(store, "frames32/rgb", 1.0).index(np.array([0, 1]), units_per_clip=3)
    assert pairs.tolist() == [[0, 0], [0, 2], [0, 5], [1, 0], [1, 2], [1, 5]], "3 of 6 frames, evenly spaced"
    # the tiny ConvNeXt: training code is the same for either arch, and the paper's ConvNeXtTiny
    # (28M weights) alone made this the suite's slowest test; its build and forward pass are in test_embed
    config = TrainConfig(model="vis-conv", input_array="frames32/rgb", window_s=1.0, head_units=16, epochs=1, batch_size=16, units_per_clip=2,
                         extra={"arch": "tiny", "widths": [8, 16]})
    entry = train_backbone(store, config)
    assert entry["input"] == "frames32/rgb" and entry["input_shape"] == [32, 32, 3]
    assert entry["config"]["units_per_clip"] == 2
    assert load_keras(model_file(store, "vis-conv", entry["fingerprint"])).input_shape == (None, 32, 32, 3)


def test_a_model_fed_the_stored_dtype_trains_as_fed_float32(demo_store):
    """train-backbone feeds Keras float16 windows where the loader makes no new values (its
    model's input casts them): a model trained an epoch on them ends with the weights of the same
    model trained on the float32 batches, bit for bit."""
    from featstore.loader import training_batches
    from featstore.models import build_model
    from featstore.models.head import compile_for_training
    from featstore.seeding import seed_everything
    from featstore.tfdata import tf_dataset

    extract_audio(demo_store, workers=0, features=("mel",))  # resumes: nothing to do if an earlier test made it
    trained, initial = {}, None
    for widen in (True, False):
        batches = training_batches(demo_store, "audio/mel", deltas=False, batch_size=8, seed=1, widen=widen)
        dataset = tf_dataset(batches)
        assert dataset.element_spec[0].dtype.as_numpy_dtype == (np.float32 if widen else np.float16)
        seed_everything(0)
        model = build_model("aud-mel", input_shape=batches.units.example_shape, n_classes=len(demo_store.classes), head_units=8, widths=(4,),
                            frames_per_segment=batches.units.frames_per_segment, delta_width=batches.units.delta_width)
        compile_for_training(model, 1e-3)
        initial = initial or model.get_weights()
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
        trained[widen] = model.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(initial, trained[True])), "the epoch changed the weights"
    for a, b in zip(trained[True], trained[False]):
        np.testing.assert_array_equal(a, b)


def test_mixup_on_the_device_trains_as_mixup_on_the_host(demo_store):
    """augment_on="device": the loader serves float16 windows and the draws, DeviceAugmentTrainer
    mixes them in the training step; an epoch ends with the weights mixup on the host gives."""
    from featstore.loader import training_batches
    from featstore.models import build_model
    from featstore.models.device_augment import DeviceAugmentTrainer
    from featstore.models.head import compile_for_training
    from featstore.seeding import seed_everything
    from featstore.tfdata import tf_dataset

    extract_audio(demo_store, workers=0, features=("mel",))  # resumes: nothing to do if an earlier test made it
    trained, initial = {}, None
    for where in ("host", "device"):
        batches = training_batches(demo_store, "audio/mel", deltas=False, batch_size=8, seed=1, mixup_alpha=0.4, augment_on=where)
        seed_everything(0)
        model = build_model("aud-mel", input_shape=batches.units.example_shape, n_classes=len(demo_store.classes), head_units=8, widths=(4,),
                            frames_per_segment=batches.units.frames_per_segment, delta_width=batches.units.delta_width)
        trainer = DeviceAugmentTrainer(model) if where == "device" else model
        compile_for_training(trainer, 1e-3)
        initial = initial or model.get_weights()
        trainer.fit(tf_dataset(batches), epochs=1, shuffle=False, verbose=0)
        trained[where] = model.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(initial, trained["host"])), "the epoch changed the weights"
    for a, b in zip(trained["host"], trained["device"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_trainer_mixes_with_the_float32_weights_under_mixed_precision():
    """Under mixed_float16 the draws reach the mixing as float32 (not rounded to float16, away from
    the weights the labels were mixed with), and Keras' jit_compile="auto" leaves XLA off."""
    from featstore.models.device_augment import DeviceAugmentTrainer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 5, 2)).astype(np.float16)
    draws = {"mix_weight": rng.uniform(0.05, 0.95, 6).astype(np.float32), "mix_partner": rng.permutation(6).astype(np.int32)}
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((4, 5, 2))
        identity = keras.Model(inputs, keras.layers.Activation("linear", dtype="float32")(inputs))
        trainer = DeviceAugmentTrainer(identity)
        mixed = np.asarray(trainer((x, draws), training=True))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    lam = draws["mix_weight"][:, None, None, None]
    wide = x.astype(np.float32)
    np.testing.assert_allclose(mixed, lam * wide + (1 - lam) * wide[draws["mix_partner"]], rtol=1e-6, atol=1e-6)
    assert np.asarray(trainer(x)).dtype == np.float32 and not trainer.supports_jit


def test_train_backbone_augments_frames_on_the_device_and_saves_the_model_alone(demo_store):
    from featstore.pipelines.extract_frames import extract_frames

    extract_frames(demo_store, workers=0, size=32, name="frames32")  # resumes if an earlier test made it
    config = TrainConfig(model="vis-conv", input_array="frames32/rgb", head_units=16, epochs=2, batch_size=16, units_per_clip=2,
                         augment_on="device", extra={"arch": "tiny", "widths": [8, 16]})
    entry = train_backbone(demo_store, config)
    assert entry["config"]["augment_on"] == "device"
    model = load_keras(model_file(demo_store, "vis-conv", entry["fingerprint"]))
    assert model.input_shape == (None, 32, 32, 3), "saved without the trainer: it takes frames alone"
    frames = demo_store.frames(demo_store.clips.clip_id[0], group="frames32")[0][:4]
    probabilities = model.predict(frames, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    with pytest.raises(ConfigError, match="--augment-on must be one of auto, host, device"):
        TrainConfig(model="vis-conv", augment_on="gpu")


def test_augment_on_auto_is_the_host_where_the_device_has_nothing_to_apply(demo_store):
    """auto: the device only with a GPU and something to apply; never with the loader's deltas."""
    gpu = bool(tf.config.list_physical_devices("GPU"))

    def resolved(**options):
        return TrainConfig(**options).resolved(demo_store).augment_on

    assert resolved(model="aud-mel", mixup_alpha=0.0) == "host", "no mixup: nothing to apply to windows"
    assert resolved(model="vis-conv", mixup_alpha=0.0, augment=False) == "host", "no mixup, no crop: nothing to apply"
    assert resolved(model="aud-mel", deltas="loader") == "host", "the loader's deltas come after mixing"
    assert resolved(model="aud-mel") == ("device" if gpu else "host")
    assert resolved(model="vis-conv", mixup_alpha=0.0) == ("device" if gpu else "host"), "the crop and flip"
    assert resolved(model="aud-mel", mixup_alpha=0.0, augment_on="device") == "device", "asked for: kept"
    with pytest.raises(ConfigError, match="use --deltas model, or --augment-on host"):
        TrainConfig(model="aud-gam", deltas="loader", augment_on="device")
    assert TrainConfig(model="vis-conv", deltas="loader", augment_on="device").deltas == "loader", "frames have no deltas"


def _batch_norms(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for inner in getattr(layer, "layers", []):
        yield from _batch_norms(inner)


@pytest.mark.parametrize("name, shape", [("aud-mel", (16, 8, 6)), ("vis-inc", (75, 75, 3))])
def test_batch_norm_momentum_is_0_9(name, shape):
    from featstore.models import build_model

    model = build_model(name, input_shape=shape, widths=(4, 8)) if name.startswith("aud") else build_model(name, input_shape=shape)
    momenta = [bn.momentum for bn in _batch_norms(model)]
    assert len(momenta) > 3 and set(momenta) == {0.9}
