"""Mixup and the frames' random resized crop and flip applied on the accelerator, in Keras.

With ``augment_on="device"`` the training loader (:class:`featstore.loader.TrainingBatches`)
serves ``((x, draws), y)``: ``x`` in the stored dtype (uint8 frames, float16 windows), ``y``
already mixed, and the batch's random draws. :func:`device_augment` applies the draws where the
model runs, so the host gathers and copies a quarter (frames) or half (MEL) of the bytes of a
float32 batch and crops nothing; :class:`DeviceAugmentTrainer` wraps a model for ``fit`` on such
batches, and the model itself, saved after training, is the one without it.

The crop follows Pillow's bilinear resize, which the host path uses: output pixel ``i`` of ``W``
samples the crop ``[left, right)`` at ``left + (i + 0.5) (right - left) / W`` (pixel centres),
nearest edge pixels outside; one affine transform per image does the crop, the resize back to the
frame's size and the flip (``keras.ops.image.affine_transform``). The host rounds its crops to
uint8 and then mixes; here nothing is rounded, so the two agree within about one level of 255.
"""

from __future__ import annotations

import keras
from keras import ops


def crop_flip_transforms(boxes, flips, height: int, width: int):
    """The (n, 8) transforms of ``keras.ops.image.affine_transform`` (output pixel -> input
    coordinate) that resize each ``boxes[i]`` (left, top, right, bottom, pixels) to ``height`` x
    ``width`` and mirror it left to right where ``flips[i]``."""
    boxes = ops.cast(boxes, "float32")
    left, top, right, bottom = (boxes[:, k] for k in range(4))
    scale_x, scale_y = (right - left) / width, (bottom - top) / height
    sign = ops.where(flips, -1.0, 1.0)
    # x_in = left + (x' + 0.5) scale_x - 0.5, x' = x or (width - 1 - x) when flipped
    offset_x = left - 0.5 + ops.where(flips, width - 0.5, 0.5) * scale_x
    offset_y = top - 0.5 + 0.5 * scale_y
    zeros = ops.zeros_like(left)
    return ops.stack([sign * scale_x, zeros, offset_x, zeros, scale_y, offset_y, zeros, zeros], axis=1)


def device_augment(x, draws: dict):
    """``x`` (batch, ...) in any real dtype, with the loader's ``draws``: float32 (batch, ...),
    frames cropped, resized and flipped (when ``draws`` has ``crop_box``), then mixed:
    ``w x + (1 - w) x[partner]``, ``w`` = ``mix_weight``."""
    x = ops.cast(x, "float32")
    if "crop_box" in draws:
        height, width = x.shape[1], x.shape[2]
        transforms = crop_flip_transforms(draws["crop_box"], draws["flip"], height, width)
        x = ops.image.affine_transform(x, transforms, interpolation="bilinear", fill_mode="nearest", data_format="channels_last")
    weight = ops.reshape(ops.cast(draws["mix_weight"], "float32"), (-1,) + (1,) * (len(x.shape) - 1))
    return weight * x + (1.0 - weight) * ops.take(x, ops.cast(draws["mix_partner"], "int32"), axis=0)


class DeviceAugmentTrainer(keras.Model):
    """``model`` for ``fit`` on ``((x, draws), y)`` batches: :func:`device_augment` then ``model``
    while training; plain ``x`` batches (validation, prediction) go to ``model`` as they are.

    Train and evaluate the trainer (compile it, not ``model``); ``model`` shares its weights, so
    after ``trainer.load_weights(...)`` save ``model`` itself, which takes ``x`` alone.

    The trainer computes in float32 whatever the global policy: under ``mixed_float16`` Keras would
    otherwise cast the draws to float16 on the way in, rounding the mixing weights (by up to 2.4e-4)
    away from those the labels were mixed with; ``model`` casts to its own policy as it always
    does. It is not compiled by XLA (``supports_jit = False``, as Keras' own image-transforming
    layers): TensorFlow's affine transform has no XLA kernel, and Keras' ``jit_compile="auto"``
    would otherwise choose XLA on a GPU.
    """

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.inner = model
        self.supports_jit = False

    def call(self, inputs, training=False):
        if isinstance(inputs, (tuple, list)):
            x, draws = inputs
            return self.inner(device_augment(x, draws) if training else x, training=training)
        return self.inner(inputs, training=training)
