"""featstore.torch.StoreDataset with real torch on CPU: DataLoader workers under fork and spawn
serve every unit once per epoch, a real 2-process DDP run (gloo) splits the epoch disjointly,
set_epoch reshuffles, the seed repeats, the object pickles.

Units are identified by the bytes of their served values (no mixup, no augmentation), looked up in
a table made by the numpy loader from its own plan: a unit served twice, or not at all, or a
value the table lacks, fails."""

from __future__ import annotations

import collections
import itertools
import pickle
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import featstore  # noqa: E402
from featstore.torch import StoreDataset  # noqa: E402

from conftest import mel_windows_store, units_by_value  # noqa: E402

OPTIONS = {"split": None, "batch_size": 4, "block_clips": 2, "deltas": False}


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_root) -> featstore.Store:
    return mel_windows_store(str(tmp_path_factory.mktemp("torchds") / "s.zarr"), demo_root)


@pytest.fixture(scope="module")
def unit_of(store) -> dict[bytes, tuple[int, int]]:
    return units_by_value(store, **OPTIONS)


def served(loader, unit_of) -> list[tuple[int, int]]:
    """The units one pass over ``loader`` serves, in order (KeyError: a value no unit has)."""
    out = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.float32 and len(x) == len(y) <= 4
        out += [unit_of[example.tobytes()] for example in x.numpy()]
    return out


def every_unit_once(units) -> bool:
    return collections.Counter(units) == collections.Counter((r, u) for r in range(20) for u in range(3))


def two_worker_order(dataset, epoch, unit_of) -> list[tuple[int, int]]:
    """The units a 2-worker DataLoader serves at ``epoch``, in order, made in this process: the
    workers' shares (parts 0 and 1 of the rank's blocks) taken one batch from each in turn."""
    parts = [list(dataset.batches().epoch(epoch, part=p, parts=2)) for p in range(2)]
    batches = [b for pair in itertools.zip_longest(*parts) for b in pair if b is not None]
    return [unit_of[example.tobytes()] for x, _ in batches for example in x]


@pytest.mark.parametrize("context, epochs", [("fork", (0, 1)), ("spawn", (1,))])
def test_dataloader_workers_serve_every_unit_once_per_epoch(store, unit_of, context, epochs):
    dataset = StoreDataset(store, "audio/mel", seed=3, **OPTIONS)
    inline = served(torch.utils.data.DataLoader(dataset, batch_size=None), unit_of)
    assert every_unit_once(inline)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context=context)
    for epoch in epochs:
        dataset.set_epoch(epoch)
        units = served(loader, unit_of)
        assert every_unit_once(units), f"epoch {epoch} under {context}"
        assert sorted(units) == sorted(inline)
        assert units == two_worker_order(dataset, epoch, unit_of), "the epoch set reaches the workers, each serves its part"
    assert two_worker_order(dataset, 0, unit_of) != two_worker_order(dataset, 1, unit_of)
    assert len(loader) == len(dataset) == 15


