"""Audio backbones on spectrogram windows, channels last.

Input: the static channels (bins, frames, 2), from which the model's first layer derives delta and
delta-delta channels (:class:`featstore.models.deltas.SpectrogramDeltas`, when ``frames_per_segment``
is given; what ``train-backbone`` builds), or (bins, frames, 6) with deltas computed outside (models
built without it, as all were before). Both then batch-normalise the 6 channels (``input_bn``): each
(static, delta, delta-delta per ear) is standardised, whatever the feature's dB offset (around -35 dB
for GAM, -10 for MEL).

* ``inception`` (default): stages of residual-inception blocks. Each block has four branches
  (1x1; 3x3; two stacked 3x3; 3x3 max-pool then 1x1), concatenated, projected back by a 1x1
  convolution and added to the block's input (residual), then batch norm and ReLU; 2x2 average
  pooling between stages; global average pooling at the end. ``widths`` sets the channels per stage.
* ``vgg14``: the VGG14-style network of "Deep Learning Frameworks Applied For Audio-Visual Scene
  Classification": 12 conv layers 64-64-128-128-256x4-512x4, each conv + BN + ReLU, average pooling
  and dropout (25% rising to 35%) after each group, global average pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

from featstore.errors import ConfigError

#: the audio backbones' architectures (``arch``)
ARCHS = ("inception", "vgg14")


def _conv(x, filters: int, kernel: int, name: str):
    import keras

    from featstore.models import BATCHNORM_MOMENTUM

    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BATCHNORM_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def inception_block(x, width: int, name: str):
    """One residual-inception block with ``width`` output channels."""
    import keras

    from featstore.models import BATCHNORM_MOMENTUM

    branch = max(1, width // 4)
    shortcut = x if x.shape[-1] == width else keras.layers.Conv2D(width, 1, name=f"{name}_proj")(x)
    b1 = _conv(x, branch, 1, f"{name}_b1")
    b3 = _conv(_conv(x, branch, 1, f"{name}_b3a"), branch, 3, f"{name}_b3b")
    b33 = _conv(_conv(_conv(x, branch, 1, f"{name}_b33a"), branch, 3, f"{name}_b33b"), branch, 3, f"{name}_b33c")
    bp = _conv(keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x), branch, 1, f"{name}_bp")
    mixed = keras.layers.Concatenate(name=f"{name}_concat")([b1, b3, b33, bp])
    mixed = keras.layers.Conv2D(width, 1, use_bias=False, name=f"{name}_mix")(mixed)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, mixed])
    x = keras.layers.BatchNormalization(momentum=BATCHNORM_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def audio_backbone(inputs, *, arch: str = "inception", widths: Sequence[int] = (64, 128, 256),
                   frames_per_segment: int | None = None, delta_width: int = 9):
    """(batch, bins, frames, 6) -> (batch, features); (batch, bins, frames, 2) static channels when
    ``frames_per_segment`` is given: the model derives the deltas (``delta_width`` frames) itself."""
    import keras

    from featstore.models import BATCHNORM_MOMENTUM

    from featstore.models.deltas import deltas_front

    inputs = deltas_front(inputs, frames_per_segment, delta_width)
    # per-channel standardisation of the dB input (static, delta, delta-delta sit at different offsets)
    inputs = keras.layers.BatchNormalization(momentum=BATCHNORM_MOMENTUM, name="input_bn")(inputs)
    if arch == "vgg14":
        x = inputs
        groups = ((64, 64), (128, 128), (256,) * 4, (512,) * 4)
        for g, (filters, drop) in enumerate(zip(groups, (0.25, 0.3, 0.3, 0.35))):
            for k, f in enumerate(filters):
                x = _conv(x, f, 3, f"vgg{g}_{k}")
            x = keras.layers.AveragePooling2D(2, padding="same", name=f"vgg{g}_pool")(x)
            x = keras.layers.Dropout(drop, name=f"vgg{g}_drop")(x)
        return keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    x = _conv(inputs, widths[0], 3, "stem")
    for s, width in enumerate(widths):
        x = inception_block(x, width, f"stage{s}")
        if s < len(widths) - 1:
            x = keras.layers.AveragePooling2D(2, padding="same", name=f"stage{s}_down")(x)
    return keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
