"""The Phase II Fusion Layer (DESIGN 1) as a Keras layer, and the fusion head built on it (imports Keras).

The input is one tensor ``x`` of shape (batch, model, dim): the embeddings ``e_i`` of the selected
backbones stacked along axis 1. ``W`` holds one trainable vector ``w_i`` per embedding (shape
(model, dim)); ``w_a``, ``w_v`` and ``b`` are (dim,) vectors. Products are element-wise:

====  ==========================================================  ============
f     output                                                      width
====  ==========================================================  ============
f1    sum_i e_i*w_i + b                                           dim
f2    (sum_audio e_i*w_i)*w_a + (sum_visual e_i*w_i)*w_v + b      dim
f3    concat[sum_audio e_i*w_i, sum_visual e_i*w_i]               2 dim
====  ==========================================================  ============

f4, f5, f6 are f1, f2, f3 applied to FC(10) embeddings instead of FC(1024) ones: the layer is the same,
only the embeddings differ (:data:`LAYER_OF`). With one modality, the same form over that modality's
embeddings: f2 keeps the one modality's term (and its ``w_a`` or ``w_v``) plus ``b``; f3 is the one sum.

Initialisation (the papers do not say): ``w_i``, ``w_a``, ``w_v`` ones and ``b`` zeros, so training
starts from the plain sum of the embeddings. The dense layer after it is FC(10)-Softmax with L2 on its
kernel.

>>> from featstore.models.fusion import build_fusion_model                     # doctest: +SKIP
>>> model = build_fusion_model("f4", modalities=("audio", "audio", "visual"), dim=10)  # doctest: +SKIP
>>> model.output_shape                                                  # doctest: +SKIP
(None, 10)
"""

from __future__ import annotations

import keras
from keras import ops

METHODS = ("f1", "f2", "f3", "f4", "f5", "f6")
#: The embedding layer each method fuses.
LAYER_OF = {"f1": "fc1024", "f2": "fc1024", "f3": "fc1024", "f4": "fc10", "f5": "fc10", "f6": "fc10"}
#: The form of each method (f4..f6 share f1..f3's).
FORM_OF = {"f1": "sum", "f2": "modality_weighted", "f3": "concat", "f4": "sum", "f5": "modality_weighted", "f6": "concat"}


@keras.saving.register_keras_serializable(package="featstore")
class FusionLayer(keras.layers.Layer):
    """Fuse (batch, model, dim) embeddings as ``form`` ("sum", "modality_weighted" or "concat").

    ``modalities``: "audio" or "visual" for each of the stacked embeddings, in order.
    """

    def __init__(self, form: str, modalities: tuple[str, ...], **kwargs):
        super().__init__(**kwargs)
        if form not in ("sum", "modality_weighted", "concat"):
            raise ValueError(f"unknown fusion form {form!r}")
        if not modalities or not set(modalities) <= {"audio", "visual"}:
            raise ValueError(f"modalities must be 'audio' or 'visual', got {modalities!r}")
        self.form = form
        self.modalities = tuple(modalities)
        # the modalities present, audio first (the concat order of f3)
        self.present = tuple(m for m in ("audio", "visual") if m in self.modalities)

    def build(self, input_shape):
        n_models, dim = int(input_shape[1]), int(input_shape[2])
        if n_models != len(self.modalities):
            raise ValueError(f"{n_models} embeddings stacked but {len(self.modalities)} modalities given")
        self.w = self.add_weight(shape=(n_models, dim), initializer="ones", name="w")
        if self.form == "modality_weighted":
            self.w_modality = {m: self.add_weight(shape=(dim,), initializer="ones", name=f"w_{m[0]}") for m in self.present}
        if self.form in ("sum", "modality_weighted"):
            self.b = self.add_weight(shape=(dim,), initializer="zeros", name="b")

    def _modality_sum(self, weighted, modality: str):
        index = [i for i, m in enumerate(self.modalities) if m == modality]
        return ops.sum(ops.take(weighted, index, axis=1), axis=1)

    def call(self, x):
        weighted = x * self.w  # (batch, model, dim) * (model, dim)
        if self.form == "sum":
            return ops.sum(weighted, axis=1) + self.b
        sums = [self._modality_sum(weighted, m) for m in self.present]
        if self.form == "concat":
            return ops.concatenate(sums, axis=-1) if len(sums) > 1 else sums[0]
        return sum(s * self.w_modality[m] for s, m in zip(sums, self.present)) + self.b

    def compute_output_shape(self, input_shape):
        width = input_shape[2] * (len(self.present) if self.form == "concat" else 1)
        return (input_shape[0], width)

    def get_config(self):
        return {**super().get_config(), "form": self.form, "modalities": list(self.modalities)}


def build_fusion_model(method: str, *, modalities: tuple[str, ...], dim: int, n_classes: int = 10, l2: float = 1e-4) -> keras.Model:
    """Fusion Layer ``method`` then FC(n_classes)-Softmax, on (batch, len(modalities), dim) input.

    Layers are named ``fusion``, ``fc10`` and ``softmax``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    inputs = keras.Input(shape=(len(modalities), dim), name="embeddings")
    fused = FusionLayer(FORM_OF[method], tuple(modalities), name="fusion")(inputs)
    reg = keras.regularizers.L2(l2) if l2 else None
    logits = keras.layers.Dense(n_classes, kernel_regularizer=reg, name="fc10")(fused)
    outputs = keras.layers.Activation("softmax", name="softmax")(logits)
    return keras.Model(inputs, outputs, name=f"fusion-{method}")
