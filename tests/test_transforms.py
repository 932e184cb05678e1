"""Transforms: batched versions against torchvision v2's own, Normalize: auto, default eval lists."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset
from trainlab.data.transforms import (
    BatchTransform,
    TransformedDataset,
    attach_transforms,
    build_transforms,
    eval_items,
    eval_transform_from_preprocessing,
)
from trainlab.errors import ConfigError


def _positions(b=16, c=1, h=6, w=6):
    """uint8 (B, C, H, W) whose pixel values encode their position (1..H*W), so a crop reveals its offset."""
    grid = torch.arange(1, h * w + 1, dtype=torch.uint8).reshape(1, 1, h, w)
    return grid.expand(b, c, h, w).clone()


def test_random_crop_with_padding_draws_one_offset_per_sample_and_matches_v2():
    x = _positions()
    crop = BatchTransform(
        [{"RandomCrop": {"size": 6, "padding": 2}}], generator=torch.Generator().manual_seed(0)
    )
    out = crop(x)  # float in [0, 1]
    assert out.shape == (16, 1, 6, 6) and out.dtype == torch.float32
    padded = F.pad(x[0], [2, 2, 2, 2])
    offsets = []
    for b in range(16):
        found = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(F.to_dtype(F.crop(padded, top, left, 6, 6), torch.float32, scale=True), out[b])
        ]
        assert len(found) == 1  # exactly v2's crop of the padded image at some offset
        offsets.append(found[0])
    assert len(set(offsets)) > 4  # per-sample randomness, not one draw per batch
    again = BatchTransform(
        [{"RandomCrop": {"size": 6, "padding": 2}}], generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again(x), out)  # the seed fixes the augmentation


def test_global_rng_state_resumes_the_same_augmentation():
    x = _positions()
    aug = BatchTransform([{"RandomCrop": [4]}, "RandomHorizontalFlip"])
    state = torch.get_rng_state()
    first = aug(x)
    torch.set_rng_state(state)
    assert torch.equal(aug(x), first)


def test_flips_are_per_sample():
    x = _positions(b=32)
    out = BatchTransform(
        ["RandomHorizontalFlip", {"RandomVerticalFlip": {"p": 0.0}}],
        generator=torch.Generator().manual_seed(1),
    )(x)
    base = F.to_dtype(x[0], torch.float32, scale=True)
    flipped = [bool(torch.equal(o, base.flip(-1))) for o in out]
    kept = [bool(torch.equal(o, base)) for o in out]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 5 < sum(flipped) < 27


def test_random_resized_crop_batched():
    x = torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8)
    same = BatchTransform([{"RandomResizedCrop": {"size": 10, "scale": [1, 1], "ratio": [1, 1]}}])(x)
    torch.testing.assert_close(same, x.float() / 255)  # the whole image at its own size: unchanged
    out = BatchTransform(
        [{"RandomResizedCrop": {"size": [4, 5]}}], generator=torch.Generator().manual_seed(0)
    )(x)
    assert out.shape == (8, 3, 4, 5) and out.min() >= 0 and out.max() <= 1


def test_deterministic_batch_equals_per_sample_compose():
    x = torch.randint(0, 256, (3, 3, 9, 7), dtype=torch.uint8)
    items = [
        {"Resize": {"size": [6, 6]}},
        {"CenterCrop": 4},
        "ToTensor",
        {"Normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]}},
    ]
    batched = BatchTransform(items)(x)
    per_sample = torch.stack([build_transforms(items)(s) for s in x])
    torch.testing.assert_close(batched, per_sample)
    assert batched.shape == (3, 3, 4, 4)


def test_normalize_auto_uses_training_statistics():
    torch.manual_seed(0)
    train = ArrayDataset(
        torch.randint(0, 200, (20, 3, 4, 4), dtype=torch.uint8), torch.zeros(20, dtype=torch.long)
    )
    val = ArrayDataset(torch.full((5, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
    cfg = DataConfig(transforms=[{"Normalize": {"mean": "auto", "std": "auto"}}])
    train_t, val_t, _, pre = attach_transforms(train, val, None, cfg, {})
    scaled = train.x.double() / 255
    mean, std = scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3), unbiased=False)
    assert pre["normalize"]["mean"] == pytest.approx(mean.tolist(), abs=1e-5)
    assert pre["normalize"]["std"] == pytest.approx(std.tolist(), abs=1e-5)
    assert pre["eval_transforms"][-1] == {"Normalize": pre["normalize"]}  # numbers, for predict
    out = train_t.transform(train_t.x)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    assert val_t[0][0].mean() > 1  # the validation images are normalised with the training statistics


def test_eval_transforms_default_to_the_deterministic_part():
    items = [
        {"RandomCrop": {"size": 4, "padding": 1}},
        "RandomHorizontalFlip",
        {"ColorJitter": {"brightness": 0.2}},
        {"RandomResizedCrop": 4},
        {"Normalize": [[0.5], [0.5]]},
    ]
    assert eval_items(items) == [
        {"CenterCrop": {"size": 4}},
        {"Resize": {"size": 4}},
        {"CenterCrop": {"size": 4}},
        {"Normalize": [[0.5], [0.5]]},
    ]
    x = ArrayDataset(torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8), torch.arange(4))
    train, val, _, pre = attach_transforms(x, x, None, DataConfig(transforms=items), {})
    # ColorJitter has no batched version: training falls back to per-sample v2, evaluation stays batched.
    assert isinstance(train, TransformedDataset) and pre["fast_path"] is False
    assert pre["fast_path_unsupported"] == ["ColorJitter"]
    expected = (F.center_crop(x.x[0], 4).float() / 255 - 0.5) / 0.5  # the deterministic part only
    assert isinstance(val, ArrayDataset) and torch.allclose(val[0][0], expected, atol=1e-6)
    assert train[0][0].shape == (1, 4, 4) and val[0][0].shape == (1, 4, 4)


def test_explicit_eval_transforms_and_fast_path():
    x = ArrayDataset(torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8), torch.arange(4))
    cfg = DataConfig(transforms=["RandomHorizontalFlip"], eval_transforms=[{"CenterCrop": 2}])
    train, val, test, pre = attach_transforms(x, x, x, cfg, {})
    assert pre["fast_path"] is True and isinstance(train, ArrayDataset)
    assert val[0][0].shape == (3, 2, 2) and test[0][0].shape == (3, 2, 2) and train[0][0].shape == (3, 6, 6)


def test_images_without_transforms_become_floats_and_tabular_data_is_left_alone():
    images = ArrayDataset(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), torch.tensor([0]))
    train, _, _, pre = attach_transforms(images, None, None, DataConfig(), {})
    assert train[0][0].tolist() == [[[0.0, 1.0]]] and pre["image_mode"] == "L" and pre["image_size"] == [1, 2]
    table = ArrayDataset(torch.randn(4, 3), torch.arange(4))
    assert attach_transforms(table, None, None, DataConfig(), {})[3] == {}
    with pytest.raises(ConfigError, match=r"data.transforms.*\(3,\)"):
        attach_transforms(table, None, None, DataConfig(transforms=["RandomHorizontalFlip"]), {})


def test_predict_transform_from_preprocessing_accepts_pil_images():
    pre = {"image_mode": "L", "image_size": [4, 4], "eval_transforms": [{"Normalize": [[0.5], [0.25]]}]}
    pixels = np.full((8, 8, 3), 255, dtype=np.uint8)  # an RGB file for a grayscale model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warnings (ToTensor is rewritten)
        out = eval_transform_from_preprocessing(pre)(Image.fromarray(pixels))
        build_transforms(["ToTensor"])
    assert out.shape == (1, 4, 4)
    torch.testing.assert_close(out, torch.full((1, 4, 4), 2.0))
