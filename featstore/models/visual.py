"""Visual backbones, (batch, size, size, 3) uint8 frames -> (batch, features), in two sizes (``arch``).

* ``"paper"`` (default): the papers' keras.applications models, ``include_top=False`` with global
  average pooling: InceptionV3 for ``vis-inc``, ConvNeXtTiny for ``vis-conv``. Weights: random
  initialisation unless ``weights_file`` names a local ImageNet weights file (e.g. the
  ``*_notop.h5`` files Keras publishes); nothing is ever downloaded.
* ``"tiny"``: small networks of the same two families, for demos and tests on a CPU (tens of
  thousands of weights instead of tens of millions), always from random weights. ``widths`` sets
  the channels per stage. ``vis-inc``: a strided 3x3 stem then residual-inception blocks (the
  audio backbone's, :func:`featstore.models.audio.inception_block`) with 2x2 average pooling between
  stages. ``vis-conv``: a 4x4 stride-4 patchify stem and ConvNeXt blocks (7x7 depthwise conv, layer
  norm, 4x pointwise MLP with GELU, residual), a layer norm and 2x2 stride-2 conv between stages.

Inputs are the store's uint8 RGB frames as they are: preprocessing is a layer of the model (InceptionV3
and the tiny models want [-1, 1], a ``Rescaling`` layer; ConvNeXtTiny normalises 0-255 input itself),
never a Lambda, so the saved model loads in Keras safe mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

ARCHS = ("paper", "tiny")
APPLICATIONS = {"vis-inc": "InceptionV3", "vis-conv": "ConvNeXtTiny"}
#: (scale, offset) taking 0..255 to the range each paper application expects (tiny models: [-1, 1])
RESCALE = {"vis-inc": (1 / 127.5, -1.0), "vis-conv": (1.0, 0.0)}
#: The smallest frames (px, height and width) each paper application takes (keras.applications' limits)
MIN_SIZE_PX = {"vis-inc": 75, "vis-conv": 32}
TINY_WIDTHS = (16, 32)


def _tiny_inception(x, widths: Sequence[int]):
    import keras

    from featstore.models.audio import _conv, inception_block

    x = keras.layers.AveragePooling2D(2, name="stem_pool")(_conv(x, widths[0], 3, "stem"))
    for s, width in enumerate(widths):
        x = inception_block(x, width, f"stage{s}")
        if s < len(widths) - 1:
            x = keras.layers.AveragePooling2D(2, padding="same", name=f"stage{s}_down")(x)
    return keras.layers.GlobalAveragePooling2D(name="global_pool")(x)


def _convnext_block(x, width: int, name: str):
    import keras

    y = keras.layers.DepthwiseConv2D(7, padding="same", name=f"{name}_dw")(x)
    y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln")(y)
    y = keras.layers.Dense(4 * width, activation="gelu", name=f"{name}_pw1")(y)
    y = keras.layers.Dense(width, name=f"{name}_pw2")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def _tiny_convnext(x, widths: Sequence[int]):
    import keras

    x = keras.layers.Conv2D(widths[0], 4, strides=4, name="stem")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="stem_ln")(x)
    for s, width in enumerate(widths):
        if s > 0:
            x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"stage{s}_down_ln")(x)
            x = keras.layers.Conv2D(width, 2, strides=2, name=f"stage{s}_down")(x)
        x = _convnext_block(x, width, f"stage{s}")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.layers.LayerNormalization(epsilon=1e-6, name="head_ln")(x)


#: visual backbone -> its tiny network (the keras.applications model of each is :data:`APPLICATIONS`)
TINY = {"vis-inc": _tiny_inception, "vis-conv": _tiny_convnext}


def visual_backbone(name: str, inputs, *, arch: str = "paper", widths: Sequence[int] = TINY_WIDTHS, weights_file: str | None = None):
    """(batch, size, size, 3) uint8 -> (batch, features): model ``name`` ("vis-inc" or "vis-conv")
    at ``arch`` ("paper" or "tiny"); ``widths`` applies to "tiny" only, ``weights_file`` to "paper" only."""
    import keras

    from featstore.errors import ConfigError
    from featstore.models import BATCHNORM_MOMENTUM
    from featstore.names import unknown

    if arch not in ARCHS:
        raise ConfigError(f"visual arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if name not in APPLICATIONS:
        raise ConfigError(unknown("visual backbone", name, APPLICATIONS))
    if arch == "tiny":
        if weights_file:
            raise ConfigError("the tiny visual backbones have no ImageNet weights; drop weights_file or use arch='paper'")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
        return TINY[name](x, widths)
    size = min(inputs.shape[1:3])
    if size < MIN_SIZE_PX[name]:
        raise ConfigError(f"{name} ({APPLICATIONS[name]}) takes frames of at least {MIN_SIZE_PX[name]} px, these are {size} px: "
                          f"extract frames at --size {MIN_SIZE_PX[name]} or more (featstore extract-frames --size N --name GROUP)")
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
