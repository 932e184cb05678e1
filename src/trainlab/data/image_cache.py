"""Decode an image folder once at the training size, and keep the result in memory or on disk.

The transforms up to the first random or float item (`Resize`, `CenterCrop`, `ToImage`, ...: the
*head*) give the same pixels for a file every epoch, so they run once per file, here:

    file -> decode (torchvision.io for JPEG, PIL for the rest) -> RGB or L -> data.image_size
         -> head -> one uint8 (C, H, W) row of an (N, C, H, W) tensor

A split becomes an `ArrayDataset`, which the fast path (`TensorLoader`) batches by indexing; the
random tail (flips, crops, ...) then runs per batch with per-sample randomness. The head items stay
in the attached transform lists: every head item is idempotent (a `Resize` or `CenterCrop` to the
size an image already has returns it unchanged), so applying the whole list to a cached row gives
what applying it to the decoded file gives. A head that does not bring the files to one size (a
list that starts with `RandomResizedCrop`, or `Resize: 256` on images of several aspect ratios)
cannot be stacked: that split is decoded once all the same, each image at its own size in one flat
buffer (`CachedImages`), and its transforms run per sample in the DataLoader (a note says so). Under
`auto` such a split is cached only in memory: when it does not fit, it is decoded every epoch.

Where the rows live (`data.cache`): `memory` (a tensor), `disk` (a memory-mapped .npy file in
`data.cache_dir`, default `<data.root>/.trainlab-cache/`, or `~/.cache/trainlab/images/` when the
root is not writable), `auto` (memory when every cached split fits `data.cache_memory_mb`, default
25% of the physical memory, else disk). A disk cache (disk_cache.py) is `<split>-<key>.npy` plus a
JSON manifest; the key is a hash of the file list (paths, sizes, modification times), the image mode
and size, the head, the decoded shapes and `CACHE_VERSION`. Both files are written under temporary
names and renamed when complete, the manifest last, and checked (version, key, shape, exact file
size) before use: a cache cut short by a kill, or written by another version, is rebuilt, never
trusted. Memory mode reads a valid disk cache when there is one, and writes none. Writing a cache
removes the caches of the same root and split whose files have changed since (they can never be
valid again) and leftover temporary files of killed writers; caches of the same files under other
transforms or sizes stay (another config may use them).

Under DDP (`trainlab train --nproc N`: a process group of N > 1 ranks) one process per machine
decodes: local rank 0 writes the disk cache while the other ranks wait (`distributed.local_main_first`,
which makes them fail too, with rank 0's message, when it cannot decode), then they map the same
file. `memory` (or `auto` choosing memory) then means the disk cache as well: the page cache holds the
rows once for all ranks instead of one private copy per rank (the summary line says "... into the disk
cache ..., shared by N ranks"), unless the cache folder cannot be written (rank 0 checks it for all):
then each rank decodes into its own memory, and a note says why. With several machines, each
machine's local rank 0 writes its own cache; on a shared file system they write the same file, which
the atomic renames make harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainlab.components import build_list, parse_item
from trainlab.data.base import ArrayDataset
from trainlab.data.disk_cache import (
    CACHE_VERSION,
    cache_dir_problem,
    default_cache_dir,
    file_list_hash,
    prune_stale,
    read_disk_cache,
    write_disk_cache,
)
from trainlab.data.transforms import eval_items, normalize_items, resize_image
from trainlab.engine import distributed
from trainlab.errors import DataError

# uint8 in, uint8 out, deterministic and idempotent: what a cached head may hold.
HEAD_ITEMS = ("ToImage", "PILToTensor", "ToPureTensor", "Identity", "Resize", "CenterCrop")
# Decoded by torchvision.io (libjpeg-turbo: 2-3x PIL's speed here). Not PNG: torchvision 0.29's libpng
# path kills the process (SIGSEGV) on a PNG whose compressed data is broken but whose CRCs are valid,
# which neither PIL's verify() nor skip_bad_files could then catch; PIL raises an error for it.
_TORCHVISION_SUFFIXES = (".jpg", ".jpeg")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError, EOFError)


# ----------------------------------------------------------------------------- decoding


def decode_file(path: str | Path, mode: str) -> torch.Tensor:
    """One image file as a uint8 (C, H, W) tensor in `mode` ('RGB' or 'L').

    JPEG goes through torchvision.io (libjpeg-turbo, the same pixels as PIL for RGB); other formats
    (PNG included, see _TORCHVISION_SUFFIXES) and files torchvision rejects go through PIL, whose
    error is raised.
    """
    if str(path).lower().endswith(_TORCHVISION_SUFFIXES):
        try:
            x = decode_image(read_file(str(path)), ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB)
            if x.dtype == torch.uint8 and x.ndim == 3:
                return x
        except RuntimeError:
            pass  # PIL decides (and names the problem)
    with PIL.Image.open(path) as img:
        return F.pil_to_tensor(img.convert(mode))


def cache_head(items: list[Any] | None, key: str = "data.transforms") -> list[Any]:
    """The longest prefix of a (normalised) transform list made of HEAD_ITEMS."""
    head = []
    for i, item in enumerate(items or []):
        if parse_item(item, f"{key}[{i}]")[0] not in HEAD_ITEMS:
            break
        head.append(item)
    return head


Shape = tuple[int, int, int]  # (C, H, W)


def head_shapes(head: list[Any], channels: int, sizes: list[tuple[int, int]]) -> dict[tuple[int, int], Shape]:
    """{(H, W) of a file: (C, H, W) after `head`}, computed on meta tensors (shapes only, no pixels)."""
    compose = v2.Compose([v2.Identity(), *build_list(head, [v2], "data.transforms")])
    return {
        (h, w): tuple(compose(torch.empty(channels, h, w, dtype=torch.uint8, device="meta")).shape)
        for h, w in set(sizes)
    }


class Plan:
    """Where each file's decoded pixels go: rows of one (N, C, H, W) tensor when they all have one size,
    else slices of one flat buffer at `offsets`."""

    def __init__(self, head: list[Any], shapes: list[Shape], stack: bool = True):
        self.head, self.shapes = head, shapes
        self.fixed = stack and len(set(shapes)) <= 1
        sizes = [c * h * w for c, h, w in shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.nbytes = int(self.offsets[-1])
        self.storage_shape = (len(shapes), *shapes[0]) if self.fixed and shapes else (self.nbytes,)

    def row(self, storage: torch.Tensor, i: int) -> torch.Tensor:
        if self.fixed:
            return storage[i]
        return storage[int(self.offsets[i]) : int(self.offsets[i + 1])].view(self.shapes[i])


class CachedImages(Dataset):
    """Images of several sizes decoded once: (uint8 (C, H, W), class index) items cut from one flat
    uint8 buffer (in memory or memory-mapped), as ImageFileDataset gives them from the files."""

    decoded_images = True  # cheap items: a crop-first list may batch them (transforms.CropBatchTransform)

    def __init__(self, flat: torch.Tensor, offsets: list[int], shapes: list[Shape], targets: torch.Tensor):
        self.flat, self.offsets, self.shapes, self.targets = flat, offsets, shapes, targets

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.shapes[i]
        start = self.offsets[i]
        return self.flat[start : start + c * h * w].view(c, h, w), self.targets[i]


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def decode_into(
    out: torch.Tensor, plan: Plan, files: list[Path], mode: str, size: list[int] | None, desc: str
) -> list[tuple[int, BaseException]]:
    """Decode `files` (in a thread pool: decoding and resizing release the GIL) through `size` and the
    plan's head into `out`; returns [(index, error)] for the files that failed."""
    from trainlab.logging import progress_bar_class

    bar_class = progress_bar_class(sys.stderr)  # a bar in a terminal or notebook; none in a log or pipe
    compose = v2.Compose(build_list(plan.head, [v2], "data.transforms")) if plan.head else None

    def one(i: int) -> BaseException | None:
        try:
            x = resize_image(decode_file(files[i], mode), size)
            x = compose(x) if compose is not None else x
        except _DECODE_ERRORS as e:
            return e
        row = plan.row(out, i)
        if x.shape != row.shape:  # the file's header told another size than its pixels have
            return ValueError(f"decoded to {tuple(x.shape)}, not {tuple(row.shape)}")
        row.copy_(x)
        return None

    failed = []
    bar = (
        bar_class(total=len(files), desc=desc, unit="img", leave=False, mininterval=0.5)
        if bar_class
        else None
    )
    with ThreadPoolExecutor(_threads()) as pool:
        for i, error in enumerate(pool.map(one, range(len(files)))):
            if bar is not None:
                bar.update()
            if error is not None:
                failed.append((i, error))
    if bar is not None:
        bar.close()
    return failed