def test_persistent_workers_serve_the_epochs_in_turn_from_the_one_set_first(store, unit_of):
    dataset = StoreDataset(store, "audio/mel", seed=3, **OPTIONS)
    dataset.set_epoch(2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork", persistent_workers=True)
    passes = [served(loader, unit_of) for _ in range(2)]
    expected = []
    for epoch in (2, 3):
        reference = StoreDataset(store, "audio/mel", seed=3, **OPTIONS)
        reference.set_epoch(epoch)
        expected.append(served(torch.utils.data.DataLoader(reference, batch_size=None, num_workers=2, multiprocessing_context="fork"), unit_of))
    assert passes == expected


def test_set_epoch_reshuffles_and_the_seed_repeats(store, unit_of):
    def order(seed, epoch):
        dataset = StoreDataset(store.url, "audio/mel", seed=seed, **OPTIONS)
        dataset.set_epoch(epoch)
        return served(torch.utils.data.DataLoader(dataset, batch_size=None), unit_of)

    assert order(1, 0) != order(1, 1)
    assert order(1, 1) == order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_unwidened_batches_reach_a_worker_loader_in_the_stored_dtype(store):
    narrow = StoreDataset(store, "audio/mel", seed=5, widen=False, **OPTIONS)
    wide = StoreDataset(store, "audio/mel", seed=5, **OPTIONS)
    pairs = zip(torch.utils.data.DataLoader(narrow, batch_size=None, num_workers=1), torch.utils.data.DataLoader(wide, batch_size=None), strict=True)
    for (xn, yn), (xw, yw) in pairs:
        assert xn.dtype == torch.float16 and xw.dtype == torch.float32
        assert torch.equal(xn.float(), xw) and torch.equal(yn, yw)


def _row_and_unit(pairs: np.ndarray) -> np.ndarray:
    """A paired input that names its unit: (n, 2) float32 (row, unit)."""
    return pairs.astype(np.float32)


def test_a_paired_input_reaches_a_worker_loader_as_a_second_tensor(store):
    dataset = StoreDataset(store, "audio/mel", seed=2, paired=_row_and_unit, **OPTIONS)
    host = list(dataset.batches().epoch(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1)
    n = 0
    for ((x, paired), y), ((xh, ph), yh) in zip(loader, host, strict=True):
        assert x.dtype == paired.dtype == torch.float32 and paired.shape == (len(x), 2)
        assert torch.equal(x, torch.from_numpy(xh)) and torch.equal(paired, torch.from_numpy(ph)) and torch.equal(y, torch.from_numpy(yh))
        n += len(x)
    assert n == 60


def test_the_dataset_pickles_and_the_copy_serves_the_same_batches(store):
    dataset = StoreDataset(store, "audio/mel", seed=4, mixup_alpha=0.4, workers=2, **OPTIONS)
    first = [x for x, _ in dataset]  # builds the loader (threads, open arrays) in this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._batches is None and (copy.rank, copy.world_size) == (0, 1)
    again = [x for x, _ in copy]
    assert len(first) == len(again) == len(dataset)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _ddp_rank(rank: int, port: int, url: str, out: str) -> None:
    """One DDP process: rank and world size come from torch.distributed; its units go to a file."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        dataset = StoreDataset(url, "audio/mel", seed=7, **OPTIONS)
        assert (dataset.rank, dataset.world_size) == (rank, 2)
        dataset.set_epoch(1)
        batches = list(torch.utils.data.DataLoader(dataset, batch_size=None))
        counts = [torch.zeros(1, dtype=torch.int64) for _ in range(2)]
        torch.distributed.all_gather(counts, torch.tensor([len(batches)]))
        np.save(f"{out}/rank{rank}.npy", np.concatenate([x.numpy() for x, _ in batches]))
        np.save(f"{out}/counts{rank}.npy", np.array([int(c) for c in counts] + [len(dataset)]))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_two_ddp_ranks_split_the_epoch_disjointly_with_equal_batch_counts(store, unit_of, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(port, store.url, str(tmp_path)), nprocs=2, join=True)
    units = [[unit_of[x.tobytes()] for x in np.load(tmp_path / f"rank{r}.npy")] for r in range(2)]
    assert not set(units[0]) & set(units[1]), "no unit on both ranks"
    assert every_unit_once(units[0] + units[1]), "together the ranks cover the epoch"
    for r in range(2):
        gathered = np.load(tmp_path / f"counts{r}.npy")
        assert gathered[0] == gathered[1] == gathered[2], "equal batch counts on both ranks, as len() says"


def test_device_draws_reach_a_worker_loader_and_apply_as_the_keras_ops_do(store):
    """augment_on="device": ((x, draws), y) tensors from a worker process; augment_on_device gives
    the loader's own host batch for mixup, and Keras' values for a crop and flip of frames."""
    from featstore.augment import augment_draws, mixup_draws
    from featstore.models.device_augment import device_augment
    from featstore.torch import augment_on_device

    options = {**OPTIONS, "mixup_alpha": 0.4, "seed": 2}
    loader = torch.utils.data.DataLoader(StoreDataset(store, "audio/mel", augment_on="device", **options), batch_size=None, num_workers=1)
    host = StoreDataset(store, "audio/mel", **options).batches().epoch(0)
    for ((x, draws), y), (xh, yh) in zip(loader, host, strict=True):
        assert x.dtype == torch.float16 and draws["mix_partner"].dtype == torch.int32
        np.testing.assert_array_equal(y.numpy(), yh)
        np.testing.assert_allclose(augment_on_device(x, draws).numpy(), xh, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 24, 40, 3)).astype(np.uint8)
    boxes, flips = augment_draws(8, 24, 40, rng)
    lam, perm = mixup_draws(8, 0.4, rng)
    draws = {"crop_box": boxes.astype(np.float32), "flip": flips, "mix_weight": lam, "mix_partner": perm.astype(np.int32)}
    reference = np.asarray(device_augment(frames, draws))
    ours = augment_on_device(torch.from_numpy(frames), {k: torch.from_numpy(v) for k, v in draws.items()}).numpy()
    assert flips.any() and not flips.all()
    np.testing.assert_allclose(ours, reference, atol=2e-3)
