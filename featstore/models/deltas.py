"""Spectrogram deltas inside the model: a fixed, non-trainable layer at the front of the audio models.

Deltas are a fixed linear filter along time (librosa's Savitzky-Golay ``delta``, ``width`` frames,
``mode="interp"``, within each segment of the grid). Computed by the model, on the accelerator, the
store and the loader serve only the static channels: a third of the bytes per window, and no delta
work on the CPU cores that feed the GPU (issue 14: 0.77 ms per 128x72 window on the host, about
nothing on a GPU).

The layer multiplies each segment by :func:`featstore.audio.delta_matrix`, which is librosa's filter
applied to the identity. It equals :func:`featstore.audio.add_deltas` to float32 rounding
(``tests/test_deltas_layer.py``), so a model with the layer fed static channels gives the numbers
the same model without it gives when fed 6 host-computed channels. Models saved before the layer
existed take 6 channels and are fed host deltas by ``embed`` and ``predict``, which look at the
model's input width (:func:`model_wants_deltas`).

>>> x = keras.Input((128, 72, 2))                                    # doctest: +SKIP
>>> SpectrogramDeltas(frames_per_segment=72)(x).shape                 # doctest: +SKIP
(None, 128, 72, 6)
"""

from __future__ import annotations

import keras

from featstore.audio import delta_matrix
from featstore.errors import ConfigError


@keras.saving.register_keras_serializable(package="featstore")
class SpectrogramDeltas(keras.layers.Layer):
    """(batch, bin, frame, channel) -> (batch, bin, frame, 3 * channel): static, delta, delta-delta.

    Channel order as :func:`featstore.audio.add_deltas` (all static channels, then all deltas, then
    all delta-deltas: L, R, dL, dR, ddL, ddR). ``frame`` must be a whole number of segments of
    ``frames_per_segment`` frames; each segment's deltas depend on that segment only. Computed in
    float32 under any precision policy (the deltas of dB values are small differences).
    """

    def __init__(self, frames_per_segment: int, width: int = 9, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(trainable=False, **{k: v for k, v in kwargs.items() if k != "trainable"})
        self.frames_per_segment, self.width = int(frames_per_segment), int(width)
        self.matrix = delta_matrix(self.frames_per_segment, self.width)  # (fps, 2 fps), not a weight

    def call(self, x):
        ops = keras.ops
        bins, frames, channels = x.shape[1:]
        fps = self.frames_per_segment
        if frames % fps:
            raise ConfigError(f"{frames} frames is not a whole number of {fps}-frame segments")
        segments = ops.reshape(x, (-1, bins, frames // fps, fps, channels))
        both = ops.einsum("nbkfc,fg->nbkgc", segments, ops.convert_to_tensor(self.matrix, dtype=x.dtype))
        delta = ops.reshape(both[:, :, :, :fps], (-1, bins, frames, channels))
        delta2 = ops.reshape(both[:, :, :, fps:], (-1, bins, frames, channels))
        return ops.concatenate([x, delta, delta2], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3 * input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "frames_per_segment": self.frames_per_segment, "width": self.width}


def deltas_front(inputs, frames_per_segment: int | None, width: int = 9):
    """``inputs`` through a :class:`SpectrogramDeltas` layer named ``deltas`` (static channels in, 3x
    out), or unchanged when ``frames_per_segment`` is None (the input already holds deltas)."""
    if frames_per_segment is None:
        return inputs
    return SpectrogramDeltas(frames_per_segment, width, name="deltas")(inputs)


def model_wants_deltas(model, static_channels: int) -> bool:
    """Whether ``model``'s (first) input takes host-computed deltas: 3x ``static_channels`` wide
    (a model saved without :class:`SpectrogramDeltas`), rather than the static channels."""
    width = model.inputs[0].shape[-1]
    if width not in (static_channels, 3 * static_channels):
        raise ConfigError(f"model {model.name!r} takes {width} input channels; the array has {static_channels} (or {3 * static_channels} with deltas)")
    return width == 3 * static_channels

