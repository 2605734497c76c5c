"""PyTorch's view of the training loader: :class:`StoreDataset`, an ``IterableDataset`` of batches.

Used as ``DataLoader(StoreDataset(...), batch_size=None, num_workers=N)``: the dataset makes whole
batches itself (:class:`featstore.loader.TrainingBatches`), the DataLoader only runs it in worker
processes. Sharding, stated exactly: each epoch's clip permutation is cut disjointly by training
rank (equal shares: ``balance="pad"`` repeats clips from the start, ``"drop"`` leaves the
remainder out), and a rank's blocks of whole batches are dealt to its DataLoader workers (block
``b`` to worker ``b % num_workers``). Every unit is served once per epoch over all ranks and workers
(plus the repeats of ``"pad"``); a batch depends on (seed, epoch, rank, batch number) only, so the
same seed gives the same batches whatever ``num_workers``.

Fork and spawn: the object holds only picklable things (the store's URL and storage options, the
array path, the options); the :class:`~featstore.loader.TrainingBatches` (open arrays, and its
decompression threads once it reads) is made in the process that iterates, on its first use there.

This module imports torch; ``import featstore`` does not import it (``pip install featstore[torch]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed
import torch.utils.data

from featstore.loader import TrainingBatches, training_batches
from featstore.store import Store, open_store


def augment_on_device(x: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply the loader's draws (``augment_on="device"``) where ``x`` is: float32, same shape.

    ``x`` (batch, ...) channels last, any real dtype (the stored one), on any device; ``draws`` the
    batch's dict of tensors (moved there too). Frames (when ``draws`` has ``crop_box``) are cropped,
    resized back and flipped by one bilinear ``grid_sample`` with Pillow's pixel-centre convention
    (edge pixels repeat beyond the frame), then every example is mixed with its partner:
    ``w x + (1 - w) x[partner]``. The same values as
    :func:`featstore.models.device_augment.device_augment` (Keras) within float rounding.

    >>> for (x, draws), y in loader:                                            # doctest: +SKIP
    ...     x = augment_on_device(x.to(device), {k: v.to(device) for k, v in draws.items()})
    """
    x = x.float()
    if "crop_box" in draws:
        n, height, width, _ = x.shape
        left, top, right, bottom = draws["crop_box"].float().unbind(1)
        sign = 1.0 - 2.0 * draws["flip"].float()
        # normalised input coordinate (align_corners=False) of normalised output u: scale u + shift
        scale_x, scale_y = (right - left) / width, (bottom - top) / height
        shift_x, shift_y = 2 * left / width + scale_x - 1, 2 * top / height + scale_y - 1
        zeros = torch.zeros_like(left)
        theta = torch.stack([torch.stack([sign * scale_x, zeros, shift_x], 1), torch.stack([zeros, scale_y, shift_y], 1)], 1)
        grid = torch.nn.functional.affine_grid(theta, [n, x.shape[3], height, width], align_corners=False)
        nchw = torch.nn.functional.grid_sample(x.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = nchw.permute(0, 2, 3, 1)
    weight = draws["mix_weight"].float().reshape(-1, *(1,) * (x.dim() - 1))
    return weight * x + (1 - weight) * x[draws["mix_partner"].long()]


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``rank``/``world_size`` as given, else torch.distributed's when it is initialised, else 0 of 1."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    return int(rank), int(world_size)


class StoreDataset(torch.utils.data.IterableDataset):
    """Shuffled ``(x, y)`` tensor batches of ``input_array`` for a PyTorch ``DataLoader``: float32,
    or ``x`` in the stored dtype with ``widen=False`` (cast it on the device); with
    ``augment_on="device"``, ``((x, draws), y)``, ``x`` in the stored dtype and ``draws`` a dict
    of tensors for :func:`augment_on_device` (mixup and the frames' augmentation on the GPU);
    with a ``paired`` input, ``((x, paired), y)``, both float32.

    ``x`` is (batch, ...) as :func:`~featstore.loader.training_batches` makes it: audio (batch, bin,
    frame, channel), frames (batch, size, size, 3), channels last (``x.permute(0, 3, 1, 2)`` for
    NCHW); ``y`` is (batch, classes), one-hot or mixed. Use it with ``batch_size=None`` (the
    batches are made here).

    Parameters
    ----------
    store : Store or str or os.PathLike
        The store, or its path or fsspec URL (its storage options are kept from a :class:`Store`).
    input_array : str
        The per-clip array to train from ("audio/mel", "frames/rgb"...).
    batch_size : int
        Examples per batch (per rank: the global batch is ``batch_size * world_size``).
    seed : int
        With the epoch (:meth:`set_epoch`), fixes every batch.
    rank, world_size : int, optional
        This process's share of every epoch; default: torch.distributed's rank and world size
        when it is initialised (when the dataset is made), else 0 of 1.
    drop_last : bool
        Leave out the rank's last batch when it is short.
    **loader_options
        For :func:`~featstore.loader.training_batches`: split, rows, window_s, units_per_clip,
        deltas, shuffle, block_clips, run_clips, mixup_alpha, augment, widen, augment_on, paired (a picklable callable: it
        crosses to the DataLoader's workers), balance ("pad" or "drop") and
        ``workers`` (the loader's own threads per reading process; 0 inside DataLoader workers
        unless given).

    Notes
    -----
    The epoch is the one set by :meth:`set_epoch` (0 until then), as with PyTorch's
    ``DistributedSampler``: call it before each epoch's pass over the DataLoader. With
    ``persistent_workers=False`` (the default) each pass copies the dataset to fresh workers, so
    they see the epoch set. With ``persistent_workers=True`` the workers keep the copy of the first
    pass: pass ``k`` serves epoch ``e + k``, ``e`` being the epoch set before the first pass (a
    later :meth:`set_epoch` does not reach them), which is the usual ``for epoch in range(e, n)``
    loop.
    """

    def __init__(self, store: Store | str | os.PathLike, input_array: str, *, batch_size: int = 64, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = False, **loader_options: Any):
        super().__init__()
        if isinstance(store, Store):
            self.url, self.storage_options = store.url, dict(store.storage_options)
        else:
            self.url, self.storage_options = os.fspath(store), {}
        self.input_array, self.batch_size, self.seed, self.drop_last = input_array, batch_size, seed, drop_last
        self.rank, self.world_size = _rank_and_world_size(rank, world_size)
        self.loader_options = dict(loader_options)
        self.epoch = 0
        self._passes = 0  # passes over this copy inside one DataLoader worker (persistent workers)
        self._batches: TrainingBatches | None = None
        self._pid: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass serves (reshuffles; the DistributedSampler convention)."""
        self.epoch = int(epoch)

    def batches(self, *, in_worker: bool = False) -> TrainingBatches:
        """This process's :class:`~featstore.loader.TrainingBatches` (made here on first use)."""
        if self._batches is None or self._pid != os.getpid():
            options = dict(self.loader_options)
            if in_worker:
                options.setdefault("workers", 0)
            store = open_store(self.url, self.storage_options or None)
            self._batches = training_batches(store, self.input_array, batch_size=self.batch_size, seed=self.seed,
                                             rank=self.rank, world_size=self.world_size, drop_last=self.drop_last, **options)
            self._pid = os.getpid()
        return self._batches

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank and in every epoch)."""
        return len(self.batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        part, parts = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch + self._passes
        if info is not None:
            self._passes += 1
        for x, y in self.batches(in_worker=info is not None).epoch(epoch, part=part, parts=parts):
            yield _tensors(x), _tensors(y)

    def __getstate__(self) -> dict[str, Any]:
        # what crosses to a spawned worker: the recipe, never the open arrays or threads
        return {**self.__dict__, "_batches": None, "_pid": None}


def _tensors(value):
    """``value`` with each numpy array made a tensor: an array, or the loader's tuples ``(x, draws)``
    (``augment_on="device"``, draws a dict) and ``(x, paired)``."""
    if isinstance(value, tuple):
        return tuple(_tensors(v) for v in value)
    if isinstance(value, dict):
        return {name: _tensors(v) for name, v in value.items()}
    return torch.from_numpy(np.ascontiguousarray(value))
