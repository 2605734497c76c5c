"""The Phase II Fusion Layer (docs/guides/fusion.md) as a Keras layer, and the fusion head built on it (imports Keras).

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

Two heads beyond the Fusion Layer, on the same (batch, model, dim) input, each ending in FC(10)-Softmax
(layers ``fc10`` and ``softmax``), every hidden FC followed by ReLU and Dropout, L2 on every kernel:

=======  ==========================================================================================
method   head
=======  ==========================================================================================
mlp      one model's embedding: FC(w_1)-...-FC(w_k) (Pham et al. 2021's visual-embedding MLP,
         default widths 8192-8192-1024, :data:`MLP_WIDTHS`)
concat   joint modeling (Wang et al. 2022): each modality's embeddings (its models' vectors
         concatenated) projected by its own FC(w_1) ``proj_audio1`` / ``proj_visual1``, the
         projections concatenated, then FC(w_2)-...-FC(w_k) (default :data:`CONCAT_WIDTHS`)
=======  ==========================================================================================

Parameters of ``mlp`` on a ``d``-wide embedding, widths ``w_1..w_k`` and ``c`` classes:
``sum_j (w_{j-1} + 1) w_j + (w_k + 1) c`` with ``w_0 = d`` (:func:`mlp_param_count`).
"""

from __future__ import annotations

import keras
from keras import ops

from featstore.errors import ConfigError
from featstore.models import HEADS, LAYER_OF, METHODS  # noqa: F401 - the registries (Keras-free), re-exported

#: Pham et al. 2021: FC 8192 - 8192 - 1024 - Softmax on a frozen image network's embedding.
MLP_WIDTHS = (8192, 8192, 1024)
#: Our choice (Wang et al. 2022 give no widths we follow): FC(512) per modality, then FC(512).
CONCAT_WIDTHS = (512, 512)
#: Dropout after every hidden FC of ``mlp`` and ``concat`` (Pham et al. 2021: 40%).
HEAD_DROPOUT = 0.4
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
            raise ConfigError(f"unknown fusion form {form!r}")
        if not modalities or not set(modalities) <= {"audio", "visual"}:
            raise ConfigError(f"modalities must be 'audio' or 'visual', got {modalities!r}")
        self.form = form
        self.modalities = tuple(modalities)
        # the modalities present, audio first (the concat order of f3)
        self.present = tuple(m for m in ("audio", "visual") if m in self.modalities)

    def build(self, input_shape):
        n_models, dim = int(input_shape[1]), int(input_shape[2])
        if n_models != len(self.modalities):
            raise ConfigError(f"{n_models} embeddings stacked but {len(self.modalities)} modalities given")
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
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    inputs = keras.Input(shape=(len(modalities), dim), name="embeddings")
    fused = FusionLayer(FORM_OF[method], tuple(modalities), name="fusion")(inputs)
    reg = keras.regularizers.L2(l2) if l2 else None
    logits = keras.layers.Dense(n_classes, kernel_regularizer=reg, name="fc10")(fused)
    outputs = keras.layers.Activation("softmax", name="softmax")(logits)
    return keras.Model(inputs, outputs, name=f"fusion-{method}")


@keras.saving.register_keras_serializable(package="featstore")
class SelectEmbeddings(keras.layers.Layer):
    """(batch, model, dim) -> (batch, sum(widths)): embedding ``indices[k]``'s first ``widths[k]``
    values, concatenated (embeddings narrower than ``dim`` are stored zero-padded to it)."""

    def __init__(self, indices: tuple[int, ...], widths: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        if len(indices) != len(widths) or not indices:
            raise ConfigError(f"one width per selected embedding, got indices {indices} and widths {widths}")
        self.indices, self.widths = tuple(int(i) for i in indices), tuple(int(w) for w in widths)

    def call(self, x):
        parts = [x[:, i, :w] for i, w in zip(self.indices, self.widths)]
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], sum(self.widths))

    def get_config(self):
        return {**super().get_config(), "indices": list(self.indices), "widths": list(self.widths)}


def _hidden(x, widths: tuple[int, ...], *, dropout: float, l2: float, prefix: str):
    """FC(w)-ReLU-Dropout for each of ``widths``; layers ``{prefix}{k}`` and ``{prefix}{k}_dropout`` (k from 1)."""
    reg = keras.regularizers.L2(l2) if l2 else None
    for k, width in enumerate(widths, start=1):
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=reg, name=f"{prefix}{k}")(x)
        x = keras.layers.Dropout(dropout, name=f"{prefix}{k}_dropout")(x)
    return x


