"""The joint audio-visual model of ``featstore train-joint`` (Chen et al. 2022), imports Keras.

An acoustic encoder trained from scratch, a *frozen* visual embedding of the same window, and the
shared head (:mod:`featstore.models.head`: FC(1024)-ReLU-Dropout-FC(10)-Softmax) on their
concatenation (layer ``joint``), trained together::

    audio (bins, frames, 2) --deltas, encoder--> (features,) --+
                                                               +-- concat "joint" -- head -> softmax
    visual                  ------------------>  (dim,)     ---+

The visual input is either the cached embedding itself, (dim,) (input ``visual``: what train-joint
trains on, the encoder never runs), or the frames of the window, (frames, size, size, 3), passed
through the frozen ``visual_encoder`` frame by frame and averaged (input ``frames``: the way Chen et
al. train, used by ``benchmarks/bench_joint.py`` as the baseline). The two give the same numbers when
the cache was made by the same encoder.

Acoustic encoders (``encoder``): ``inception`` and ``vgg14`` (the Phase I audio backbones,
:mod:`featstore.models.audio`) or ``cnn1d``: our reading of Chen et al.'s 1D-CNN: the frame axis is
time, each frame's bins x 6 channels are the input channels; per width a Conv1D(width, 3)-BN-ReLU then
max-pooling by 2 in time; global average pooling over time.
"""

from __future__ import annotations

from collections.abc import Sequence

from featstore.errors import ConfigError

ENCODERS = ("cnn1d", "inception", "vgg14")


def audio_encoder(inputs, *, encoder: str = "cnn1d", widths: Sequence[int] = (64, 128, 256),
                  frames_per_segment: int | None = None, delta_width: int = 9):
    """(batch, bins, frames, 6) -> (batch, features); (batch, bins, frames, 2) static channels when
    ``frames_per_segment`` is given (deltas derived in the model, as in :mod:`featstore.models.audio`)."""
    import keras

    from featstore.models import BATCHNORM_MOMENTUM
    from featstore.models.audio import audio_backbone
    from featstore.models.deltas import deltas_front

    if encoder in ("inception", "vgg14"):
        return audio_backbone(inputs, arch=encoder, widths=widths, frames_per_segment=frames_per_segment, delta_width=delta_width)
    if encoder != "cnn1d":
        raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    inputs = deltas_front(inputs, frames_per_segment, delta_width)
    bins, frames, channels = inputs.shape[1:]
    x = keras.layers.Permute((2, 1, 3), name="time_first")(inputs)
    x = keras.layers.Reshape((frames, bins * channels), name="frames_by_bins")(x)
    for k, width in enumerate(widths):
        x = keras.layers.Conv1D(width, 3, padding="same", use_bias=False, name=f"conv1d_{k}")(x)
        x = keras.layers.BatchNormalization(momentum=BATCHNORM_MOMENTUM, name=f"conv1d_{k}_bn")(x)
        x = keras.layers.Activation("relu", name=f"conv1d_{k}_relu")(x)
        x = keras.layers.MaxPooling1D(2, padding="same", name=f"conv1d_{k}_pool")(x)
    return keras.layers.GlobalAveragePooling1D(name="global_pool")(x)


def build_joint_model(
    *,
    audio_shape: tuple[int, int, int],
    visual_dim: int | None = None,
    visual_encoder=None,
    frames_shape: tuple[int, int, int, int] | None = None,
    encoder: str = "cnn1d",
    widths: Sequence[int] = (64, 128, 256),
    frames_per_segment: int | None = None,
    delta_width: int = 9,
    n_classes: int = 10,
    head_units: int = 1024,
    dropout: float = 0.4,
    l2: float = 1e-4,
    name: str = "joint",
):
    """The joint model: inputs ``[audio, visual]`` (cached embedding, ``visual_dim``), ``[audio, frames]``
    (``visual_encoder`` frozen on ``frames_shape`` (frames, size, size, 3)), or ``audio`` alone when
    neither is given (the audio-only baseline). Layers ``fc1024``, ``fc10``, ``softmax`` as every backbone.
    With ``frames_per_segment`` the audio input is the static channels and the model derives deltas.
    """
    import keras

    from featstore.models.head import add_head

    audio = keras.Input(shape=tuple(audio_shape), name="audio")
    features = audio_encoder(audio, encoder=encoder, widths=widths, frames_per_segment=frames_per_segment, delta_width=delta_width)
    if visual_encoder is not None:
        visual_encoder.trainable = False
        frames = keras.Input(shape=tuple(frames_shape), name="frames")
        per_frame = keras.layers.TimeDistributed(visual_encoder, name="visual_encoder")(frames)
        inputs = [audio, frames]
        visual = keras.layers.GlobalAveragePooling1D(name="frames_mean")(per_frame)
    elif visual_dim is not None:
        visual = keras.Input(shape=(int(visual_dim),), name="visual")
        inputs = [audio, visual]
    else:
        return keras.Model(audio, add_head(features, n_classes=n_classes, units=head_units, dropout=dropout, l2=l2), name=name)
    joint = keras.layers.Concatenate(name="joint")([features, visual])
    return keras.Model(inputs, add_head(joint, n_classes=n_classes, units=head_units, dropout=dropout, l2=l2), name=name)
