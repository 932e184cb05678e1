"""Image transforms: `data.transforms` / `data.eval_transforms` component lists of torchvision.transforms.v2.

Two ways to apply one list:
- per sample, a `v2.Compose` (`build_transforms`), run in DataLoader workers for lazy data;
- per batch, a `BatchTransform` on (B, C, H, W) tensors for in-memory `ArrayDataset`s (the fast
  path): the same operations, with per-sample randomness drawn from the torch RNG (or a given
  `torch.Generator`), so a checkpointed RNG state resumes the same augmentation.
A list with an item that has no batched version (ColorJitter, AutoAugment, ...) falls back to the
per-sample Compose and the preprocessing dict says `"fast_path": false`.

Whatever the list, images come out as float tensors (uint8 / 255), and the list saved in
`preprocessing` (plain YAML-like data, `Normalize: auto` resolved to numbers) rebuilds the
evaluation transforms in `predict`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as nnF
from torch.utils.data import Dataset, Subset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainlab.components import build_list, parse_item
from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset
from trainlab.errors import ConfigError

# Augmentations left out of the default evaluation list (besides every Random* class).
_AUGMENT = {
    "ColorJitter",
    "GaussianBlur",
    "GaussianNoise",
    "ElasticTransform",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "AugMix",
    "MixUp",
    "CutMix",
    "ScaleJitter",
    "JPEG",
    "RandomErasing",
}
_TO_FLOAT = {"ToDtype", "ConvertImageDtype"}
_NORMALIZE_SAMPLES = 2000  # lazy datasets: images read to estimate `Normalize: auto`


# ----------------------------------------------------------------------------- component lists


def _item(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """(name, args, kwargs) -> a YAML-like list item, the inverse of `components.parse_item`."""
    if kwargs:
        return {name: kwargs}
    if args:
        return {name: args if len(args) > 1 else args[0]}
    return name


def normalize_items(items: list[Any] | None, key: str) -> list[Any]:
    """Make a list explicit: `ToTensor` -> ToImage + ToDtype(float32, scale), a ToDtype before a Normalize
    that has none (Normalize needs floats in [0, 1]); `torch.float32` dtypes as plain 'float32'."""
    out: list[Any] = []
    is_float = False
    for i, item in enumerate(items or []):
        name, args, kwargs = parse_item(item, f"{key}[{i}]")
        if name == "ToTensor":  # v2.ToTensor is deprecated; this is its documented replacement
            out += ["ToImage", {"ToDtype": {"dtype": "float32", "scale": True}}]
            is_float = True
            continue
        if name == "Normalize" and not is_float:
            out.append({"ToDtype": {"dtype": "float32", "scale": True}})
            is_float = True
        is_float = is_float or name in _TO_FLOAT
        plain = lambda v: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v  # noqa: E731
        out.append(_item(name, [plain(a) for a in args], {k: plain(v) for k, v in kwargs.items()}))
    return out


def eval_items(train_items: list[Any], key: str = "data.transforms") -> list[Any]:
    """The deterministic part of a training list: random crops become center crops of the same size
    (so evaluation inputs keep the training shape), other augmentations are dropped."""
    out: list[Any] = []
    for i, item in enumerate(train_items):
        name, args, kwargs = parse_item(item, f"{key}[{i}]")
        size = kwargs.get("size", args[0] if args else None)
        if name == "RandomCrop":
            out.append({"CenterCrop": {"size": size}})  # keyword form: a list [H, W] stays one argument
        elif name == "RandomResizedCrop":
            out += [{"Resize": {"size": size}}, {"CenterCrop": {"size": size}}]
        elif not (name.startswith("Random") or name in _AUGMENT):
            out.append(item)
    return out


def _is_auto_normalize(item: Any) -> bool:
    name, args, kwargs = parse_item(item, "")
    return name == "Normalize" and (args == ["auto"] or "auto" in (kwargs.get("mean"), kwargs.get("std")))


def resolve_auto(items: list[Any], stats: tuple[list[float], list[float]] | None) -> list[Any]:
    """Replace `Normalize: auto` (or mean/std: auto) by the computed numbers."""
    out = []
    for item in items:
        if _is_auto_normalize(item):
            _, _, kwargs = parse_item(item, "")
            mean = kwargs.get("mean", "auto")
            std = kwargs.get("std", "auto")
            out.append(
                {
                    "Normalize": {
                        "mean": stats[0] if mean == "auto" else mean,
                        "std": stats[1] if std == "auto" else std,
                    }
                }
            )
        else:
            out.append(copy.deepcopy(item))
    return out


def _built(items: list[Any], key: str) -> list[Any]:
    return build_list(items, [v2], key)


def build_transforms(items: list[Any] | None, key: str = "data.transforms") -> v2.Compose:
    """A per-sample v2 Compose; PIL images and uint8 tensors in, float (C, H, W) tensors out."""
    items = normalize_items(items, key)
    return v2.Compose(
        [*_built(items, key), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()]
    )


# ----------------------------------------------------------------------------- batched operations


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the CPU (the generator's device, and the RNG state the loop checkpoints), moved later.
    return torch.rand(n, generator=generator)


def _random_crop(x: torch.Tensor, t: v2.RandomCrop, g: torch.Generator | None) -> torch.Tensor:
    """v2.RandomCrop with one offset per sample: pad the batch once, then gather (B, C, h, w) windows."""
    H, W = x.shape[-2:]
    left, right, top, bottom = t.padding or (0, 0, 0, 0)
    h, w = t.size
    if t.pad_if_needed:  # as v2 does: pad both sides by the missing amount
        if H + top + bottom < h:
            d = h - (H + top + bottom)
            top, bottom = top + d, bottom + d
        if W + left + right < w:
            d = w - (W + left + right)
            left, right = left + d, right + d
    if any((left, right, top, bottom)):
        x = F.pad(x, [left, top, right, bottom], fill=t.fill, padding_mode=t.padding_mode)
    Hp, Wp = x.shape[-2:]
    if Hp < h or Wp < w:
        raise ValueError(f"RandomCrop size {(h, w)} is larger than the (padded) image size {(Hp, Wp)}")
    B = x.shape[0]
    tops = (_rand(B, g) * (Hp - h + 1)).long().clamp_max(Hp - h).to(x.device)  # (B,)
    lefts = (_rand(B, g) * (Wp - w + 1)).long().clamp_max(Wp - w).to(x.device)
    rows = tops[:, None] + torch.arange(h, device=x.device)  # (B, h)
    cols = lefts[:, None] + torch.arange(w, device=x.device)  # (B, w)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, h, w)


def _random_flip(x: torch.Tensor, p: float, dim: int, g: torch.Generator | None) -> torch.Tensor:
    flip = (_rand(x.shape[0], g) < p).to(x.device)[:, None, None, None]  # one coin per sample
    return torch.where(flip, x.flip(dim), x)


def _random_resized_crop(x: torch.Tensor, t: v2.RandomResizedCrop, g: torch.Generator | None) -> torch.Tensor:
    """Per-sample crop box (area in `scale`, log-uniform aspect `ratio`, clamped into the image instead of
    v2's rejection loop), resampled bilinearly to `size` through one affine grid (no antialiasing)."""
    B, C, H, W = x.shape
    lo, hi = t.scale
    area = H * W * (lo + (hi - lo) * _rand(B, g))
    lr0, lr1 = math.log(t.ratio[0]), math.log(t.ratio[1])
    ratio = torch.exp(lr0 + (lr1 - lr0) * _rand(B, g))
    w = torch.sqrt(area * ratio).clamp(1, W)
    h = torch.sqrt(area / ratio).clamp(1, H)
    left = _rand(B, g) * (W - w)
    top = _rand(B, g) * (H - h)
    # Affine map from output coordinates in [-1, 1] to input coordinates (align_corners=False).
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = w / W
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    out_h, out_w = t.size
    grid = nnF.affine_grid(theta.to(x.device), [B, C, out_h, out_w], align_corners=False)
    xf = x if x.is_floating_point() else x.float()
    out = nnF.grid_sample(xf, grid.to(xf.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out if x.is_floating_point() else out.round().clamp(0, 255).to(x.dtype)


def _batched_op(t: Any) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None:
    """The batched version of one built v2 transform, or None when there is none."""
    if isinstance(t, (v2.ToImage, v2.PILToTensor, v2.ToPureTensor, v2.Identity)):
        return lambda x, g: x
    if isinstance(t, v2.ToDtype) and isinstance(t.dtype, torch.dtype):
        return lambda x, g: F.to_dtype(x, t.dtype, scale=t.scale)
    if isinstance(t, v2.ConvertImageDtype):
        return lambda x, g: F.to_dtype(x, t.dtype, scale=True)
    if isinstance(t, v2.Normalize):
        return lambda x, g: F.normalize(
            x if x.is_floating_point() else F.to_dtype(x, torch.float32, scale=True), t.mean, t.std
        )
    if isinstance(t, v2.RandomCrop) and not isinstance(t.fill, dict):
        return lambda x, g: _random_crop(x, t, g)
    if isinstance(t, v2.RandomHorizontalFlip):
        return lambda x, g: _random_flip(x, t.p, -1, g)
    if isinstance(t, v2.RandomVerticalFlip):
        return lambda x, g: _random_flip(x, t.p, -2, g)
    if isinstance(t, v2.RandomResizedCrop):
        return lambda x, g: _random_resized_crop(x, t, g)
    if isinstance(t, v2.Resize):
        return lambda x, g: F.resize(
            x, t.size, interpolation=t.interpolation, max_size=t.max_size, antialias=t.antialias
        )
    if isinstance(t, v2.CenterCrop):
        return lambda x, g: F.center_crop(x, t.size)
    if isinstance(t, v2.Pad) and not isinstance(t.fill, dict):
        return lambda x, g: F.pad(x, t.padding, fill=t.fill, padding_mode=t.padding_mode)
    if isinstance(t, v2.Grayscale):
        return lambda x, g: F.rgb_to_grayscale(x, t.num_output_channels)
    return None


class BatchTransform:
    """A component list applied to a (B, C, H, W) batch at once; uint8 or float in, float out.

    Random items draw one value per sample from `generator` (None: the global torch RNG).
    """

    def __init__(
        self, items: list[Any] | None, key: str = "data.transforms", generator: torch.Generator | None = None
    ):
        self.items = normalize_items(items, key)
        self.transforms = _built(self.items, key)
        self.ops = [_batched_op(t) for t in self.transforms]
        self.unsupported = [type(t).__name__ for t, op in zip(self.transforms, self.ops) if op is None]
        if self.unsupported:
            raise ValueError(f"no batched version of {', '.join(self.unsupported)}")
        self.generator = generator

    @staticmethod
    def unsupported(items: list[Any] | None, key: str = "data.transforms") -> list[str]:
        """Names of the items without a batched version ([] when the whole list runs batched)."""
        built = _built(normalize_items(items, key), key)
        return [type(t).__name__ for t in built if _batched_op(t) is None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x, self.generator)
        if not x.is_floating_point():
            x = F.to_dtype(x, torch.float32, scale=True)  # images become floats in [0, 1] by default
        return x.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"BatchTransform({self.items})"


def random_resized_crops(
    images: list[torch.Tensor], t: v2.RandomResizedCrop, g: torch.Generator | None
) -> torch.Tensor:
    """v2.RandomResizedCrop over images of several sizes, stacked (B, C, h, w): one box per image (area
    in `scale`, log-uniform aspect `ratio`, clamped into the image instead of v2's rejection loop, as
    the batched op draws it), and the crop resized to `size` with v2's interpolation and antialiasing."""
    lo, hi = t.scale
    lr0, lr1 = math.log(t.ratio[0]), math.log(t.ratio[1])
    out = []
    for x, (a, r, v, u) in zip(images, _rand(4 * len(images), g).view(-1, 4).tolist()):
        H, W = x.shape[-2:]
        area, ratio = H * W * (lo + (hi - lo) * a), math.exp(lr0 + (lr1 - lr0) * r)
        w = min(W, max(1, round(math.sqrt(area * ratio))))
        h = min(H, max(1, round(math.sqrt(area / ratio))))
        top, left = int(v * (H - h + 1)), int(u * (W - w + 1))  # v, u < 1: the box stays inside
        crop = x[..., top : top + h, left : left + w]
        out.append(F.resize(crop, list(t.size), interpolation=t.interpolation, antialias=t.antialias))
    return torch.stack(out)


class CropBatchTransform:
    """A list that starts with RandomResizedCrop, applied to a batch of images of several sizes (a list
    of uint8 (C, H, W)): `random_resized_crops` brings them to one size, then the rest of the list runs
    on the batch (a BatchTransform). Random draws come from the global torch RNG, as BatchTransform's."""

    def __init__(self, items: list[Any], key: str = "data.transforms"):
        self.items = normalize_items(items, key)
        self.crop = _built(self.items[:1], key)[0]
        self.rest = BatchTransform(self.items[1:], key)

    @staticmethod
    def supports(items: list[Any] | None, key: str = "data.transforms") -> bool:
        items = normalize_items(items, key)
        return (
            bool(items)
            and parse_item(items[0], f"{key}[0]")[0] == "RandomResizedCrop"
            and not BatchTransform.unsupported(items[1:], key)
        )

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.rest(random_resized_crops(images, self.crop, self.rest.generator))

    def __repr__(self) -> str:
        return f"CropBatchTransform({self.items})"


class TransformedDataset(Dataset):
    """A dataset whose inputs go through a per-sample transform (in DataLoader workers). `batched`: the
    same list for a batch of raw inputs at once, where the data allows it (`CroppedImageLoader`)."""

    batched: CropBatchTransform | None = None

    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.dataset[i]
        return self.transform(x), y

    @property
    def targets(self) -> Any:
        base = self.dataset
        return base.y if isinstance(base, ArrayDataset) else getattr(base, "targets", None)


# ----------------------------------------------------------------------------- Normalize: auto


def _as_float_image(x: Any) -> torch.Tensor:
    """A PIL image or uint8/float tensor -> float (C, H, W) in [0, 1] (float inputs unchanged)."""
    if isinstance(x, PIL.Image.Image):
        x = F.pil_to_tensor(x)
    x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x[None]
    return x.float() if x.is_floating_point() else F.to_dtype(x, torch.float32, scale=True)


def channel_stats(dataset: Dataset, max_samples: int = _NORMALIZE_SAMPLES) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over every pixel of the training images (scaled to [0, 1]).

    An ArrayDataset is read whole, in chunks; a lazy one through up to `max_samples` samples, fixed by seed.
    """
    total = total_sq = None
    count = 0
    if isinstance(dataset, ArrayDataset):
        chunks = (dataset.gather(slice(i, i + 4096)) for i in range(0, len(dataset), 4096))
    else:
        n = len(dataset)  # type: ignore[arg-type]
        index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples]
        chunks = (dataset[int(i)][0] for i in index)
    for chunk in chunks:
        c = chunk if isinstance(dataset, ArrayDataset) else _as_float_image(chunk)[None]  # (B, C, H, W)
        c = c.double() / 255 if c.dtype == torch.uint8 else c.double()
        s, sq = c.sum(dim=(0, 2, 3)), (c * c).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += c.shape[0] * c.shape[2] * c.shape[3]
    if not count:
        raise ConfigError(
            "data.transforms: Normalize: auto needs training images, but the training split is empty"
        )
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


# ----------------------------------------------------------------------------- attaching to splits


def _peek(dataset: Dataset) -> Any:
    return dataset[0][0] if len(dataset) else None  # type: ignore[arg-type]


def _is_image(x: Any) -> bool:
    return isinstance(x, PIL.Image.Image) or (
        isinstance(x, torch.Tensor) and x.ndim == 3 and x.dtype == torch.uint8
    )


def _attach(dataset: Dataset | None, items: list[Any], key: str, force: bool) -> tuple[Dataset | None, bool]:
    """Attach one list to one split: batched on an ArrayDataset when possible. Returns (dataset, fast)."""
    if dataset is None:
        return None, True
    if isinstance(dataset, ArrayDataset):
        x = dataset.storage  # its rows have the split's shape and type
        if x.ndim != 4 and items:
            raise ConfigError(
                f"{key}: transforms apply to images (C, H, W), but this source gives samples of "
                f"shape {tuple(x.shape[1:])}"
            )
        if not (items or force or x.dtype == torch.uint8):
            return dataset, True  # float images, no transforms: left as they are
        if not BatchTransform.unsupported(items, key):
            return dataset.with_transform(BatchTransform(items, key)), True
        return TransformedDataset(dataset.with_transform(None), build_transforms(items, key)), False
    if items or force or _is_image(_peek(dataset)):
        wrapped = TransformedDataset(dataset, build_transforms(items, key))
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        if getattr(base, "decoded_images", False) and CropBatchTransform.supports(items, key):
            wrapped.batched = CropBatchTransform(items, key)  # crop-first lists on images decoded once
            return wrapped, True
        return wrapped, False
    return dataset, False


def _check_one_size(compose: Callable, channels: int, key: str) -> None:
    """Images of different sizes must leave the transforms at one size, or batches cannot be stacked."""
    shapes = {
        tuple(compose(torch.zeros(channels, h, w, dtype=torch.uint8)).shape) for h, w in ((61, 47), (37, 83))
    }
    if len(shapes) > 1:
        raise ConfigError(
            f"{key}: the images have different sizes and these transforms do not bring them to one "
            f"size (e.g. {sorted(shapes)}); set data.image_size: [H, W] (e.g. 224), or end the list "
            f"with a fixed-size item such as Resize: {{size: [224, 224]}} or RandomResizedCrop: 224"
        )


def _check_user_items(items: list[Any], key: str) -> None:
    """Build the user's own list once, so that a bad item is named by its index in that list (the
    normalised list holds items trainlab inserted, e.g. a ToDtype before Normalize)."""
    plain = [
        "ToImage" if parse_item(item, f"{key}[{i}]")[0] == "ToTensor" else item
        for i, item in enumerate(items)
    ]
    build_list(plain, [v2], key)  # ToTensor (deprecated in v2) stands in as ToImage: same index, no warning


def attach_transforms(
    train: Dataset, val: Dataset | None, test: Dataset | None, cfg: DataConfig, bundle_info: dict[str, Any]
) -> tuple[Dataset, Dataset | None, Dataset | None, dict[str, Any]]:
    """Attach `cfg.transforms` to train and `cfg.eval_transforms` (default: the deterministic part of the
    training list) to val and test. Returns the splits and the plain-typed `preprocessing` entries
    (empty for data that is not images and has no transforms)."""
    train_raw = list(cfg.transforms or [])
    eval_raw = list(cfg.eval_transforms) if cfg.eval_transforms is not None else None
    sample = train.gather(0) if isinstance(train, ArrayDataset) and len(train) else _peek(train)
    image = _is_image(sample) or (isinstance(sample, torch.Tensor) and sample.ndim == 3)
    if not (image or train_raw or eval_raw):
        return train, val, test, {}

    stats = None
    if any(_is_auto_normalize(i) for i in train_raw + (eval_raw or [])):
        stats = channel_stats(train)
    _check_user_items(resolve_auto(train_raw, stats), "data.transforms")
    train_items = normalize_items(resolve_auto(train_raw, stats), "data.transforms")
    if eval_raw is None:
        eval_list = eval_items(train_items)
    else:
        _check_user_items(resolve_auto(eval_raw, stats), "data.eval_transforms")
        eval_list = normalize_items(resolve_auto(eval_raw, stats), "data.eval_transforms")

    train, fast_train = _attach(train, train_items, "data.transforms", image)
    val, fast_val = _attach(val, eval_list, "data.eval_transforms", image)
    test, fast_test = _attach(test, eval_list, "data.eval_transforms", image)

    channels = int(sample.shape[0]) if isinstance(sample, torch.Tensor) else len(sample.getbands())
    size = bundle_info.get("image_size")
    if size is None and isinstance(sample, torch.Tensor) and bundle_info.get("image_sizes_vary") is not True:
        size = [int(sample.shape[-2]), int(sample.shape[-1])]
    if bundle_info.get("image_sizes_vary"):
        _check_one_size(build_transforms(train_items), channels, "data.transforms")
        _check_one_size(build_transforms(eval_list, "data.eval_transforms"), channels, "data.eval_transforms")
    preprocessing = {
        "image_mode": bundle_info.get("image_mode")
        or ("L" if channels == 1 else "RGB" if channels == 3 else None),
        "image_size": [int(s) for s in size] if size is not None else None,
        "train_transforms": train_items,
        "eval_transforms": eval_list,
        "fast_path": fast_train and fast_val and fast_test,
    }
    if stats is not None:
        preprocessing["normalize"] = {"mean": stats[0], "std": stats[1]}
    if (
        not preprocessing["fast_path"]
        and isinstance(train, TransformedDataset)
        and isinstance(train.dataset, ArrayDataset)
    ):
        preprocessing["fast_path_unsupported"] = BatchTransform.unsupported(
            train_items
        ) + BatchTransform.unsupported(eval_list, "data.eval_transforms")
    return train, val, test, preprocessing


# ----------------------------------------------------------------------------- predict


def to_uint8_image(img: Any, mode: str | None) -> torch.Tensor:
    """A PIL image or a (C, H, W) / (H, W) tensor -> a uint8 (C, H, W) tensor in `mode` ('RGB' or 'L')."""
    if isinstance(img, PIL.Image.Image):
        return F.pil_to_tensor(img.convert(mode) if mode else img)
    x = torch.as_tensor(img)
    if x.ndim == 2:
        x = x[None]
    if x.is_floating_point():
        x = F.to_dtype(x, torch.uint8, scale=True)
    if mode == "L" and x.shape[0] == 3:
        x = F.rgb_to_grayscale(x)
    elif mode == "RGB" and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x


def resize_image(x: torch.Tensor, size: list[int] | tuple[int, int] | None) -> torch.Tensor:
    """Resize a uint8 (C, H, W) image to `size` [H, W] (antialiased), as the image loaders do."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.resize(x, list(size), antialias=True)


def eval_transform_from_preprocessing(preprocessing: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """For predict: a PIL image or image tensor -> the model input (C, H, W) float, as in evaluation."""
    mode = preprocessing.get("image_mode")
    size = preprocessing.get("image_size")
    compose = build_transforms(preprocessing.get("eval_transforms") or [], "preprocessing.eval_transforms")

    def transform(img: Any) -> torch.Tensor:
        return compose(resize_image(to_uint8_image(img, mode), size))

    return transform
