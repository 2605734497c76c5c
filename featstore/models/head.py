"""The head every backbone ends in, defined once: FC(1024)-ReLU-Dropout(0.4)-FC(10)-Softmax; and
how a model with it is compiled for training (:func:`compile_for_training`).

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


def compile_for_training(model, lr: float) -> None:
    """Compile ``model`` (built, softmax output) for training: Adam(``lr``), KL divergence against
    the (one-hot or mixed) targets, categorical accuracy; its optimizer and metric state created here.

    Keras defers that state to the first trace of the training step when no ``tf.distribute``
    strategy is set, and TensorFlow then traces the step a second time once the variables exist:
    creating them first halves the start-up of every ``fit`` (about 6 s of tracing less for the
    audio backbone on a 2-core CPU). Call it inside a strategy's scope when there is one.
    """
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.KLDivergence(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="categorical_accuracy")])
    model.optimizer.build(model.trainable_variables)
