"""The training loader's batches as TensorFlow input: ``tf.data`` and ``tf.distribute``.

TensorFlow is imported only when a dataset is made; :mod:`featstore.loader` itself stays numpy only
(:class:`featstore.torch.StoreDataset` is the PyTorch counterpart).
"""

from __future__ import annotations

import numpy as np

from featstore import tflog
from featstore.loader import TrainingBatches, draw_specs


def tf_dataset(batches: TrainingBatches):
    """A ``tf.data.Dataset`` of ``batches`` (``((x, draws), y)`` with ``augment_on="device"``): each pass over it (each Keras epoch) serves the next epoch
    (through :meth:`~featstore.loader.TrainingBatches.detached`: Keras opens the next pass before dropping the last)."""
    import tensorflow as tf

    if batches.x_dtype == np.float16:
        tflog.quiet_first_float16()  # oneDNN's notice on CPUs without AVX-512 FP16, not mid-training

    x = tf.TensorSpec((None, *batches.units.example_shape), tf.as_dtype(batches.x_dtype))
    if batches.augment_on == "device":  # ((x, draws), y): featstore.models.device_augment applies the draws
        x = (x, draw_signature(batches.units.visual))
    elif batches.paired is not None:  # ((x, paired), y): a two-input model
        x = (x, tf.TensorSpec((None, *batches.paired_shape), tf.float32))
    signature = (x, tf.TensorSpec((None, batches.n_classes), tf.float32))
    dataset = tf.data.Dataset.from_generator(lambda: iter(batches.detached()), output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(len(batches))).prefetch(2)


def draw_signature(visual: bool) -> dict:
    """The ``tf.TensorSpec`` of each draw ``augment_on="device"`` serves (:func:`~featstore.loader.draw_specs`)."""
    import tensorflow as tf

    return {name: tf.TensorSpec((None, *shape), tf.as_dtype(dtype)) for name, (shape, dtype) in draw_specs(visual).items()}


def tf_distributed_dataset(strategy, batches: TrainingBatches):
    """``batches`` (``batch_size`` = the global batch) for the replicas of a ``tf.distribute`` ``strategy``.

    One input pipeline per replica (``InputReplicationMode.PER_REPLICA``, which ``MirroredStrategy``
    supports): pipeline ``i`` of ``n`` serves the share of rank ``i`` of ``n`` (:meth:`~featstore.loader.TrainingBatches.shard`) in
    batches of ``batch_size / n``, which must divide evenly. Every replica gets the same number of
    batches (``balance``), so the dataset's cardinality is the steps per epoch Keras counts, and the
    replicas read their clips in parallel.
    """
    import tensorflow as tf

    def make(context):
        per_replica = context.get_per_replica_batch_size(batches.batch_size)
        return tf_dataset(batches.shard(context.input_pipeline_id, context.num_input_pipelines, batch_size=per_replica))

    options = tf.distribute.InputOptions(experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return strategy.distribute_datasets_from_function(make, options)
