"""Seeds for training: the same command with the same seed gives identical numbers on one machine.

Floating-point reductions may still differ between machines (instruction sets, thread counts); see
the docs' reproducibility page.
"""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and TensorFlow's generators and turn on TensorFlow's op determinism.

    Parameters
    ----------
    seed : int
        The run's seed (``--seed``).

    Notes
    -----
    ``tf.config.experimental.enable_op_determinism`` is process-wide and stays on: every later
    kernel picks a deterministic algorithm (on a GPU some are slower, and an op without a
    deterministic version raises). TensorFlow is imported here, not at module load.
    """
    import keras
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # Python, numpy and the backend's global seed
    tf.config.experimental.enable_op_determinism()
