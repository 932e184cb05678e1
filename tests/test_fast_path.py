"""The in-memory fast path (`TensorLoader`): every sample once per epoch in a seeded order, batches equal
to indexing the dataset (batch transform included, precomputed or not), sharding by rank, mid-epoch
resume; and on the digits example it trains to the same accuracy as the DataLoader path."""

from __future__ import annotations

import pytest
import torch

import trainlab
from trainlab.data.base import ArrayDataset
from trainlab.data.loaders import ResumableDataLoader, TensorLoader, make_loader, split_transform
from trainlab.data.transforms import BatchTransform
from trainlab.engine.loop import evaluate
from trainlab.metrics import TaskMetrics
from trainlab.pipeline import build_pipeline

N = 50


def indexed(n: int = N) -> ArrayDataset:
    """x[i] = [i, -i] and y[i] = i, so a batch's targets say which samples it holds."""
    i = torch.arange(n)
    return ArrayDataset(torch.stack([i, -i], 1).float(), i)


def images(n: int = N, items=None) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 6, 6), generator=g, dtype=torch.uint8)
    items = items or ["ToTensor", {"Normalize": {"mean": [0.4], "std": [0.3]}}]
    return ArrayDataset(x, torch.arange(n), BatchTransform(items))


def epoch_targets(loader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


def test_an_epoch_yields_every_sample_once_in_an_order_fixed_by_the_seed():
    loader = TensorLoader(indexed(), 8, shuffle=True, seed=3)
    assert len(loader) == 7  # 50 samples: 6 batches of 8 and one of 2
    first, second = epoch_targets(loader), epoch_targets(loader)  # iterating again is the next epoch
    for order in (first, second):
        assert sorted(order.tolist()) == list(range(N))
    assert not torch.equal(first, second)  # reshuffled per epoch
    assert not torch.equal(first, torch.arange(N))
    again = TensorLoader(indexed(), 8, shuffle=True, seed=3)
    assert torch.equal(epoch_targets(again), first) and torch.equal(epoch_targets(again), second)
    assert not torch.equal(epoch_targets(TensorLoader(indexed(), 8, shuffle=True, seed=4)), first)
    assert torch.equal(epoch_targets(TensorLoader(indexed(), 8, shuffle=False)), torch.arange(N))


def test_drop_last_leaves_out_only_the_short_batch():
    loader = TensorLoader(indexed(), 8, shuffle=True, seed=1, drop_last=True)
    sizes = [len(y) for _, y in loader]
    assert sizes == [8] * 6


@pytest.mark.parametrize("limit", [None, 0])  # precomputed transform head, and per batch
def test_batches_equal_indexing_the_dataset_with_its_transform(limit):
    ds = images()
    kwargs = {} if limit is None else {"precompute_limit": limit}
    loader = TensorLoader(ds, 16, shuffle=True, seed=0, **kwargs)
    assert loader.precomputed is (limit is None)
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 6, 6)
        assert torch.equal(x, torch.stack([ds[int(i)][0] for i in y]))
        assert torch.equal(x, ds.transform(ds.x[y]))


def test_a_random_transform_runs_per_batch_after_its_precomputed_head():
    items = [
        "ToTensor",
        {"Normalize": {"mean": [0.4], "std": [0.3]}},
        {"RandomCrop": {"size": 6, "padding": 1}},
        "RandomHorizontalFlip",
    ]
    ds = images(items=items)
    head, rest = split_transform(ds.transform)
    assert head is not None and rest is not None
    loader = TensorLoader(ds, 16, shuffle=True, seed=0)
    assert loader.precomputed
    torch.manual_seed(7)
    batches = list(loader)
    torch.manual_seed(7)  # the same random draws, in the same order, through the whole transform
    for x, y in batches:
        assert torch.equal(x, ds.transform(ds.x[y]))
    torch.manual_seed(8)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, loader))  # augmentation is random


