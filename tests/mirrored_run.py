"""Run by tests/test_distribute.py in its own process: TensorFlow's CPU split into 2 logical devices
(which must happen before TensorFlow starts), then a MirroredStrategy over them.

    python tests/mirrored_run.py STORE OUT

Writes to the folder OUT: ``replica0.npy`` / ``replica1.npy``, the examples each replica received
over one epoch of :func:`featstore.tfdata.tf_distributed_dataset` (static MEL windows, no mixup),
and ``result.json``: replicas in sync, per-replica batch sizes per step, steps, the error for one
device too many, and the registry entry of a ``train_backbone`` run with ``devices=2``, mixed
precision and mixup on the devices (each replica mixes its own share of the batch).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import featstore  # noqa: E402
from featstore.distribute import mirrored_strategy  # noqa: E402
from featstore.errors import ConfigError  # noqa: E402
from featstore.loader import training_batches  # noqa: E402
from featstore.tfdata import tf_distributed_dataset  # noqa: E402
from featstore.pipelines.train_backbone import TrainConfig, train_backbone  # noqa: E402
from featstore.registry import load_keras, model_file  # noqa: E402


def main(url: str, out: str) -> None:
    store = featstore.open_store(url)
    strategy = mirrored_strategy(2)
    try:
        mirrored_strategy(3)
        too_many = None
    except ConfigError as error:
        too_many = str(error)
    batches = training_batches(store, "audio/mel", split=None, batch_size=8, block_clips=2, deltas=False, seed=3)
    served, sizes = [[], []], []
    for x, _ in tf_distributed_dataset(strategy, batches):
        parts = [part.numpy() for part in strategy.experimental_local_results(x)]
        sizes.append([len(part) for part in parts])
        for replica, part in enumerate(parts):
            served[replica].append(part)
    for replica, parts in enumerate(served):
        np.save(os.path.join(out, f"replica{replica}.npy"), np.concatenate(parts))
    config = TrainConfig(model="aud-mel", input_array="audio/mel", window_s=1.0, widths=(4, 8), head_units=8, epochs=1,
                         batch_size=8, devices=2, mixed_precision=True, augment_on="device")
    entry = train_backbone(store, config, progress=False)
    model = load_keras(model_file(store, "aud-mel", entry["fingerprint"]))
    result = {"replicas": strategy.num_replicas_in_sync, "sizes": sizes, "steps": len(batches.shard(0, 2, batch_size=4)),
              "too_many": too_many, "history": entry["config"]["history"], "devices": entry["config"]["devices"], "augment_on": entry["config"]["augment_on"],
              "policy": model.get_layer("stem_conv").dtype_policy.name}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
