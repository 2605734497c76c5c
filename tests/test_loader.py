"""The training read path (featstore.loader): exactly-once epochs, reshuffling, values equal to the
direct readers, store batches equal to in-memory batches, the tf.data adapter."""

from __future__ import annotations

import os

import numpy as np
import pytest

import featstore
from featstore.audio import add_deltas
from featstore.augment import augment_images, with_deltas
from featstore.loader import TrainingBatches, epoch_plan, training_batches
from featstore.sources import MemorySource
from featstore.tfdata import tf_dataset
from featstore.pipelines.extract_audio import extract_audio
from featstore.pipelines.extract_frames import extract_frames
from featstore.pipelines.ingest import ingest

from conftest import CLIP_S


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_root) -> featstore.Store:
    """The demo store (20 clips of 3 s) with MEL (float16, the default) and 32x32 frames."""
    s = featstore.init_store(str(tmp_path_factory.mktemp("loader") / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(s, demo_root)
    assert extract_audio(s, workers=0, features=("mel",), progress=False).done == 20
    assert extract_frames(s, workers=0, size=32, progress=False).done == 20
    return s


def _served_pairs(batches: TrainingBatches, epoch: int) -> np.ndarray:
    return np.concatenate([pairs for block in batches.plan(epoch) for pairs in block.batches])


def _direct_unit(store, path: str, row: int, unit: int) -> np.ndarray:
    """One example read through the public per-clip readers (the reference)."""
    clip_id = store.clips.clip_id[row]
    if path.endswith("/rgb"):
        return store.frames(clip_id)[0][unit].astype(np.float32)
    return store.audio("mel", clip_id, deltas=True)[..., 72 * unit : 72 * (unit + 1)].transpose(1, 2, 0)


@pytest.mark.parametrize("path", ["audio/mel", "frames/rgb"])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_serves_every_unit_once_with_the_values_of_the_direct_readers(store, path, workers):
    batches = training_batches(store, path, split="train", batch_size=4, block_clips=3, seed=5, workers=workers)
    train_rows = np.flatnonzero(store.clips.split.to_numpy() == "train")
    units = 3 if path.startswith("audio") else 6  # 3 one-second windows, or 6 frames per 3 s clip
    served = _served_pairs(batches, 0)
    assert sorted(map(tuple, served.tolist())) == [(r, u) for r in train_rows for u in range(units)]
    xs, ys = zip(*batches.epoch(0))
    assert all(len(x) == 4 for x in xs[:-1]), "only the epoch's last batch may be short"
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.dtype == np.float32 and x.shape[1:] == batches.units.example_shape
    for i in range(0, len(served), 7):
        row, unit = served[i]
        np.testing.assert_allclose(x[i], _direct_unit(store, path, row, unit), atol=1e-5)
        assert y[i].argmax() == store.classes.index(store.clips.label[row]) and y[i].sum() == 1
    assert batches.source.cache == {}, "every clip is dropped from the shuffle buffer by the end of the epoch"


def test_epochs_reshuffle_and_a_seed_repeats(store):
    def make(seed):
        return training_batches(store, "audio/mel", split="train", batch_size=4, block_clips=3, seed=seed)

    first, again, other = make(1), make(1), make(2)
    assert not np.array_equal(_served_pairs(first, 0), _served_pairs(first, 1)), "two epochs, two orders"
    assert np.array_equal(_served_pairs(first, 1), _served_pairs(again, 1)), "same seed, same order"
    assert not np.array_equal(_served_pairs(first, 0), _served_pairs(other, 0))
    x1, _ = next(iter(first))  # iterating the object serves epoch 0, then 1
    x1b, _ = next(iter(first))
    np.testing.assert_array_equal(x1, next(first.epoch(0))[0])
    np.testing.assert_array_equal(x1b, next(first.epoch(1))[0])
    unshuffled = training_batches(store, "audio/mel", split="train", batch_size=4, shuffle=False)
    pairs = _served_pairs(unshuffled, 3)
    assert np.array_equal(pairs, np.array(sorted(map(tuple, pairs.tolist()))))


def test_runs_of_neighbouring_clips_are_shuffled_whole():
    """``run_clips``: the epoch's order is of runs of neighbouring rows, each run whole and in row
    order, still every unit once, still reshuffled per seed; ``run_clips=1`` is the clip shuffle."""
    rows = np.array([0, 1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16])  # the selected rows, with gaps
    pairs = np.stack(np.meshgrid(rows, np.arange(5), indexing="ij"), -1).reshape(-1, 2)

    def plan(seed, run_clips):
        return epoch_plan(pairs, batch_size=10, block_clips=4, rng=np.random.default_rng(seed), run_clips=run_clips)

    blocks = plan(0, 4)
    order = np.concatenate([block.rows for block in blocks])
    runs = [tuple(order[i : i + 4]) for i in range(0, len(order), 4)]
    assert sorted(runs) == [tuple(rows[i : i + 4]) for i in range(0, len(rows), 4)], "whole runs of 4 selected rows"
    assert [tuple(block.rows) for block in blocks] == runs, "a block of 4 clips is one run"
    served = np.concatenate([b for block in blocks for b in block.batches])
    assert sorted(map(tuple, served.tolist())) == sorted(map(tuple, pairs.tolist()))
    assert not np.array_equal(order, np.concatenate([block.rows for block in plan(1, 4)]))
    one = [block.rows for block in plan(0, 1)]
    default = [block.rows for block in epoch_plan(pairs, batch_size=10, block_clips=4, rng=np.random.default_rng(0))]
    assert all(np.array_equal(a, b) for a, b in zip(one, default)) and len(one) == len(default)


def test_a_block_holds_at_most_its_clips_and_the_carried_leftovers(store):
    batches = training_batches(store, "frames/rgb", split="train", batch_size=4, block_clips=3, seed=0)
    biggest = 0
    for _ in batches.epoch(0):
        biggest = max(biggest, len(batches.source.cache))
    assert 3 <= biggest <= 3 + 3, "3 clips read per block, plus at most 3 clips' leftover frames (< one batch)"
    assert batches.source.bytes_decoded == 10 * store.array("frames/rgb")[0].nbytes, "each clip decompressed once"
    stopped = batches.epoch(1)
    next(stopped)
    stopped.close()  # a consumer that stops early leaves nothing behind
    assert batches.source.cache == {}


@pytest.mark.parametrize("path", ["audio/mel", "frames/rgb"])
def test_units_of_rows_held_by_two_loads_are_served_and_slabs_are_reused(store, path):
    """A block's clips are decoded into one buffer (a slab) and gathered from it; a batch whose
    rows two loads hold (a clip in two blocks held at once) still gets its units, and a slab is
    reused once none of its clips is held."""
    from featstore.sources import StoreSource, Units

    units = Units(store, path, deltas=False)
    source, memory = StoreSource(store, units), MemorySource(store.array(path)[:], units)
    source.load(np.array([0, 1, 2]))
    source.load(np.array([2, 3]))  # row 2 is held already: only row 3 is read, into a slab of its own
    assert source.bytes_decoded == 4 * store.array(path)[0].nbytes
    for pairs in (np.array([[1, 0], [0, 1], [2, 2]]), np.array([[3, 1], [2, 0], [0, 2]])):  # one slab, then two
        np.testing.assert_array_equal(source.take(pairs), memory.take(pairs))
    first = source.cache[0]
    source.release(np.array([0, 1]))  # row 2 keeps the first slab
    assert source.free == []
    source.release(np.array([2, 3]))
    assert source.cache == {} and len(source.free) == 2
    source.load(np.array([4, 5]))
    assert np.shares_memory(source.cache[4], first) or np.shares_memory(source.cache[5], first), "the bigger free slab was reused"
    np.testing.assert_array_equal(source.take(np.array([[5, 1], [4, 0]])), memory.take(np.array([[5, 1], [4, 0]])))


@pytest.mark.parametrize("path,deltas,window_s", [("audio/mel", False, None), ("audio/mel", False, 2.0), ("audio/mel", True, None),
                                                   ("frames/rgb", False, None)])
def test_units_are_gathered_as_cutting_each_one_out_by_hand(store, path, deltas, window_s):
    """Units.gather (a compiled loop for stereo windows) serves each unit exactly as slicing it out
    of its clip does: window u of a clip is its frames [u * width, (u + 1) * width), channels last
    (first with deltas); a frame is the clip's frame u. C-contiguous where it promises."""
    from featstore.sources import Units

    units = Units(store, path, window_s, deltas=deltas)
    values = store.array(path)[:]
    rng = np.random.default_rng(3)
    clips, picked = rng.integers(0, len(values), 17), rng.integers(0, units.count, 17)
    got = units.gather(values, clips, picked)
    if units.visual:
        expected = np.stack([values[c, u] for c, u in zip(clips, picked)])
    else:
        cut = [values[c, :, :, u * units.width : (u + 1) * units.width] for c, u in zip(clips, picked)]
        expected = np.stack(cut) if deltas else np.stack([np.moveaxis(w, 0, -1) for w in cut])
    assert got.dtype == values.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous or deltas


@pytest.mark.parametrize("path", ["audio/mel", "frames/rgb"])
def test_store_batches_equal_in_memory_batches_with_mixup_and_augmentation(store, path):
    """The benchmark's baseline serves the same batches; arrays written before the loader read unchanged."""
    options = dict(batch_size=5, block_clips=4, seed=3, mixup_alpha=0.4, augment=True)
    from_store = training_batches(store, path, split="train", workers=2, **options)
    memory = MemorySource(store.array(path)[:], from_store.units)
    in_memory = TrainingBatches(from_store.units, memory, store.label_indices(store.clips.label), len(store.classes), from_store.pairs, **options)
    for (xs, ys), (xm, ym) in zip(from_store.epoch(2), in_memory.epoch(2), strict=True):
        np.testing.assert_array_equal(xs, xm)
        np.testing.assert_array_equal(ys, ym)
        np.testing.assert_allclose(ys.sum(axis=1), 1, rtol=1e-6)
    assert (ys.max(axis=1) < 1).any(), "mixup mixed the labels"


@pytest.mark.parametrize(("path", "stored", "augment"), [("audio/mel", np.float16, False), ("frames/rgb", np.uint8, True)])
def test_unwidened_batches_are_the_stored_values_of_the_float32_ones(store, path, stored, augment):
    """widen=False serves the stored dtype (for a cast on the device): the same batches before the
    cast, through tf.data too; mixup or loader deltas with it are one ConfigError."""
    options = dict(split="train", batch_size=5, block_clips=4, seed=3, augment=augment, deltas=False, workers=2)
    narrow = training_batches(store, path, widen=False, **options)
    wide = training_batches(store, path, **options)
    assert narrow.x_dtype == stored and wide.x_dtype == np.float32
    served = 0
    for (xn, yn), (xw, yw) in zip(narrow.epoch(1), wide.epoch(1), strict=True):
        assert xn.dtype == stored and xn.flags.c_contiguous
        np.testing.assert_array_equal(xn.astype(np.float32), xw)
        np.testing.assert_array_equal(yn, yw)
        served += len(xn)
    assert served == len(narrow.pairs)
    (x, _), *_ = tf_dataset(narrow)
    assert x.dtype.as_numpy_dtype == stored
    with pytest.raises(featstore.ConfigError, match="widen=False"):
        training_batches(store, path, widen=False, **{**options, "mixup_alpha": 0.4})
    if path == "audio/mel":
        with pytest.raises(featstore.ConfigError, match="deltas=False"):
            training_batches(store, path, widen=False, **{**options, "deltas": True})


@pytest.mark.parametrize(("path", "tolerance"), [("audio/mel", 0.0), ("frames/rgb", 1.0)])
def test_draws_applied_on_the_device_give_the_host_batches(store, path, tolerance):
    """augment_on="device" serves the stored values, the mixed labels and the host's own draws:
    applied by the Keras ops, the host's batches (MEL bitwise; frames within one level of 255, the
    host's crops being rounded to uint8 before the mix), through tf.data as ((x, draws), y)."""
    from featstore.models.device_augment import device_augment

    options = dict(split="train", batch_size=5, block_clips=4, seed=3, mixup_alpha=0.4, augment=True, deltas=False, workers=2)
    device = training_batches(store, path, augment_on="device", **options)
    host = training_batches(store, path, **options)
    assert device.x_dtype == store.array(path).dtype
    worst, cropped, flipped, mixed = 0.0, False, False, False
    for ((x, draws), yd), (xh, yh) in zip(device.epoch(1), host.epoch(1), strict=True):
        assert x.dtype == device.x_dtype
        np.testing.assert_array_equal(yd, yh)
        worst = max(worst, float(np.abs(np.asarray(device_augment(x, draws)) - xh).max()))
        cropped |= "crop_box" in draws and bool((draws["crop_box"][:, 2] - draws["crop_box"][:, 0] < x.shape[2]).any())
        flipped |= "flip" in draws and bool(draws["flip"].any())
        mixed |= bool((yd.max(axis=1) < 1).any())
    assert worst <= tolerance
    assert (cropped and flipped) or path == "audio/mel", "some frames were cropped, some flipped"
    assert mixed, "mixup mixed the labels"
    (x, draws), y = next(iter(tf_dataset(device)))
    assert x.dtype.as_numpy_dtype == device.x_dtype and draws["mix_partner"].dtype.name == "int32"
    assert sorted(draws) == (["crop_box", "flip", "mix_partner", "mix_weight"] if path == "frames/rgb" else ["mix_partner", "mix_weight"])
    if path == "audio/mel":
        with pytest.raises(featstore.ConfigError, match="deltas=False"):
            training_batches(store, path, augment_on="device", **{**options, "deltas": True})
    with pytest.raises(featstore.ConfigError, match="augment_on must be one of host, device"):
        training_batches(store, path, augment_on="gpu", **options)


def test_a_paired_input_is_served_per_unit_and_mixed_with_the_labels_draws(store):
    """paired: a (row, unit) table served beside x, every unit once per epoch, mixed with the same
    coefficient and partner as the labels (recomputed from the batch's seed), through tf.data too."""
    from featstore.augment import mixup_draws

    units = training_batches(store, "audio/mel", split="train", deltas=False).units
    table = np.stack(np.meshgrid(np.arange(store.n_clips), np.arange(units.count), indexing="ij"), -1).astype(np.float32)
    options = dict(split="train", batch_size=5, block_clips=4, seed=3, deltas=False, workers=2, paired=lambda pairs: table[pairs[:, 0], pairs[:, 1]])
    plain = training_batches(store, "audio/mel", **options)
    served = np.concatenate([side for (x, side), _ in plain.epoch(0)])
    assert sorted(map(tuple, served.astype(int))) == sorted(map(tuple, plain.pairs))
    mixed = training_batches(store, "audio/mel", mixup_alpha=0.4, **options)
    for number, ((x, side), y) in enumerate(mixed.epoch(1)):
        pairs = [block.batches for block in mixed.plan(1)]
        pairs = [p for batches in pairs for p in batches][number]
        lam, perm = mixup_draws(len(pairs), 0.4, np.random.default_rng([3, 1, number]))
        own = table[pairs[:, 0], pairs[:, 1]]
        np.testing.assert_allclose(side, lam[:, None] * own + (1 - lam[:, None]) * own[perm], rtol=1e-6)
        onehot = np.eye(len(store.classes), dtype=np.float32)[store.label_indices(store.clips.label)[pairs[:, 0]]]
        np.testing.assert_allclose(y, lam[:, None] * onehot + (1 - lam[:, None]) * onehot[perm], rtol=1e-6)
    (x, side), _ = next(iter(tf_dataset(mixed)))
    assert tuple(side.shape[1:]) == (2,) and x.shape[1:] == units.example_shape
    with pytest.raises(featstore.ConfigError, match="paired input"):
        training_batches(store, "audio/mel", augment_on="device", **options)


def test_batch_deltas_equal_librosa_per_clip():
    spec = np.random.default_rng(0).normal(size=(4, 2, 16, 3 * 72)).astype(np.float32)
    batch = with_deltas(spec, 72, 9)
    last = with_deltas(spec, 72, 9, channels_last=True)
    for i in range(4):
        reference = add_deltas(spec[i], 72, 9)
        np.testing.assert_allclose(batch[i], reference, atol=1e-5)
        np.testing.assert_allclose(last[i], reference.transpose(1, 2, 0), atol=1e-5)
        np.testing.assert_array_equal(batch[i, :2], spec[i])


def test_augmentation_crops_and_flips_uint8_frames():
    frames = np.random.default_rng(1).integers(0, 256, size=(8, 24, 24, 3), dtype=np.uint8)
    flipped = augment_images(frames, np.random.default_rng(0), crop=False)
    assert all(np.array_equal(f, o) or np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, frames))
    assert any(not np.array_equal(f, o) for f, o in zip(flipped, frames))
    cropped = augment_images(frames, np.random.default_rng(0), flip=False)
    assert cropped.dtype == np.uint8 and cropped.shape == frames.shape
    assert not np.array_equal(cropped, frames)


def test_tf_dataset_serves_a_new_epoch_per_pass(store):
    batches = training_batches(store, "audio/mel", split="train", batch_size=8, block_clips=2, seed=0, workers=1)
    ds = tf_dataset(batches)
    assert int(ds.cardinality()) == 4, "30 windows in batches of 8"
    first = np.concatenate([x.numpy() for x, _ in ds])
    second = np.concatenate([x.numpy() for x, _ in ds])
    assert first.shape == (30, 128, 72, 6) and second.shape == first.shape
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, np.concatenate([x for x, _ in batches.epoch(0)]))


