"""Phase I backbones (Keras 3 on TensorFlow) and the model registries. Importing this package does
not import TensorFlow (the CLI reads :data:`MODELS`, :data:`METHODS` and :data:`HEADS` from here);
building a model does, as do its submodules (``featstore.models.fusion``...).

Five models, each a backbone followed by the shared head (:mod:`featstore.models.head`):

=========  ===========================================  ===============================
name       backbone                                     input (channels last)
=========  ===========================================  ===============================
aud-mel    residual-inception CNN (or ``arch="vgg14"``)  (bins, frames, 2) from audio/mel
aud-gam    same                                         (bins, frames, 2) from audio/gam
aud-cqt    same                                         (bins, frames, 2) from audio/cqt
vis-inc    keras.applications.InceptionV3               (size, size, 3) from frames/rgb
vis-conv   keras.applications.ConvNeXtTiny              (size, size, 3) from frames/rgb
=========  ===========================================  ===============================

Audio models built with ``frames_per_segment`` take the static channels and derive delta and
delta-delta channels in their first layer (:mod:`featstore.models.deltas`); without it they take
(bins, frames, 6) with deltas computed outside, as every model saved before the layer existed.

>>> from featstore.models import build_model                         # doctest: +SKIP
>>> model = build_model("aud-mel", input_shape=(128, 72, 2), frames_per_segment=72, widths=(16, 32), head_units=64)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from featstore.errors import ConfigError
from featstore.names import unknown

#: Batch-norm momentum of every backbone: 0.9 (PyTorch's default, which the audio papers' code uses)
#: instead of Keras' 0.99, whose moving statistics need thousands of steps to settle; with fewer, a
#: model trained briefly or on a small set predicts from wrong statistics at inference.
BATCHNORM_MOMENTUM = 0.9

#: model name -> (modality, default input array)
MODELS: dict[str, tuple[str, str]] = {
    "aud-mel": ("audio", "audio/mel"),
    "aud-gam": ("audio", "audio/gam"),
    "aud-cqt": ("audio", "audio/cqt"),
    "vis-inc": ("visual", "frames/rgb"),
    "vis-conv": ("visual", "frames/rgb"),
}

#: Phase II fusion methods (:mod:`featstore.models.fusion`, which imports Keras) -> the embedding
#: layer each fuses; the ``fuse`` command's choices and its ``all`` come from here.
LAYER_OF: dict[str, str] = {"f1": "fc1024", "f2": "fc1024", "f3": "fc1024", "f4": "fc10", "f5": "fc10", "f6": "fc10"}
METHODS: tuple[str, ...] = tuple(LAYER_OF)
#: The heads that are not a Fusion Layer; they read any embedding layer (``fc1024`` by default).
HEADS: tuple[str, ...] = ("mlp", "concat")


def build_model(name: str, *, input_shape: tuple[int, ...], n_classes: int = 10, head_units: int = 1024, dropout: float = 0.4, l2: float = 1e-4, **backbone: Any):
    """The Keras model ``name`` (see :data:`MODELS`): backbone + FC(head_units)-ReLU-Dropout-FC(n_classes)-Softmax.

    Audio keywords: ``widths`` (channels per stage), ``arch`` ("inception" or "vgg14"),
    ``frames_per_segment`` and ``delta_width`` (deltas derived in the model; see
    :func:`featstore.models.audio.audio_backbone`). Visual
    keyword: ``weights_file`` (a local ImageNet weights file; default random init, never a download).
    """
    import keras

    from featstore.models.head import add_head

    if name not in MODELS:
        raise ConfigError(unknown("model to build", name, MODELS))
    inputs = keras.Input(shape=input_shape, name="input")
    if MODELS[name][0] == "audio":
        from featstore.models.audio import audio_backbone

        features = audio_backbone(inputs, **backbone)
    else:
        from featstore.models.visual import visual_backbone

        features = visual_backbone(name, inputs, **backbone)
    outputs = add_head(features, n_classes=n_classes, units=head_units, dropout=dropout, l2=l2)
    return keras.Model(inputs, outputs, name=name)
