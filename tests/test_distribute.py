"""Training on several devices: the loader's shards for replicas in one process, overlapping
iterations of one loader, and a real MirroredStrategy over 2 logical CPU devices (in its own
process, since the CPU must be split before TensorFlow starts) training one epoch through the
tf.data adapter.

Units are identified by the bytes of their served values (static MEL windows, no mixup), looked up
in a table made from the loader's own unshuffled plan."""

from __future__ import annotations

import collections
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featstore
from featstore.errors import ConfigError
from featstore.loader import training_batches
from featstore.pipelines.train_backbone import TrainConfig

from conftest import mel_windows_store, units_by_value

OPTIONS = {"split": None, "batch_size": 8, "block_clips": 2, "deltas": False}


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_root) -> featstore.Store:
    return mel_windows_store(str(tmp_path_factory.mktemp("distribute") / "s.zarr"), demo_root)


@pytest.fixture(scope="module")
def unit_of(store) -> dict[bytes, tuple[int, int]]:
    return units_by_value(store, **OPTIONS)


def units_in(batches, unit_of) -> list[tuple[int, int]]:
    return [unit_of[example.tobytes()] for x, _ in batches for example in x]


def test_replica_shards_read_at_once_in_one_process_serve_their_own_units(store, unit_of):
    """19 clips over 2 replicas: 10 each, one clip padded (first of replica 0's, last of replica
    1's), both read from one loader's source while the other holds it."""
    batches = training_batches(store, "audio/mel", rows=np.arange(19), seed=0, **OPTIONS)
    shards = [batches.shard(rank, 2, batch_size=4) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8, "10 clips of 3 windows each, in batches of 4 (blocks of 4 clips)"
    late = shards[1].epoch(0)
    served = [[], units_in(itertools.islice(late, 7), unit_of)]  # replica 1 holds its last block
    served[0] = units_in(shards[0].epoch(0), unit_of)  # replica 0 reads and drops the padded clip
    served[1] += units_in(late, unit_of)
    for shard, units in zip(shards, served):
        assert units == [tuple(p) for block in shard.plan(0) for b in block.batches for p in b.tolist()]
    counts = collections.Counter(served[0] + served[1])
    assert set(counts) == {(r, u) for r in range(19) for u in range(3)}, "together the replicas cover every window"
    assert sorted(counts.values()) == [1] * 54 + [2] * 3, "only the padded clip's 3 windows are served twice"
    assert batches.source.cache == {}, "the shards held their clips in views of the source"


def test_an_iteration_closed_early_takes_no_clip_from_one_still_open(store, unit_of):
    """What Keras does with tf.data: the next epoch's iterator opens before the last one is dropped."""
    batches = training_batches(store, "audio/mel", seed=1, **OPTIONS)
    first = iter(batches.detached())
    next(first)  # epoch 0 holds its first block
    second = iter(batches.detached())  # epoch 1
    units = units_in([next(second)], unit_of)
    first.close()  # releases every clip of epoch 0's plan
    units += units_in(second, unit_of)
    assert collections.Counter(units) == collections.Counter((r, u) for r in range(20) for u in range(3))


def test_the_global_batch_must_split_evenly_across_devices():
    with pytest.raises(ConfigError, match="--batch-size 6 must be a multiple of --devices 4"):
        TrainConfig(model="aud-mel", batch_size=6, devices=4)
    with pytest.raises(ConfigError, match="--devices must be >= 1"):
        TrainConfig(model="aud-mel", devices=0)


@pytest.mark.slow  # a TensorFlow process of its own
def test_mirrored_strategy_over_two_cpu_devices_trains_one_epoch_through_the_tf_data_adapter(store, unit_of, tmp_path):
    script = Path(__file__).with_name("mirrored_run.py")
    proc = subprocess.run([sys.executable, str(script), store.url, str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ran out of data" not in proc.stderr, "Keras counts the steps the replicas' pipelines serve"
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["replicas"] == 2
    assert result["too_many"].startswith("--devices 3: this machine has 2 CPU devices (/device:CPU:0, /device:CPU:1)")
    # one epoch of 60 windows, global batch 8: each replica 4 per step (the short last block: 2)
    assert len(result["sizes"]) == result["steps"] == 8
    assert all(a == b for a, b in result["sizes"]) and sum(a for a, _ in result["sizes"]) == 30
    assert [a for a, _ in result["sizes"]].count(4) == 7
    units = [units_in([(np.load(tmp_path / f"replica{r}.npy"), None)], unit_of) for r in range(2)]
    assert not set(units[0]) & set(units[1]), "no window on both replicas"
    assert collections.Counter(units[0] + units[1]) == collections.Counter((r, u) for r in range(20) for u in range(3))
    # train-backbone with devices=2, mixed precision, mixup on the devices: one epoch, a finite loss, a float16 model
    history = result["history"]
    assert history["epoch"] == [1] and np.isfinite(history["loss"][0]) and np.isfinite(history["val_loss"][0])
    assert result["devices"] == 2 and result["policy"] == "mixed_float16" and result["augment_on"] == "device"