def test_unwritten_clip_is_refused_by_name(tmp_path, demo_root):
    s = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(s, demo_root)
    extract_audio(s, workers=0, features=("mel",), progress=False, dtype="float32")
    clip_id = s.clips.clip_id[0]
    extract_audio(s, workers=0, features=("gam",), progress=False, store_deltas=True)
    with pytest.raises(ValueError, match="static channels"):
        training_batches(s, "audio/gam")
    batches = training_batches(s, "audio/mel", split=None, batch_size=4)
    s.array("audio/mel")[0] = np.nan  # a clip lost after its done-mark (verify would catch it)
    with pytest.raises(ValueError, match=clip_id):
        list(batches.epoch(0))


def test_mixed_precision_training_builds_a_float16_model_and_restores_the_policy(store):
    import keras

    from featstore.pipelines.train_backbone import TrainConfig, train_backbone
    from featstore.registry import load_keras, model_file

    config = TrainConfig(model="aud-mel", input_array="audio/mel", window_s=1.0, widths=(4, 8), head_units=8, epochs=1,
                         batch_size=8, units_per_clip=1, mixed_precision=True)
    entry = train_backbone(store, config)
    assert keras.mixed_precision.global_policy().name == "float32", "the global policy is restored"
    model = load_keras(model_file(store, "aud-mel", entry["fingerprint"]))
    assert model.get_layer("stem_conv").dtype_policy.name == "mixed_float16"
    assert np.isfinite(entry["config"]["metrics"]["val_loss"])


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_mixup_equals_the_formula(dtype):
    """The compiled kernel against l x + (1 - l) x[p] in float64, with the same draws."""
    from featstore.augment import mixup

    x = (np.random.default_rng(0).random((6, 5, 7, 3)) * 200).astype(dtype)
    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    mixed, soft = mixup(x, y, 0.4, np.random.default_rng(9))
    draws = np.random.default_rng(9)
    lam = draws.beta(0.4, 0.4, size=6).astype(np.float32)
    perm = draws.permutation(6)
    w = lam.astype(np.float64).reshape(-1, 1, 1, 1)
    expected = w * x.astype(np.float64) + (1 - w) * x[perm].astype(np.float64)
    assert mixed.dtype == np.float32 and mixed.shape == x.shape
    np.testing.assert_allclose(mixed, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(soft, lam[:, None] * y + (1 - lam[:, None]) * y[perm], rtol=1e-6)
    assert not np.allclose(mixed, x), "it mixed"


def test_half_floats_widen_bitwise_as_numpy_does():
    """Every float16 bit pattern (zeros, subnormals, infinities, NaNs) widens to numpy's float32
    bits, from a strided batch as the store source gathers it; mixing float16 examples gives
    bitwise what mixing their float32 widening gives."""
    from featstore.augment import as_float32, mixup

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(16, 32, 8, 16)
    widened = as_float32(every)
    np.testing.assert_array_equal(widened.view(np.uint32), every.astype(np.float32).view(np.uint32))
    strided = np.moveaxis(np.random.default_rng(1).standard_normal((8, 2, 16, 9)).astype(np.float16), 1, -1)
    assert not strided.flags.c_contiguous
    assert as_float32(strided).flags.c_contiguous and widened.flags.c_contiguous
    np.testing.assert_array_equal(as_float32(strided), strided.astype(np.float32))
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1]]
    half, _ = mixup(strided, y, 0.4, np.random.default_rng(5))
    full, _ = mixup(strided.astype(np.float32), y, 0.4, np.random.default_rng(5))
    np.testing.assert_array_equal(half, full)
    contiguous, _ = mixup(np.ascontiguousarray(strided), y, 0.4, np.random.default_rng(5))  # its own loop order
    np.testing.assert_array_equal(contiguous, full)
    plain = np.ones((2, 3), np.float32)
    assert as_float32(plain) is plain