def _classifier(x, n_classes: int, l2: float):
    reg = keras.regularizers.L2(l2) if l2 else None
    logits = keras.layers.Dense(n_classes, kernel_regularizer=reg, name="fc10")(x)
    return keras.layers.Activation("softmax", name="softmax")(logits)


def mlp_param_count(dim: int, widths: tuple[int, ...] = MLP_WIDTHS, n_classes: int = 10) -> int:
    """Trainable parameters of :func:`build_mlp_model` (weights and biases of each FC)."""
    sizes = (dim, *widths, n_classes)
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def build_mlp_model(*, dim: int, widths: tuple[int, ...] = MLP_WIDTHS, n_classes: int = 10, dropout: float = HEAD_DROPOUT, l2: float = 1e-4) -> keras.Model:
    """The ``mlp`` head on (batch, 1, dim) input (one model's embedding); hidden layers ``fc1..fck``."""
    inputs = keras.Input(shape=(1, dim), name="embeddings")
    x = keras.layers.Flatten(name="flatten")(inputs)
    return keras.Model(inputs, _classifier(_hidden(x, tuple(widths), dropout=dropout, l2=l2, prefix="fc"), n_classes, l2), name="head-mlp")


def build_concat_model(*, modalities: tuple[str, ...], embedding_widths: tuple[int, ...], widths: tuple[int, ...] = CONCAT_WIDTHS, n_classes: int = 10, dropout: float = HEAD_DROPOUT, l2: float = 1e-4) -> keras.Model:
    """The ``concat`` head on (batch, model, max(embedding_widths)) input.

    ``embedding_widths``: each stacked embedding's own width (narrower ones zero-padded). Layers:
    ``select_{modality}``, ``proj_{modality}1`` (FC(widths[0])), ``concat``, ``fc1..`` (widths[1:]).
    """
    if len(modalities) != len(embedding_widths):
        raise ConfigError(f"{len(modalities)} modalities but {len(embedding_widths)} embedding widths")
    if not widths:
        raise ConfigError("concat needs at least the projection width")
    inputs = keras.Input(shape=(len(modalities), max(embedding_widths)), name="embeddings")
    projected = []
    for modality in ("audio", "visual"):
        index = tuple(i for i, m in enumerate(modalities) if m == modality)
        if index:
            selected = SelectEmbeddings(index, tuple(embedding_widths[i] for i in index), name=f"select_{modality}")(inputs)
            projected.append(_hidden(selected, widths[:1], dropout=dropout, l2=l2, prefix=f"proj_{modality}"))
    x = keras.layers.Concatenate(name="concat")(projected) if len(projected) > 1 else projected[0]
    return keras.Model(inputs, _classifier(_hidden(x, tuple(widths[1:]), dropout=dropout, l2=l2, prefix="fc"), n_classes, l2), name="head-concat")


def build_head(method: str, *, modalities: tuple[str, ...], embedding_widths: tuple[int, ...], widths: tuple[int, ...] | None = None, n_classes: int = 10, l2: float = 1e-4, dropout: float = HEAD_DROPOUT) -> keras.Model:
    """Any Phase II head by ``method`` (f1..f6, mlp, concat) on (batch, model, max(embedding_widths)) input.

    ``widths``: the hidden FC widths of ``mlp`` / ``concat`` (None: their defaults); f1..f6 have none
    and need one embedding width.
    """
    if method in METHODS:
        if len(set(embedding_widths)) != 1:
            raise ConfigError(f"the fusion layer adds embeddings element-wise, so they need one width; got {embedding_widths}")
        return build_fusion_model(method, modalities=modalities, dim=embedding_widths[0], n_classes=n_classes, l2=l2)
    if method == "mlp":
        if len(modalities) != 1:
            raise ConfigError(f"mlp trains on one model's embeddings, got {len(modalities)} models")
        return build_mlp_model(dim=embedding_widths[0], widths=tuple(widths or MLP_WIDTHS), n_classes=n_classes, dropout=dropout, l2=l2)
    if method == "concat":
        return build_concat_model(modalities=modalities, embedding_widths=embedding_widths, widths=tuple(widths or CONCAT_WIDTHS), n_classes=n_classes, dropout=dropout, l2=l2)
    raise ConfigError(f"method must be one of {', '.join(METHODS + HEADS)}, got {method!r}")
