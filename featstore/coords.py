"""Coordinate arrays: what each axis of a group's per-clip arrays means, for xarray and other readers.

Beside its per-clip arrays, a group holds one small 1-D array per axis that has a meaning along it,
named after the axis, with ``dimension_names`` equal to its own name, which is how xarray's Zarr
backend recognises an index coordinate (`xr.open_zarr(url, group="audio")`,
`xr.open_datatree(url, engine="zarr")`):

| axis | values | units |
| --- | --- | --- |
| `clip` | the clip ids, the clips table's first rows (variable-length UTF-8) | |
| `segment` | each segment's start within the clip, `k * segment_s` | s |
| `class` | the store's class names, along an axis with one entry per class | |
| `{feature}_bin` | an audio feature's bins: centre frequency (MEL, GAM, CQT) or index (MFCC) | Hz |
| `{feature}_frame` | an audio frame's centre within the clip | s |
| `frame`, `{model}_frame` | a video frame's target time within the clip, `k / fps` | s |

A coordinate array carries the attribute :data:`COORDINATE_KEY`, and featstore's own listings
(``info``, ``verify``, ``export``, the report) leave it out: it is derived from the store's
settings, the clips table and the arrays' configs, and rewritten whenever an array of its group is
created or grown. Every per-clip array of a group has as many rows as the group's ``clip``
coordinate (:func:`align_group` grows the shorter ones, a change of metadata only), so a group
always opens as one Dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

#: Attribute marking a coordinate array, beside its ``units`` and ``long_name`` (xarray's attributes).
COORDINATE_KEY = "featstore_coordinate"
#: The coordinate of the clip axis, along every per-clip array's first axis.
CLIP_AXIS = "clip"


@dataclass(frozen=True)
class Coordinate:
    """The values along one axis, with their ``units`` ("" when none) and a ``long_name``."""

    values: np.ndarray
    units: str = ""
    long_name: str = ""
    #: Extra attributes (e.g. the frequency scale).
    extra: dict[str, Any] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        described = {"long_name": self.long_name, **({"units": self.units} if self.units else {}), **self.extra}
        return {**described, COORDINATE_KEY: True}


def is_coordinate(attrs: Any) -> bool:
    """Whether a node with attributes ``attrs`` is a coordinate array (not a per-clip array)."""
    return COORDINATE_KEY in dict(attrs)


def store_coordinates(dims: tuple[str, ...], per_clip_shape: tuple[int, ...], segment_s: float, classes: list[str]) -> dict[str, Coordinate]:
    """The coordinates every store defines, for an array with per-clip axes ``dims`` of sizes
    ``per_clip_shape``: segment start times along ``segment`` and class names along ``class``
    (when the axis has one entry per class of the store)."""
    out = {}
    for dim, size in zip(dims, per_clip_shape):
        if dim == "segment":
            out[dim] = Coordinate(np.arange(size) * float(segment_s), "s", "segment start within the clip")
        elif dim == "class" and size == len(classes):
            out[dim] = Coordinate(np.array(classes, dtype=str), "", "scene class")
    return out


def write_coordinate(group: zarr.Group, name: str, coordinate: Coordinate) -> None:
    """Create or update the coordinate array ``name`` of ``group``; a per-clip array or group of
    that name is left alone.

    An existing coordinate of the same kind (text, or the same numeric dtype) is resized in place,
    never deleted first, so two stages writing arrays of one group at once (each under its own
    lock) and a reader opening the group meanwhile always find it; one of another dtype is
    overwritten. Values already recorded are not written again.
    """
    values = np.asarray(coordinate.values)
    is_text = values.dtype.kind in "US"
    try:
        array = group[name]
    except KeyError:
        array = None
    if array is not None and not (isinstance(array, zarr.Array) and is_coordinate(array.attrs)):
        return
    same_kind = array is not None and (array.dtype.kind in "OTU" if is_text else np.dtype(array.dtype) == values.dtype)
    if same_kind:
        if dict(array.attrs) != coordinate.attrs():
            array.attrs.put(coordinate.attrs())
        if array.shape == values.shape and np.array_equal(array[:], values):
            return  # as recorded: a stage run again rewrites nothing
        if array.shape != values.shape:
            array.resize(values.shape)
    else:
        array = group.create_array(name, shape=values.shape, chunks=values.shape or (1,), dtype=str if is_text else values.dtype,
                                   dimension_names=(name,), fill_value="" if is_text else 0, attributes=coordinate.attrs(), overwrite=True)
    if values.size:
        array[:] = values


def align_group(group: zarr.Group, arrays: list[zarr.Array], clip_ids: np.ndarray) -> None:
    """Grow ``arrays``, the per-clip arrays of ``group``, to the longest of them (at most
    ``len(clip_ids)`` rows) and write the group's ``clip`` coordinate, the first that many ``clip_ids``."""
    if not arrays:
        return
    n = min(len(clip_ids), max(a.shape[0] for a in arrays))
    for array in arrays:
        if array.shape[0] < n:
            array.resize((n, *array.shape[1:]))
    write_coordinate(group, CLIP_AXIS, Coordinate(np.asarray(clip_ids[:n], dtype=str), "", "clip id"))
