"""Training on several devices of one machine: a ``tf.distribute.MirroredStrategy`` over N of them.

The devices are the machine's GPUs when TensorFlow sees any, else its logical CPU devices (one,
unless ``tf.config.set_logical_device_configuration`` split the CPU before TensorFlow started: what
the tests do). Each device holds a replica of the model; every step, each replica takes its own
batch (:func:`featstore.tfdata.tf_distributed_dataset`) and the gradients are summed across them.
"""

from __future__ import annotations

from featstore.errors import ConfigError


def training_devices() -> tuple[str, list[str]]:
    """``(kind, names)``: ``"GPU"`` and the logical GPU devices when there are, else ``"CPU"`` and
    the logical CPU devices (``/device:CPU:0``...). Starts TensorFlow's runtime."""
    import tensorflow as tf

    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    return ("GPU", gpus) if gpus else ("CPU", [device.name for device in tf.config.list_logical_devices("CPU")])


def mirrored_strategy(devices: int):
    """A ``tf.distribute.MirroredStrategy`` over the first ``devices`` of :func:`training_devices`.

    Raises
    ------
    ConfigError
        When the machine has fewer devices, naming those it has.
    """
    import tensorflow as tf

    kind, names = training_devices()
    if devices > len(names):
        hint = "" if kind == "GPU" else " and no GPU TensorFlow can use (install its GPU build)"
        raise ConfigError(f"--devices {devices}: this machine has {len(names)} {kind} device{'s' * (len(names) != 1)} "
                          f"({', '.join(names)}){hint}; use --devices {len(names)} or fewer")
    return tf.distribute.MirroredStrategy(names[:devices])
