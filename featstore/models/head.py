"""The head every backbone ends in, defined once: FC(1024)-ReLU-Dropout(0.4)-FC(10)-Softmax.

Layer names are the contract embedding extraction relies on: ``fc1024`` (the FC(1024)-ReLU output,
whatever ``units`` is), ``fc10`` (the FC(10) output *before* the softmax) and ``softmax``.
"""

from __future__ import annotations


def add_head(features, *, n_classes: int = 10, units: int = 1024, dropout: float = 0.4, l2: float = 1e-4):
    """Apply the head to a (batch, features) tensor; return the softmax output tensor."""
    import keras

    reg = keras.regularizers.L2(l2) if l2 else None
    x = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name="fc1024")(features)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(n_classes, kernel_regularizer=reg, name="fc10")(x)
    return keras.layers.Activation("softmax", name="softmax")(x)
