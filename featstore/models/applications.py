"""Any ``keras.applications`` model, frozen, as an embedding extractor for the store's frames (imports Keras).

Pham et al. 2021 embed video frames with ImageNet-pretrained Keras applications (Xception, VGG19,
ResNet50, InceptionV3, MobileNetV2, DenseNet121, ...) and take a late layer's output as the embedding.
Three pieces, in the order ``embed`` uses them:

1. :func:`build_application`: the application by its Keras name, with its ImageNet weights read
   from a local file (``weights_file``; never downloaded: without one, random weights and a warning),
   behind its preprocessing layer, so the model takes the store's uint8 RGB frames as they are.
2. :func:`preprocessing_layer`: the application's ``preprocess_input`` as Keras defines it ("caffe":
   RGB to BGR and ImageNet mean subtraction; "tf": [-1, 1]; "torch": ImageNet mean and std; identity
   for models that normalise inside) expressed as a frozen 1x1 ``Conv2D``: every one of those is an
   affine map per pixel, read off Keras' own function, and a built-in layer loads in safe mode (a
   ``Lambda`` would not).
3. :func:`embedding_model`: (model, layer name) -> a model whose output is that layer's, (batch, dim):
   a spatial output (batch, h, w, c) is averaged over h and w (global average pooling), a sequence
   output (batch, tokens, c) over its tokens; the pooling is stated by :func:`is_pooled`.

>>> from featstore.models.applications import build_application, embedding_model   # doctest: +SKIP
>>> model = build_application("ResNet50", input_shape=(224, 224, 3), weights_file="resnet50.h5")  # doctest: +SKIP
>>> embedder = embedding_model(model, "avg_pool")   # (frame, 224, 224, 3) uint8 -> (frame, 2048)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import warnings

import numpy as np

from featstore.errors import ConfigError, FeatstoreWarning
from featstore.fingerprint import library_versions
from featstore.names import closest

#: Name of the preprocessing layer every application model starts with.
PREPROCESS = "preprocess"


def application_function(name: str):
    """The ``keras.applications`` constructor called ``name`` (e.g. "ResNet50")."""
    import keras

    function = getattr(keras.applications, name, None)
    if function is None or not callable(function) or name[:1].islower():
        known = [n for n in dir(keras.applications) if n[:1].isupper()]
        raise ConfigError(f"keras.applications has no model {name!r} (e.g. ResNet50, VGG19, Xception, InceptionV3, MobileNetV2, DenseNet121){closest(name, known)}")
    return function


def preprocess_affine(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (3, 3), bias (3,)) with ``preprocess_input(x) == x @ kernel + bias`` per RGB pixel.

    Read off the application's own ``preprocess_input`` on a zero image and three one-channel
    images, then checked on a random image (a non-affine preprocessing is refused).
    """
    preprocess = importlib.import_module(application_function(name).__module__).preprocess_input
    probes = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).reshape(4, 1, 1, 3)
    out = np.asarray(preprocess(probes.copy()), dtype=np.float64).reshape(4, 3)
    bias = out[0]
    kernel = (out[1:] - bias) / 255.0  # row c: what input channel c adds to each output channel
    check = np.random.default_rng(0).uniform(0, 255, (1, 2, 2, 3))
    if not np.allclose(np.asarray(preprocess(check.copy()), dtype=np.float64), check @ kernel + bias, atol=1e-3):
        raise ConfigError(f"{name}: its preprocess_input is not an affine map per pixel; it cannot be a preprocessing layer")
    return kernel, bias


def preprocessing_layer(name: str):
    """A frozen 1x1 ``Conv2D`` named ``preprocess`` that computes the application's ``preprocess_input``."""
    import keras

    kernel, bias = preprocess_affine(name)
    layer = keras.layers.Conv2D(3, 1, name=PREPROCESS, trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel.reshape(1, 1, 3, 3).astype(np.float32), bias.astype(np.float32)])
    return layer


def build_application(name: str, *, input_shape: tuple[int, int, int], weights_file: str | None = None, include_top: bool = True, seed: int = 0):
    """The frozen application ``name`` on (batch, *input_shape) uint8 RGB frames, preprocessing included.

    ``weights_file``: a local weights file of the same model (Keras' published ``*.h5``, with the
    top for ``include_top=True``, ``*_notop.h5`` without); None gives random weights drawn with
    ``seed`` (``keras.utils.set_random_seed``, so the same seed gives the same model) and a warning.
    ``include_top=True`` keeps the classifier, so the paper's second-to-last layer (``avg_pool`` of
    ResNet50, ``fc2`` of VGG19, ...) exists. Layers keep their Keras names.
    """
    import keras

    function = application_function(name)
    if not weights_file:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(input_shape), name="frames")
    preprocessed = preprocessing_layer(name)(inputs)
    try:
        model = function(include_top=include_top, weights=None, input_tensor=preprocessed)
    except ValueError as exc:
        raise ConfigError(f"{name} cannot be built on {tuple(input_shape)} frames: {exc}") from exc
    if weights_file:
        # the file holds the bare application's weights: load them there (strictly), then copy over
        bare = function(include_top=include_top, weights=None, input_shape=tuple(input_shape))
        try:
            bare.load_weights(weights_file)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{weights_file}: not weights of {name} (include_top={include_top}): {exc}") from exc
        for layer in bare.layers:
            if layer.weights:
                model.get_layer(layer.name).set_weights(layer.get_weights())
    else:
        warnings.warn(f"{name}: no ImageNet weights file given, the model has random weights", FeatstoreWarning, stacklevel=2)
    model = keras.Model(inputs, model.output, name=model.name)  # one input tensor, not a list of one
    model.trainable = False
    return model


def is_pooled(model, layer: str) -> bool:
    """Whether :func:`embedding_model` averages ``layer``'s output (it has axes besides batch and channel)."""
    return len(_layer(model, layer).output.shape) > 2


def _layer(model, layer: str):
    names = [candidate.name for candidate in model.layers]
    if layer not in names:
        raise ConfigError(f"model {model.name!r} has no layer {layer!r}; its last layers are {', '.join(names[-5:])}{closest(layer, names)}")
    return model.get_layer(layer)


def embedding_model(model, layer: str):
    """A model with ``model``'s inputs whose output is ``layer``'s, as (batch, dim) float32.

    Spatial outputs (batch, h, w, c) go through ``GlobalAveragePooling2D`` and sequences
    (batch, tokens, c) through ``GlobalAveragePooling1D``, both named ``{layer}_pool``.
    """
    import keras

    output = _layer(model, layer).output
    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D(name=f"{layer}_pool")(output)
    elif len(output.shape) == 3:
        output = keras.layers.GlobalAveragePooling1D(name=f"{layer}_pool")(output)
    elif len(output.shape) != 2:
        raise ConfigError(f"layer {layer!r} has output shape {tuple(output.shape)}; an embedding needs (batch, ..., channel)")
    return keras.Model(model.input, output, name=f"{model.name}-{layer}")


def application_fingerprint(name: str, *, input_shape: tuple[int, int, int], weights_file: str | None, include_top: bool = True, seed: int = 0) -> str:
    """A cache key for :func:`build_application`'s model: the name, shape, top, Keras version and the
    weights file's bytes (BLAKE2b), or the seed of random weights. Keras' version is read from its
    package metadata (the same string as ``keras.__version__``): a cache hit imports no TensorFlow."""
    keras_version = library_versions("keras")["keras"]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{tuple(input_shape)}|{include_top}|{keras_version}|".encode())
    if weights_file:
        with open(weights_file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(f"random|{seed}".encode())
    return digest.hexdigest()