# ----------------------------------------------------------------------------- the cache key


def cache_key(files_hash: str, mode: str, size: list[int] | None, plan: Plan) -> str:
    """A hash of everything the cached pixels depend on: the files (`file_list_hash`) and how they are
    decoded."""
    about = {
        "version": CACHE_VERSION,
        "files": files_hash,
        "mode": mode,
        "image_size": size,
        "head": plan.head,
        "shapes": plan.shapes,
    }
    return hashlib.sha256(json.dumps(about, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------- splits


def split_heads(
    train_items: list[Any] | None,
    eval_list: list[Any] | None,
    k_fold: int | None,
) -> tuple[list[Any], list[Any]]:
    """(head of the training folder, head of the source's own val/test folders).

    Validation and test splits cut from the training folder get the training folder's rows, so its
    head is the part both lists share. The source's own val/test folders only meet the evaluation
    list, unless k-fold pools them with the training data.
    """
    train_items = normalize_items(train_items, "data.transforms")
    eval_list = (
        normalize_items(eval_list, "data.eval_transforms")
        if eval_list is not None
        else eval_items(train_items)
    )
    train_head, eval_head = cache_head(train_items), cache_head(eval_list, "data.eval_transforms")
    shared = []
    for a, b in zip(train_head, eval_head):
        if a != b:
            break
        shared.append(a)
    return shared, (shared if k_fold is not None else eval_head)


def physical_memory_mb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit_mb(setting: float | None) -> float:
    """data.cache_memory_mb, by default 25% of the physical memory (4 GiB where that is unknown)."""
    if setting is not None:
        return setting
    total = physical_memory_mb()
    return 0.25 * total if total else 4096.0


def decode_split(
    files: list[Path],
    targets: list[int],
    mode: str,
    size: list[int] | None,
    plan: Plan,
    *,
    split: str,
    where: str,
    folder: Path | None,
    skip_bad: bool,
    info: dict[str, Any],
    root: Path | None = None,
) -> tuple[ArrayDataset | CachedImages, bool]:
    """One split decoded once, in memory or on disk: an ArrayDataset when the plan has one size, else
    CachedImages. Returns (dataset, whether a cache of an earlier run (or rank) was read). Writing a disk
    cache removes the stale caches of `root`'s split from `folder`, counted in info["cache_removed"]."""
    n = len(files)
    _, h, w = plan.shapes[0]
    desc = f"caching {n:,} images at " + (f"{h}x{w}" if plan.fixed else "their own sizes")

    errors: dict[int, BaseException] = {}

    def fill(out: torch.Tensor) -> list[int]:
        failed = decode_into(out, plan, files, mode, size, desc)
        if failed and not skip_bad:
            i, e = failed[0]
            raise DataError(
                f"image {files[i]}: cannot decode ({e}); replace or remove it, or set "
                f"data.skip_bad_files: true"
            )
        errors.update(failed)
        return [i for i in range(n) if i not in errors]

    files_hash = file_list_hash(files) if folder is not None else ""
    key = cache_key(files_hash, mode, size, plan) if folder is not None else ""
    found = read_disk_cache(folder, split, key, items=n) if folder is not None else None
    if found is not None:
        storage, kept = found
        if where == "memory":
            storage = storage.clone()  # off the disk into memory
    elif where == "disk":
        source = {"root": str(root.resolve()) if root else "", "split": split, "files": files_hash}
        storage, kept = write_disk_cache(folder, split, key, plan.storage_shape, fill, source)
        removed = info.setdefault("cache_removed", {})
        for k, v in prune_stale(folder, source).items():
            removed[k] = removed.get(k, 0) + v
    else:
        storage = torch.empty(plan.storage_shape, dtype=torch.uint8)
        kept = fill(storage)
    info["skipped_files"] = info.get("skipped_files", 0) + (n - len(kept))
    if len(kept) < n:
        info.setdefault("notes", []).append(decode_failures_note(files, kept, errors, root))
    y = torch.tensor(targets, dtype=torch.long)
    index = torch.tensor(kept, dtype=torch.long)
    if not plan.fixed:  # files that failed to decode leave a gap in the buffer
        shapes = [plan.shapes[i] for i in kept]
        return CachedImages(storage, plan.offsets[index].tolist(), shapes, y[index]), found is not None
    # A memory-mapped split keeps row numbers (`rows`), so that its subsets are not copied into memory.
    dataset = ArrayDataset(storage, y, rows=torch.arange(n) if where == "disk" else None)
    # files that failed to decode are dropped (in memory a copy; rare after the scan's checks)
    return (dataset.subset(index) if len(kept) < n else dataset), found is not None


def decode_failures_note(
    files: list[Path], kept: list[int], errors: dict[int, BaseException], root: Path | None, show: int = 3
) -> str:
    """E.g. 'skipped 1 file that failed to decode: cats/3.jpg (broken data stream)'. `errors` is empty
    when the cache was read back (its manifest keeps the rows, not the reasons)."""
    kept_set = set(kept)
    dropped = [i for i in range(len(files)) if i not in kept_set]

    def name(i: int) -> str:
        path = Path(files[i])
        if root is not None and path.is_relative_to(root):
            path = path.relative_to(root)
        return f"{path} ({errors[i]})" if i in errors else str(path)

    n = len(dropped)
    listed = ", ".join(name(i) for i in dropped[:show]) + (f" and {n - show} more" if n > show else "")
    when = "" if errors else " when the cache was written"
    return f"skipped {n} file{'s' if n > 1 else ''} that failed to decode{when}: {listed}"


def summary_line(
    done: list[tuple[int, Plan, bool]],
    where: str,
    folder: Path,
    seconds: float,
    ranks: int = 1,
    removed: dict[str, int] | None = None,
    first: bool = True,
) -> str:
    """E.g. 'decoded 990 images once at 64×64 into memory, 12 MB, 2.1 s'. `where`: where the rows are
    ("memory" or "disk"); `ranks` > 1 with "disk": the DDP ranks share the disk cache; `removed`: what
    `prune_stale` removed; `first`: this process decodes first on its machine (its local rank 0), so a
    cache it read was written by an earlier run."""

    def parts(group: list[tuple[int, Plan, bool]]) -> str:
        counts: dict[str, int] = {}
        for n, plan, _ in group:
            if plan.fixed:
                what = "at {}×{}".format(*plan.shapes[0][1:])
            else:
                what = "at their own sizes (up to {}×{})".format(
                    *max(plan.shapes, key=lambda s: s[1] * s[2])[1:]
                )
            counts[what] = counts.get(what, 0) + n
        return " and ".join(f"{n:,} images {what}" for what, n in counts.items())

    total_mb = sum(plan.nbytes for _, plan, _ in done) / 2**20
    in_memory = where == "memory"
    decoded = [d for d in done if not d[2]]
    read = [d for d in done if d[2]]
    phrases = []
    if decoded:
        place = "into memory" if in_memory else f"into the disk cache {folder}"
        phrases.append(f"decoded {parts(decoded).replace(' at ', ' once at ', 1)} {place}")
    if read:
        into = " into memory" if in_memory else ""
        by = "an earlier run" if ranks == 1 or first else "an earlier run or local rank 0"
        phrases.append(f"read {parts(read)} (decoded by {by}) from {folder}{into}")
    line = "; ".join(phrases)
    if ranks > 1 and not in_memory:
        line += f", shared by {ranks} ranks (one copy in the page cache, not one per rank)"
    line += f", {total_mb:.0f} MB, {seconds:.1f} s"
    if removed and (removed.get("caches") or removed.get("temporary_files")):
        counts = {"stale cache": removed["caches"], "leftover .tmp file": removed["temporary_files"]}
        what = [f"{n} {name}{'s' if n > 1 else ''}" for name, n in counts.items() if n]
        line += f"; removed {' and '.join(what)} ({removed['bytes'] / 2**20:.1f} MB)"
    return line


def cache_splits(
    splits: dict[str, tuple[list[Path], list[int], list[tuple[int, int]]]],
    cfg: Any,
    root: Path,
    mode: str,
    size: list[int] | None,
    info: dict[str, Any],
) -> dict[str, Dataset]:
    """Every split with files ({name: (files, targets, (H, W) per file)}) decoded once: an ArrayDataset
    when its head brings the files to one size, else CachedImages (with a note in `info["notes"]`).
    `cfg` is the DataConfig (transforms, eval_transforms, k_fold, cache, cache_memory_mb, cache_dir)."""
    channels = 1 if mode == "L" else 3
    train_head, eval_head = split_heads(cfg.transforms, cfg.eval_transforms, cfg.k_fold)
    notes: list[str] = info.setdefault("notes", [])
    plans: dict[str, Plan] = {}
    for s, (files, _, shapes) in splits.items():
        if not files:
            continue
        head = train_head if s == "train" else eval_head
        sizes = [tuple(size)] * len(files) if size else [tuple(hw) for hw in shapes]
        out = head_shapes(head, channels, sizes)
        plans[s] = Plan(head, [out[hw] for hw in sizes])
    if cfg.k_fold is not None and len({p.shapes[0] for p in plans.values()}) > 1:
        # k-fold pools the folders' samples, and rows of two sizes cannot share one tensor
        plans = {s: Plan(p.head, p.shapes, stack=False) for s, p in plans.items()}
    limit = memory_limit_mb(cfg.cache_memory_mb)
    where = (
        cfg.cache
        if cfg.cache in ("memory", "disk")
        else ("memory" if sum(p.nbytes for p in plans.values()) / 2**20 <= limit else "disk")
    )
    # Under DDP every machine follows rank 0's choice (machines may have different memory): the same
    # splits are cached everywhere, and every rank reaches the collective in local_main_first below.
    where = distributed.broadcast_object(where)
    for s, plan in list(plans.items()):
        if plan.fixed:
            continue
        names = ", ".join(parse_item(i, "")[0] for i in plan.head)
        why = (
            f"the {s} images keep several sizes through the transforms before the first random item ({names})"
            if names
            else f"the {s} transforms start with a random item, so the images keep their own sizes"
        )
        if where == "disk" and cfg.cache == "auto":
            # Pixels at the files' own sizes take 20x the bytes of their JPEGs (the benchmark's folder): too
            # much to write beside the data unasked, and slower to read back from disk than to decode.
            del plans[s]
            notes.append(
                f"not cached: {why} and do not fit data.cache_memory_mb at those sizes, so they are "
                f"decoded every epoch (data.cache: disk caches them; a list that starts with "
                f"Resize: [H, W] caches them small)"
            )
        else:
            notes.append(
                f"{why}: they are decoded once at their own sizes and cropped per sample every epoch; a "
                f"list that starts with Resize: [H, W] (or data.image_size) resizes them once instead"
            )
    if not plans:
        return {}

    total_mb = sum(p.nbytes for p in plans.values()) / 2**20
    folder = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir(root)
    ranks = distributed.world_size()
    rank = torch.distributed.get_rank() if ranks > 1 else 0
    # Under DDP the ranks map one disk cache (the page cache holds it once) instead of a copy each, when
    # the folder can be written (rank 0 decides for all); else each rank decodes into its own memory.
    place = where
    if ranks > 1 and where == "memory":
        problem = distributed.broadcast_object(cache_dir_problem(folder) if rank == 0 else None)
        if problem is None:
            place = "disk"
        else:
            notes.append(
                f"each of the {ranks} ranks decodes the images into its own memory: {problem}; a writable "
                f"data.cache_dir lets them share one copy"
            )
    start = time.perf_counter()

    def decode_all() -> tuple[dict[str, Dataset], list[tuple[int, Plan, bool]]]:
        datasets: dict[str, Dataset] = {}
        done = []
        for s, plan in plans.items():
            files, targets, _ = splits[s]
            datasets[s], was_cached = decode_split(
                files,
                targets,
                mode,
                size,
                plan,
                split=s,
                where=place,
                folder=folder,
                skip_bad=cfg.skip_bad_files,
                info=info,
                root=root,
            )
            done.append((len(datasets[s]), plan, was_cached))
        return datasets, done

    # Under DDP each machine's local rank 0 decodes into the disk cache; the other ranks wait, then read it.
    datasets, done = distributed.local_main_first(
        decode_all,
        lambda rank, message: DataError(
            f"rank {rank} could not cache the image folder {root} (in {folder}), so this rank stops too: "
            f"{message}"
        ),
    )
    decoded_by = round(distributed.all_reduce_sums(any(not d[2] for d in done))[0])
    seconds = time.perf_counter() - start
    removed = info.pop("cache_removed", {})
    info["cache"] = {
        "where": place,
        "dir": str(folder) if place == "disk" or any(d[2] for d in done) else None,
        "images": sum(d[0] for d in done),
        "mb": round(total_mb, 1),
        "seconds": round(seconds, 2),
        "memory_limit_mb": round(limit),
        "shapes": {s: list(p.shapes[0]) if p.fixed else "several" for s, p in plans.items()},
        "ranks": ranks,
        "decoded_by": decoded_by,  # ranks that decoded (the others read the disk cache)
        "removed": removed,
    }
    first = int(os.environ.get("LOCAL_RANK", rank)) == 0  # as in local_main_first: it decoded first
    notes.append(summary_line(done, place, folder, seconds, ranks, removed, first))
    return datasets