def test_precompute_is_skipped_above_the_memory_limit():
    ds = images()
    small = TensorLoader(ds, 16, precompute_limit=ds.x.numel() * 4 - 1)  # floats need 4 bytes a pixel
    assert not small.precomputed and small.inputs is small.x
    x, y = next(iter(small))
    assert torch.equal(x, ds.transform(ds.x[y]))


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_by_rank_cover_the_data(world_size):
    shards = [
        epoch_targets(TensorLoader(indexed(), 5, shuffle=True, seed=2, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    per_rank = -(-N // world_size)
    assert all(
        len(s) == per_rank for s in shards
    )  # equal counts: padded by wrapping around, like DistributedSampler
    together = torch.cat(shards).tolist()
    assert set(together) == set(range(N)) and len(together) == per_rank * world_size
    if N % world_size == 0:  # no padding needed: the shards are disjoint
        assert len(set(together)) == len(together)


@pytest.mark.parametrize("in_memory", [True, False])
def test_resuming_from_a_mid_epoch_state_gives_the_remaining_batches(in_memory):
    def make():
        return make_loader(images(), 8, shuffle=True, seed=5, in_memory=in_memory)

    reference = make()
    assert isinstance(reference, TensorLoader if in_memory else ResumableDataLoader)
    reference.set_epoch(1)
    expected = list(reference)
    partial = make()
    partial.set_epoch(1)
    it = iter(partial)
    for _ in range(3):
        next(it)
    state = partial.state_dict()
    assert state == {"epoch": 1, "position": 3}
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(expected) - 3
    for (xa, ya), (xb, yb) in zip(rest, expected[3:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.state_dict() == {"epoch": 2, "position": 0}


@pytest.mark.parametrize("world_size", [1, 3])
def test_a_split_kept_as_row_numbers_batches_shards_and_resumes_like_its_copy(world_size):
    """A subset of a dataset with `rows` (as a split of a memory-mapped image cache) keeps row numbers
    into the same storage; its loader serves the copied split's batches, per rank, from mid-epoch."""
    ds = images(2 * N)
    index = torch.arange(1, 2 * N, 2)  # every other sample
    kept = ArrayDataset(ds.x, ds.y, ds.transform, rows=torch.arange(2 * N)).subset(index)
    copied = ds.subset(index)
    assert kept.storage is ds.x and torch.equal(kept.rows, index) and torch.equal(kept.x, copied.x)
    assert torch.equal(kept.subset([3, 0]).rows, index[[3, 0]])  # a subset of a subset: rows composed
    for rank in range(world_size):
        a, b = (TensorLoader(d, 8, seed=5, rank=rank, world_size=world_size) for d in (kept, copied))
        assert not a.precomputed and b.precomputed  # the head runs per batch: the split stays where it is
        b.set_epoch(1)
        expected = list(b)
        a.load_state_dict({"epoch": 1, "position": 2})
        rest = list(a)
        assert len(rest) == len(expected) - 2 and a.state_dict() == {"epoch": 2, "position": 0}
        for (xa, ya), (xb, yb) in zip(rest, expected[2:], strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_the_dataloader_path_sees_the_same_batches_as_the_fast_path():
    fast = make_loader(images(), 8, shuffle=True, seed=9)
    slow = make_loader(images(), 8, shuffle=True, seed=9, in_memory=False)
    for (xa, ya), (xb, yb) in zip(fast, slow):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def train_digits(in_memory):
    """The default digits example (2 epochs, a small MLP), trained and tested without a run directory."""
    cfg = trainlab.load_config(
        None, {"train.epochs": 2, "model.name": "mlp", "model.hidden": [64], "data.in_memory": in_memory}
    )
    pipe = build_pipeline(cfg)
    assert isinstance(pipe.train_loader, TensorLoader if in_memory == "auto" else ResumableDataLoader)
    trainer = trainlab.Trainer(
        pipe.model,
        pipe.train_loader,
        pipe.val_loader,
        loss_fn=pipe.loss_fn,
        optimizer=pipe.optimizer,
        scheduler=pipe.scheduler,
        task=pipe.bundle.task,
        train=cfg.train,
    )
    trainer.fit()
    logs, _ = evaluate(
        trainer.model,
        pipe.test_loader,
        pipe.loss_fn,
        TaskMetrics("classification", 10, 10, ["accuracy"]),
        pipe.device,
    )
    return logs


def test_digits_trains_to_the_same_accuracy_through_either_path():
    fast, slow = train_digits("auto"), train_digits(False)
    assert fast["accuracy"] > 0.8  # it learned
    # Both paths visit the samples in the same seeded order (epoch_order) with the same values, and
    # neither draws from the global RNG, so the two runs are the same run.
    assert fast["accuracy"] == slow["accuracy"]
    assert abs(fast["loss"] - slow["loss"]) < 1e-5


def test_dataloader_path_keeps_its_workers_across_epochs_by_default():
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.arange(16).float().reshape(16, 1), torch.arange(16))
    assert ResumableDataLoader(ds, 4, num_workers=1).loader.persistent_workers is True
    assert (
        ResumableDataLoader(ds, 4, num_workers=1, persistent_workers=False).loader.persistent_workers is False
    )
    assert ResumableDataLoader(ds, 4, num_workers=0).loader.persistent_workers is False
    loader = ResumableDataLoader(ds, 4, shuffle=True, seed=1, num_workers=1)
    first, second = epoch_targets(loader), epoch_targets(loader)  # the same workers serve the next epoch
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(16)) and not torch.equal(
        first, second
    )