def test_a_store_made_before_reads_the_same_batches(store, tmp_path, demo_root, monkeypatch):
    """Stores made before this read path compressed float arrays with zstd (now Blosc lz4): the
    loader serves them the same batches, through the same direct chunk reads."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    import featstore.arrays

    monkeypatch.setattr(featstore.arrays, "compressors_for", lambda dtype: [ZstdCodec(level=3), Crc32cCodec()])
    old = featstore.init_store(str(tmp_path / "old.zarr"), clip_duration_s=CLIP_S, shard_mb=0)  # as they were: one object per clip
    ingest(old, demo_root)
    extract_audio(old, workers=0, features=("mel",), progress=False)
    assert type(old.array("audio/mel").metadata.codecs[1]).__name__ == "ZstdCodec"
    (sharding,) = store.array("audio/mel").metadata.codecs  # this module's store: the default, sharded
    assert type(sharding.codecs[1]).__name__ == "BloscCodec", "each clip's inner chunk: Blosc"
    options = dict(split="train", batch_size=5, block_clips=3, seed=4, mixup_alpha=0.4, workers=2)
    before, now = training_batches(old, "audio/mel", **options), training_batches(store, "audio/mel", **options)
    assert before.source.reader.direct and now.source.reader.direct
    for (xb, yb), (xn, yn) in zip(before.epoch(1), now.epoch(1), strict=True):
        np.testing.assert_array_equal(xb, xn)
        np.testing.assert_array_equal(yb, yn)


def test_clips_without_a_label_are_refused_not_trained_as_the_last_class(tmp_path, demo_root, store):
    """A train clip with an empty label: training_batches names it; TrainingBatches given a -1
    label (what label_indices gives it) refuses too, where np.eye(classes)[-1] would make it the last class."""
    import shutil

    audio = sorted(os.listdir(os.path.join(demo_root, "audio")))[:3]
    for name in audio:
        shutil.copy(os.path.join(demo_root, "audio", name), tmp_path / name)
    (tmp_path / "clips.csv").write_text("audio,video,label,split,clip_id\n"
                                        f"{audio[0]},,bus,train,a\n{audio[1]},,,train,b\n{audio[2]},,park,train,c\n")
    mine = featstore.init_store(str(tmp_path / "s.zarr"), clip_duration_s=CLIP_S)
    ingest(mine, str(tmp_path / "clips.csv"), fmt="csv")
    assert extract_audio(mine, workers=0, features=("mel",), progress=False).done == 3
    with pytest.raises(featstore.ConfigError, match=r"without a known label cannot be trained on: \['b'\]"):
        training_batches(mine, "audio/mel")
    assert len(training_batches(mine, "audio/mel", rows=np.array([0, 2]), batch_size=2)) == 3, "the labelled ones train"
    good = training_batches(store, "audio/mel", batch_size=4)
    labels = store.label_indices(store.clips["label"])
    labels[good.pairs[0, 0]] = -1
    with pytest.raises(featstore.ConfigError, match=rf"rows \[{good.pairs[0, 0]}\] of the clips table have no known label"):
        TrainingBatches(good.units, good.source, labels, len(store.classes), good.pairs)
