"""Images decoded once at their own sizes under a list that starts with RandomResizedCrop (the ants/bees
recipe): batched in this process by `CroppedImageLoader`, not per sample through a DataLoader.

The checks: the crop itself (a whole-image box is a plain resize), the batches (one size, every sample once
per epoch, sharded by rank), and an exact resume from a mid-epoch position with the global RNG restored.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import trainlab
from trainlab.data import build_data
from trainlab.data.image_cache import CachedImages
from trainlab.data.loaders import CroppedImageLoader, ResumableDataLoader, make_loader
from trainlab.data.transforms import CropBatchTransform, random_resized_crops

pytestmark = pytest.mark.usefixtures("one_thread")

CROP = [{"RandomResizedCrop": 8}, "RandomHorizontalFlip", "ToTensor"]


def make_folder(root, n=14):
    """n random JPEG/PNG images of 10-30 px a side (several sizes) in cats/ and dogs/."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("cats", "dogs")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(10, 31, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{i}.{'png' if i % 3 == 0 else 'jpg'}"
        )
    return root


def bundle(root, **data):
    args = {
        "data.source": "image_folder",
        "data.root": str(root),
        "data.val_fraction": 0.0,
        "data.test_fraction": 0.0,
        "data.transforms": CROP,
        "data.eval_transforms": [{"Resize": [[8, 8]]}, "ToTensor"],
        "data.cache": "memory",
        **{f"data.{k}": v for k, v in data.items()},
    }
    return build_data(trainlab.load_config(None, args))


def test_a_whole_image_box_is_a_plain_resize():
    image = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    whole = v2.RandomResizedCrop(5, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out = random_resized_crops([image, image], whole, None)
    assert out.shape == (2, 3, 5, 5) and out.dtype == torch.uint8
    assert torch.equal(out[0], F.resize(image, [5, 5], antialias=True)) and torch.equal(out[0], out[1])
    wide = torch.randint(0, 256, (3, 9, 30), dtype=torch.uint8)  # boxes stay inside any image
    assert random_resized_crops([wide] * 50, v2.RandomResizedCrop(4), None).shape == (50, 3, 4, 4)


def test_which_lists_take_the_batched_crop():
    assert CropBatchTransform.supports(CROP)
    assert not CropBatchTransform.supports([{"Resize": 8}, {"RandomResizedCrop": 8}])  # not first
    assert not CropBatchTransform.supports([{"RandomResizedCrop": 8}, "ColorJitter"])  # no batched op


def test_cached_images_under_a_crop_first_list_are_batched_and_cover_every_sample(tmp_path):
    data = bundle(make_folder(tmp_path / "images"))
    assert isinstance(data.train.dataset, CachedImages) and data.train.batched is not None
    assert data.preprocessing["fast_path"] is True
    loader = make_loader(data.train, 4, shuffle=True, seed=3)
    assert isinstance(loader, CroppedImageLoader) and len(loader) == 4
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8)] * 3 + [(2, 3, 8, 8)]
    assert all(x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 for x, _ in batches)
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(int(data.train.dataset[i][1]) for i in range(14))
    # DDP: two ranks cover the epoch (padded by wrapping, as DistributedSampler)
    shards = [list(make_loader(data.train, 4, shuffle=True, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert [sum(len(y) for _, y in s) for s in shards] == [7, 7]
    # data.in_memory: false keeps the DataLoader path
    assert isinstance(make_loader(data.train, 4, shuffle=True, in_memory=False), ResumableDataLoader)


def test_a_resume_mid_epoch_gives_the_same_batches(tmp_path):
    data = bundle(make_folder(tmp_path / "images"))
    first = make_loader(data.train, 4, shuffle=True, seed=1)
    torch.manual_seed(0)
    whole, state, rng = [], None, None
    for step, batch in enumerate(first):
        whole.append(batch)
        if step == 1:  # what a checkpoint after step 2 holds
            state, rng = first.state_dict(), torch.get_rng_state()
    resumed = make_loader(data.train, 4, shuffle=True, seed=1)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    rest = list(resumed)
    assert len(rest) == 2
    for (x, y), (x2, y2) in zip(whole[2:], rest):
        assert torch.equal(x, x2) and torch.equal(y, y2)
