"""Loaders: the in-memory fast path and the DataLoader path, both resumable mid-epoch.

Fast path (`TensorLoader`): for an `ArrayDataset` the whole split lives as tensors on the training
device; a batch is `x[perm[i:i+B]]` — no per-sample `__getitem__`, no collate. The deterministic
head of a `BatchTransform` (float conversion, normalisation, resize, ...) is applied once to the
whole split when its output fits `PRECOMPUTE_LIMIT_BYTES` (it gives the same values per sample, and
saves 3-4 elementwise passes per step: about 12% of a small MLP's step on a 2-core CPU); what follows
the first random item (crop, flip) runs per batch with per-sample randomness.

DataLoader path (`make_dataloader`): for lazy data (large image folders, user datasets); decoding
runs in the workers. A `ResumableSampler` gives the same seeded order and can start mid-epoch.

Both orders are a pure function of (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one; both shard by rank the way DistributedSampler does (pad by wrapping, then
`order[rank::world_size]`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from trainlab.data.base import ArrayDataset
from trainlab.data.transforms import BatchTransform, TransformedDataset

# Inputs transformed once may take up to this many bytes (uint8 images become 4x larger as floats);
# above it, conversion and normalisation run per batch.
PRECOMPUTE_LIMIT_BYTES = 1 << 30
_PRECOMPUTE_CHUNK = 8192  # samples transformed at a time while precomputing (bounds the temporary memory)
# On CUDA a split lives on the GPU when its tensors take at most this share of the GPU's free memory
# (the rest is for the model, optimizer state and activations); else in host memory, with each batch
# gathered into pinned memory and copied with non_blocking=True.
GPU_DATA_SHARE = 0.3


def epoch_order(
    n: int, epoch: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Sample indices of one epoch for one rank (the DistributedSampler recipe: pad, then stride)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if world_size > 1:
        total = -(-n // world_size) * world_size
        if total > n:
            order = torch.cat([order, order[: total - n]])
        order = order[rank::world_size]
    return order


class _Resumable:
    """Epoch and position (batches already served this epoch): the loader's whole state."""

    epoch: int = 0
    position: int = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class _ShardedBatches(_Resumable):
    """Batches of `batch_size` over this epoch's `epoch_order` of n samples, this rank's share: the length
    and order that TensorLoader and CroppedImageLoader share."""

    def _batching(
        self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, rank: int, world_size: int
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.samples = -(-n // world_size) if world_size > 1 else n

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples // self.batch_size
        return -(-self.samples // self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        return epoch_order(self.n, self.epoch, self.seed, self.shuffle, self.rank, self.world_size)


def split_transform(transform: Callable | None) -> tuple[Callable | None, Callable | None]:
    """(deterministic head, per-batch rest) of a batch transform; head(x) is the same for a sample
    whatever batch it is in, so it can run once over the whole split. A transform that is not a
    `BatchTransform` may be random: it stays whole, per batch."""
    if transform is None:
        return None, None
    if not isinstance(transform, BatchTransform):
        return None, transform
    k = 0
    while k < len(transform.ops) and _is_deterministic(transform.transforms[k]):
        k += 1
    if k == len(transform.ops):
        return transform, None
    if k == 0:
        return None, transform
    head_ops, rest_ops = transform.ops[:k], transform.ops[k:]

    def head(x: torch.Tensor) -> torch.Tensor:
        for op in head_ops:
            x = op(x, None)
        return x

    def rest(x: torch.Tensor) -> torch.Tensor:
        for op in rest_ops:
            x = op(x, transform.generator)
        if not x.is_floating_point():  # BatchTransform's last step: images become floats in [0, 1]
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return x.as_subclass(torch.Tensor)

    return head, rest


def _is_deterministic(t: Any) -> bool:
    from torchvision.transforms import v2

    return isinstance(
        t,
        (
            v2.ToImage,
            v2.PILToTensor,
            v2.ToPureTensor,
            v2.Identity,
            v2.ToDtype,
            v2.ConvertImageDtype,
            v2.Normalize,
            v2.Resize,
            v2.CenterCrop,
            v2.Pad,
            v2.Grayscale,
        ),
    )


def precompute(
    x: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], limit_bytes: int = PRECOMPUTE_LIMIT_BYTES
) -> torch.Tensor | None:
    """head(x) for the whole split, in chunks; None when the result would exceed `limit_bytes`."""
    if not len(x):
        return None
    first = head(x[:1])
    if first.element_size() * first.numel() * len(x) > limit_bytes:
        return None
    out = torch.empty((len(x), *first.shape[1:]), dtype=first.dtype, device=first.device)
    for i in range(0, len(x), _PRECOMPUTE_CHUNK):
        out[i : i + _PRECOMPUTE_CHUNK] = head(x[i : i + _PRECOMPUTE_CHUNK])
    return out


def data_placement(
    nbytes: int, device: torch.device, share: float | None = None, free_bytes: int | None = None
) -> str:
    """Where a split of `nbytes` lives for training on `device`: "device" (all of it there; batches are
    gathered on the device, no copy per step) or "pinned" (CUDA only, when it does not fit `share` of
    the free GPU memory: batches are gathered on the host into pinned memory and copied asynchronously).
    `share` defaults to GPU_DATA_SHARE, `free_bytes` to `torch.cuda.mem_get_info`'s free memory."""
    if device.type != "cuda":
        return "device"
    share = GPU_DATA_SHARE if share is None else share
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return "device" if nbytes <= share * free_bytes else "pinned"


class TensorLoader(_ShardedBatches):
    """Batches of an in-memory `ArrayDataset` by indexing its tensors on `device`.

    Epoch `e` visits `epoch_order(n, e, seed, ...)` in slices of `batch_size`; its state is (epoch,
    position), so `load_state_dict` resumes mid-epoch with the same remaining batches. Batches equal
    `dataset.transform(dataset.x[idx])` (the transform's deterministic head is precomputed when it
    fits `precompute_limit` bytes: 0 turns that off). On CUDA a split too large for the GPU
    (`data_placement`) stays on the host: batches come to the device by pinned, non_blocking copies.
    A dataset with `rows` (a split of a memory-mapped cache) stays on the host whatever the device:
    each batch gathers its rows from the file's pages, then goes to the device (pinned, non_blocking on
    CUDA), and the head runs per batch (precomputing it would hold the split in memory, which the disk
    cache is there to avoid).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        precompute_limit: int = PRECOMPUTE_LIMIT_BYTES,
    ):
        self.dataset = dataset
        self.device = torch.device(device)
        self.rows = dataset.rows  # sample i is row rows[i] of x; None: row i
        if self.rows is None:
            self.placement = data_placement(dataset.x.nbytes + dataset.y.nbytes, self.device)
        else:  # the mapped file stays on the host; "host": batches are copied to another accelerator
            self.placement = {"cuda": "pinned", "cpu": "device"}.get(self.device.type, "host")
        storage = self.device if self.placement == "device" else torch.device("cpu")
        self.x = dataset.storage.to(storage)  # moved once; batches are rows of these tensors
        self.y = dataset.y.to(storage)
        self.transform = dataset.transform  # the whole transform (for callers peeking at raw x)
        head, rest = split_transform(dataset.transform)
        self.inputs, self.batch_transform = self.x, dataset.transform
        if head is not None and precompute_limit > 0 and self.rows is None:
            with torch.no_grad():
                done = precompute(self.x, head, precompute_limit)
            if done is not None:
                self.inputs, self.batch_transform = done, rest
        self.precomputed = self.inputs is not self.x
        self._batching(len(self.y), batch_size, shuffle, drop_last, seed, rank, world_size)

    def gather(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Inputs of the samples at `index` before the transform, where the loader keeps them."""
        return self.x[index if self.rows is None else self.rows[index]]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs, transform = self.batch_size, self.batch_transform
        order = self.epoch_indices().to(self.x.device)
        rows = order if self.rows is None else self.rows[order]  # the row of x of each sample in order
        pinned = self.placement == "pinned"
        for b in range(self.position, len(self)):
            idx = order[b * bs : (b + 1) * bs]
            # index_select, not x[idx]: the same rows (a copy, so the model may change its input in
            # place) in half the time on the CPU for 64 random MNIST rows (benchmarks/bench_kernels.py)
            x = torch.index_select(self.inputs, 0, rows[b * bs : (b + 1) * bs])
            y = torch.index_select(self.y, 0, idx)
            if pinned:  # pinned buffers come from torch's caching host allocator, reused once copied
                x = x.pin_memory().to(self.device, non_blocking=True)
                y = y.pin_memory().to(self.device, non_blocking=True)
            elif self.placement == "host":
                x, y = x.to(self.device), y.to(self.device)
            if transform is not None:
                x = transform(x)
            self.position = b + 1
            yield x, y
        self.epoch, self.position = self.epoch + 1, 0


class CroppedImageLoader(_ShardedBatches):
    """Batches of images decoded once at their own sizes (`CachedImages`) under a list that starts with
    RandomResizedCrop (`TransformedDataset.batched`): the crop brings a batch's images to one size and
    the rest of the list runs on the batch, in this process, as on the fast path (no DataLoader, no
    per-sample transform call, no collate). The order is `epoch_order` (sharded by rank) and the random
    draws come from the global CPU RNG, which checkpoints restore: a resumed run sees the same batches."""

    def __init__(
        self,
        dataset: TransformedDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.dataset, self.transform = dataset, dataset.batched
        self.device = torch.device(device)
        self.pinned = pin_memory and self.device.type == "cuda"
        self._batching(len(dataset), batch_size, shuffle, drop_last, seed, rank, world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raw, bs = self.dataset.dataset, self.batch_size  # raw: uint8 (C, H, W) images and their targets
        order = self.epoch_indices().tolist()
        for b in range(self.position, len(self)):
            items = [raw[i] for i in order[b * bs : (b + 1) * bs]]
            x = self.transform([image for image, _ in items])
            y = torch.stack([torch.as_tensor(target) for _, target in items])
            if self.device.type != "cpu":
                x, y = (t.pin_memory() if self.pinned else t for t in (x, y))
                x, y = (t.to(self.device, non_blocking=self.pinned) for t in (x, y))
            self.position = b + 1
            yield x, y
        self.epoch, self.position = self.epoch + 1, 0


class ResumableSampler(Sampler[tuple[int, int]], _Resumable):
    """Yields (epoch, index) pairs: the epoch travels with each index into the workers."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
    ):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(epoch_order(self.n, 0, 0, False, self.rank, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, self.epoch, self.seed, self.shuffle, self.rank, self.world_size)
        for i in order[self.position * self.batch_size :].tolist():
            yield self.epoch, i


class _SeededItems(Dataset):
    """Makes per-sample random transforms a function of (seed, epoch, index), so that they repeat
    exactly on resume whatever the number of workers. Without workers the caller's RNG is restored."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        info = torch.utils.data.get_worker_info()
        item_seed = ((self.seed * 1_000_003 + epoch) * 10_000_019 + i) % (2**63)
        # The CPU generator only (what per-sample transforms draw from): torch.manual_seed also seeds
        # every accelerator, which costs 24x more per call (0.18 ms, about 10% of a cached image's
        # crop-and-flip here).
        if info is None:
            state = torch.get_rng_state()
            torch.default_generator.manual_seed(item_seed)
            try:
                return self.dataset[i]
            finally:
                torch.set_rng_state(state)
        torch.default_generator.manual_seed(item_seed)
        return self.dataset[i]


class ResumableDataLoader(_Resumable):
    """A torch DataLoader over a ResumableSampler; tracks the position in batches."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        collate_fn=None,
    ):
        self.sampler = ResumableSampler(
            len(dataset), batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size
        )
        self.batch_size, self.drop_last = batch_size, drop_last
        self.dataset = dataset
        self.loader = DataLoader(
            _SeededItems(dataset, seed),
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_fn,
            # workers live across epochs unless the user says otherwise
            persistent_workers=num_workers > 0 and persistent_workers is not False,
        )

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.sampler.epoch, self.sampler.position = self.epoch, self.position

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self.sampler.epoch, self.sampler.position = self.epoch, self.position

    def __iter__(self) -> Iterator[Any]:
        self.sampler.epoch, self.sampler.position = self.epoch, self.position
        for batch in self.loader:
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    pin_memory: bool | str = "auto",
    persistent_workers: bool | None = None,
    in_memory: bool | str = "auto",
    rank: int = 0,
    world_size: int = 1,
) -> TensorLoader | CroppedImageLoader | ResumableDataLoader:
    """The fast path for tensor-backed data (and for images decoded once under a crop-first list), the
    DataLoader path for everything else."""
    device = torch.device(device)
    if isinstance(dataset, ArrayDataset) and in_memory is not False:
        return TensorLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            device=device,
            rank=rank,
            world_size=world_size,
        )
    if pin_memory == "auto":
        pin_memory = device.type == "cuda"
    if getattr(dataset, "batched", None) is not None and in_memory is not False:
        return CroppedImageLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            device=device,
            pin_memory=bool(pin_memory),
            rank=rank,
            world_size=world_size,
        )
    return ResumableDataLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        seed=seed,
        num_workers=num_workers,
        pin_memory=bool(pin_memory),
        persistent_workers=persistent_workers,
        rank=rank,
        world_size=world_size,
    )


def as_loader(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> Any:
    """`data` as a loader: a loader (anything iterable that is not a Dataset) as it is; a
    `TensorDataset` of (inputs, targets) on the in-memory fast path; any other Dataset on the
    resumable DataLoader path."""
    if not isinstance(data, Dataset) and hasattr(data, "__iter__"):
        return data
    if (
        isinstance(data, Subset)
        and isinstance(data.dataset, TensorDataset)
        and len(data.dataset.tensors) == 2
    ):
        index = torch.as_tensor(data.indices, dtype=torch.long)  # random_split(TensorDataset(x, y), ...)
        data = ArrayDataset(*(t[index] for t in data.dataset.tensors))
    elif isinstance(data, TensorDataset) and len(data.tensors) == 2:
        data = ArrayDataset(*data.tensors)  # the same samples, batched by index_select instead of per item
    return make_loader(
        data, batch_size, shuffle=shuffle, seed=seed, device=device, rank=rank, world_size=world_size
    )


def default_eval_batch_size(batch_size: int) -> int:
    """4 x the training batch: evaluation keeps no activations for a backward pass, so a larger batch
    is cheaper per sample."""
    return 4 * batch_size
