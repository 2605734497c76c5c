"""Visual backbones from keras.applications, ``include_top=False``, global average pooling.

Weights: random initialisation unless ``weights_file`` names a local ImageNet weights file (e.g.
the ``*_notop.h5`` files Keras publishes); nothing is ever downloaded. Inputs are the store's uint8
RGB frames as they are: preprocessing is a layer of the model (InceptionV3 wants [-1, 1], a
``Rescaling`` layer; ConvNeXtTiny normalises 0-255 input itself), never a Lambda, so the saved model
loads in Keras safe mode.
"""

from __future__ import annotations

import warnings

APPLICATIONS = {"vis-inc": "InceptionV3", "vis-conv": "ConvNeXtTiny"}
#: (scale, offset) taking 0..255 to the range each application expects
RESCALE = {"vis-inc": (1 / 127.5, -1.0), "vis-conv": (1.0, 0.0)}


def visual_backbone(name: str, inputs, *, weights_file: str | None = None):
    """(batch, size, size, 3) uint8 -> (batch, features)."""
    import keras

    from featstore.models import BATCHNORM_MOMENTUM

    scale, offset = RESCALE[name]
    x = keras.layers.Rescaling(scale, offset=offset, name="preprocess")(inputs)
    base = getattr(keras.applications, APPLICATIONS[name])(include_top=False, weights=None, input_shape=tuple(inputs.shape[1:]), pooling="avg")
    for layer in base.layers:  # InceptionV3's batch norms (ConvNeXt has layer norms)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BATCHNORM_MOMENTUM
    if weights_file:
        base.load_weights(weights_file)
    else:
        warnings.warn(f"{name}: no ImageNet weights file given, the backbone starts from random weights", stacklevel=2)
    return base(x)
