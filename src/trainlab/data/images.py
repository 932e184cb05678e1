"""`image_folder`: a folder of class sub-folders of images, optionally split into train/ val/ test/.

    root/ants/0013035.jpg                  root/train/ants/0013035.jpg
    root/bees/1092977343_cb42b38d62.jpg    root/val/ants/...   root/test/...

Before training, every file is checked quickly (PIL header, `verify()`, and a JPEG's end-of-image
marker), so a corrupt or truncated image is reported by name before the first step, or skipped
with `data.skip_bad_files: true`.

Then, with `data.cache` on (the default, auto), every split is decoded once at the training size
(`image_cache.py`): the transforms before the first random item run once per file, and the split
becomes a uint8 (N, C, H, W) `ArrayDataset` for the fast in-memory loader, in memory or memory-mapped
on disk (or `CachedImages` when the files keep several sizes). With `data.cache: off` (or
`data.in_memory: false`) a folder of one image size whose decoded size is under `memory_limit_mb` is
decoded once into memory as it is; anything else is an `ImageFileDataset` that decodes per sample in
DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from torch.utils.data import Dataset

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.data.image_cache import Plan, cache_splits, decode_file, decode_split
from trainlab.data.transforms import resize_image
from trainlab.errors import ConfigError, DataError, short
from trainlab.registry import DATASETS

log = logging.getLogger("trainlab")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing", "evaluation"),
}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _hidden(path: Path) -> bool:
    return path.name.startswith((".", "__"))  # .ipynb_checkpoints, .git, .DS_Store, __MACOSX


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))


def load_image(path: str | Path, mode: str, size: list[int] | None = None) -> torch.Tensor:
    """Decode one file to a uint8 (C, H, W) tensor in `mode` ('RGB' or 'L'), resized to `size` [H, W]."""
    return resize_image(decode_file(path, mode), size)


def check_image(path: Path) -> tuple[int, int, str]:
    """A fast check: (height, width, PIL mode), or an exception for a corrupt or truncated file."""
    with PIL.Image.open(path) as img:
        w, h = img.size
        mode, fmt = img.mode, img.format
        if fmt == "JPEG":
            # verify() does not read JPEG data; a complete file ends with the EOI marker FF D9. Files
            # without it (truncated, or with trailing bytes) are decoded fully to decide.
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 64))
                tail = f.read().rstrip(b"\x00\r\n ")
            if not tail.endswith(b"\xff\xd9"):
                img.load()
        else:
            img.verify()  # PNG: every chunk's CRC up to IEND, so truncation shows
    return h, w, mode


@dataclass
class _Split:
    files: list[Path] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) per file
    modes: list[str] = field(default_factory=list)


class ImageFileDataset(Dataset):
    """Image files decoded per sample (in DataLoader workers): (uint8 (C, H, W), class index)."""

    def __init__(
        self, files: list[Path], targets: list[int], mode: str, size: list[int] | None, classes: list[str]
    ):
        self.files, self.mode, self.size, self.classes = [str(f) for f in files], mode, size, classes
        self.targets = torch.tensor(targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x = load_image(self.files[i], self.mode, self.size)
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"image {self.files[i]}: cannot decode ({e})") from None
        return x, self.targets[i]


def _find_splits(root: Path) -> dict[str, Path]:
    """{'train': root/train, ...} for the split layout, {'train': root} for class folders in root."""
    if root.is_file() or not root.exists():
        raise DataError(
            f"data.root: {root} is not a folder; image_folder reads a folder of class sub-folders "
            f"(root/<class>/*.jpg) or of train/ val/ test/ folders that hold class folders"
        )
    found: dict[str, Path] = {}
    for folder in _subfolders(root):
        for split, names in SPLIT_FOLDERS.items():
            if folder.name.lower() in names and split not in found:
                found[split] = folder
    if not found:
        return {"train": root}
    if "train" not in found:
        raise DataError(
            f"data.root: {root} holds {', '.join(p.name + '/' for p in found.values())} but no train/ "
            f"folder; the training images go in {root}/train/<class>/"
        )
    return found


def _scan(
    root: Path, splits: dict[str, Path], skip_bad: bool, info: dict[str, Any]
) -> tuple[list[str], dict[str, _Split]]:
    """List class folders and files of every split and check every image; fill `info` with what was found."""
    warnings: list[str] = info.setdefault("warnings", [])
    if len(splits) > 1 or splits["train"] != root:
        ignored = [p.name for p in _subfolders(root) if p not in splits.values()]
        if ignored:
            warnings.append(f"{root}: folders {ignored} are not train/val/test and were ignored")
    class_sets = {s: [p.name for p in _subfolders(folder)] for s, folder in splits.items()}
    classes = class_sets["train"]
    if not classes:
        loose = [p.name for p in splits["train"].iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = (
            f" ({len(loose)} images lie directly in it: move them into one folder per class)" if loose else ""
        )
        raise DataError(
            f"data.root: {splits['train']} has no class sub-folders{hint}; image_folder expects "
            f"<root>/<class>/*.jpg, e.g. ants/ and bees/"
        )
    if len(classes) == 1:
        raise DataError(
            f"data.root: {splits['train']} has one class folder ({classes[0]!r}); classification needs "
            f"at least 2 (one sub-folder per class)"
        )
    for s, names in class_sets.items():
        if s != "train" and names != classes:
            missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
            parts = ([f"{splits[s]} lacks class folders {missing}"] if missing else []) + (
                [f"{splits[s]} has class folders {extra} that {splits['train']} has not"] if extra else []
            )
            raise DataError(
                f"image folder {root}: the class folders of {s} and train differ: {'; '.join(parts)}. "
                f"Every split needs the same class folders (an empty folder is allowed outside train)"
            )

    scanned: dict[str, _Split] = {}
    bad: list[str] = []
    non_images: list[str] = []
    empty: list[str] = []
    for s, folder in splits.items():
        split = scanned[s] = _Split()
        for index, name in enumerate(classes):
            count = 0
            for path in sorted((folder / name).rglob("*")):
                rel = path.relative_to(root)
                if any(_hidden(Path(p)) for p in rel.parts) or path.is_dir():
                    continue
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    non_images.append(str(rel))
                    continue
                try:
                    h, w, mode = check_image(path)
                except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
                    bad.append(f"{path} ({type(e).__name__}: {e})")
                    continue
                split.files.append(path)
                split.targets.append(index)
                split.shapes.append((h, w))
                split.modes.append(mode)
                count += 1
            if count == 0:
                empty.append(str((folder / name).relative_to(root)) or name)
                if s == "train":
                    raise DataError(
                        f"image folder {root}: class folder {folder / name} holds no readable images; "
                        f"add images or remove the folder (every training class needs examples)"
                    )

    if bad and not skip_bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"image folder {root}: {len(bad)} corrupt or truncated image file(s): {shown}. Replace or "
            f"remove them, or set data.skip_bad_files: true to skip them"
        )
    info["skipped_files"] = len(bad)
    if bad:
        info["bad_files"] = bad[:100]
        warnings.append(f"skipped {len(bad)} corrupt or truncated image file(s), e.g. {bad[0]}")
    info["non_image_files"] = len(non_images)
    if non_images:
        warnings.append(
            f"{len(non_images)} file(s) are not images ({', '.join(IMAGE_EXTENSIONS)}) and were "
            f"ignored, e.g. {non_images[0]}"
        )
    info["empty_class_folders"] = empty
    if empty:
        warnings.append(f"empty class folder(s): {empty}")
    return classes, scanned


def _decode(
    split: _Split, mode: str, size: list[int] | None, skip_bad: bool, info: dict[str, Any]
) -> ArrayDataset:
    """Decode a split of one image size (or resized to `size`) once into uint8 (N, C, H, W) in memory."""
    channels = 1 if mode == "L" else 3
    h, w = size if size is not None else (split.shapes[0] if split.shapes else (0, 0))
    if not split.files:
        return ArrayDataset(
            torch.empty(0, channels, h, w, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        )
    plan = Plan([], [(channels, h, w)] * len(split.files))  # no head: the files as they are (or at `size`)
    dataset, _ = decode_split(
        split.files,
        split.targets,
        mode,
        size,
        plan,
        split="",
        where="memory",
        folder=None,
        skip_bad=skip_bad,
        info=info,
    )
    return dataset


def _image_size(value: int | list[int] | None) -> list[int] | None:
    if value is None:
        return None
    size = [value, value] if isinstance(value, int) else list(value)
    if len(size) != 2 or any(s < 1 for s in size):
        raise ConfigError(f"data.image_size: {short(value)} is not a size; write 64 (64x64) or [H, W]")
    return size


def _check_batch_memory(
    cfg: DataConfig, shapes: set[tuple[int, int]], channels: int, root: Path, files: int
) -> None:
    """Refuse images too large to train on as they are (more pixels than PIL decodes without a bomb
    warning, or one float32 batch over a quarter of this machine's memory), unless data.image_size or
    data.transforms set the size the model sees."""
    if cfg.image_size is not None or cfg.transforms or not shapes:
        return
    h, w = max(shapes, key=lambda hw: hw[0] * hw[1])
    batch = max(1, min(cfg.batch_size, files))
    need = batch * channels * h * w * 4  # bytes of one float32 batch, before any activation
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > ram / 4 or h * w > (PIL.Image.MAX_IMAGE_PIXELS or h * w):
        raise DataError(
            f"image folder {root}: the images are up to {h}x{w} pixels, so one batch of {batch} needs "
            f"~{need / 2**30:.1f} GB as float32 before the model even starts, and its activations many "
            f"times that (this machine has {ram / 2**30:.0f} GB); set data.image_size (e.g. "
            f"data.image_size=224) or put a Resize in data.transforms"
        )


@DATASETS.register(
    "image_folder", "folder of class sub-folders of images (data.root), optionally in train/ val/ test/"
)
def image_folder(cfg: DataConfig, memory_limit_mb: float = 512) -> SourceData:
    if cfg.root is None:
        raise ConfigError(
            "data.root: image_folder needs data.root, the folder of class sub-folders "
            "(root/<class>/*.jpg) or of train/ val/ test/ folders holding class folders"
        )
    root = Path(cfg.root).expanduser()
    size = _image_size(cfg.image_size)
    info: dict[str, Any] = {}
    splits = _find_splits(root)
    info["layout"] = "splits" if splits["train"] != root else "class folders"
    classes, scanned = _scan(root, splits, cfg.skip_bad_files, info)
    for message in info["warnings"]:
        log.warning("data: %s", message)

    every = [m for s in scanned.values() for m in s.modes]
    mode = "L" if every and all(m in _GRAY_MODES for m in every) else "RGB"
    channels = 1 if mode == "L" else 3
    shapes = {hw for s in scanned.values() for hw in s.shapes}
    sizes_vary = size is None and len(shapes) > 1
    if sizes_vary and not (cfg.transforms or cfg.eval_transforms):
        examples = {}
        for s in scanned.values():
            for path, hw in zip(s.files, s.shapes):
                examples.setdefault(hw, path)
        shown = ", ".join(f"{p.name} {h}x{w}" for (h, w), p in list(examples.items())[:3])
        raise DataError(
            f"image folder {root}: the images have {len(shapes)} different sizes (e.g. {shown}) and "
            f"cannot be stacked into batches; set data.image_size: [H, W] (e.g. data.image_size=128) to "
            f"resize them all, or give data.transforms that end at one size (e.g. RandomResizedCrop: 224)"
        )
    _check_batch_memory(cfg, shapes, channels, root, len(scanned["train"].files))
    common = size or (list(next(iter(shapes))) if shapes and not sizes_vary else None)

    datasets: dict[str, Dataset] = {}
    if cfg.cache != "off" and cfg.in_memory is not False:  # decode once at the training size (image_cache.py)
        splits_files = {s: (v.files, v.targets, v.shapes) for s, v in scanned.items()}
        datasets.update(cache_splits(splits_files, cfg, root, mode, size, info))
    for note in info.get("notes", []):
        log.info("data: %s", note)

    # The rest (data.cache: off, data.in_memory: false, empty splits) is decoded per epoch, or when it
    # has one size and is small, once into memory.
    rest = {s: v for s, v in scanned.items() if s not in datasets}
    if sizes_vary and cfg.in_memory is True and any(v.files for v in rest.values()):
        raise DataError(
            f"image folder {root}: data.in_memory: true needs images of one size, but they have "
            f"{len(shapes)} sizes; set data.image_size: [H, W], or data.cache: auto to decode them once"
        )
    pixels = sum(size[0] * size[1] if size else h * w for s in rest.values() for h, w in s.shapes)
    fits = pixels * channels <= memory_limit_mb * 2**20
    in_memory = not sizes_vary and (cfg.in_memory is True or (cfg.in_memory == "auto" and fits))
    for s, split in rest.items():
        if in_memory:
            datasets[s] = _decode(split, mode, size, cfg.skip_bad_files, info)
        else:
            datasets[s] = ImageFileDataset(split.files, split.targets, mode, size, classes)

    info.update(
        image_mode=mode,
        image_size=common,
        image_sizes_vary=sizes_vary,
        in_memory=all(not isinstance(d, ImageFileDataset) for d in datasets.values()),
        num_files={s: len(v.files) for s, v in scanned.items()},
    )
    return SourceData(
        train=datasets["train"],
        val=datasets.get("val"),
        test=datasets.get("test"),
        task="classification",
        class_names=classes,
        info=info,
    )
