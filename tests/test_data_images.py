"""image_folder: real PNG/JPEG files on disk, through the real scanning and decoding code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset
from trainlab.data.images import ImageFileDataset, image_folder
from trainlab.data.transforms import attach_transforms, eval_transform_from_preprocessing
from trainlab.errors import DataError
from trainlab.registry import DATASETS


def _save(path, size=(6, 5), mode="RGB", fmt=None, seed=0):
    """A random image of `size` (H, W), saved as PNG or JPEG by suffix; returns its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, format=fmt)
    return pixels


def _split_tree(root, size=(6, 5)):
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for c, cls in enumerate(("ants", "bees")):
            for i in range(n):
                ext = "png" if i % 2 == 0 else "jpg"
                _save(root / split / cls / f"{i}.{ext}", size, seed=100 * c + i)
    return root


def test_split_layout_png_and_jpeg_hidden_folders_and_non_images(tmp_path):
    root = _split_tree(tmp_path / "hymenoptera")
    pixels = _save(root / "train" / "ants" / "0.png", seed=7)  # overwrite: known lossless pixels
    _save(root / "train" / ".ipynb_checkpoints" / "x.png")  # hidden: never a class
    _save(root / "train" / "bees" / ".ipynb_checkpoints" / "copy.png")  # hidden inside a class: not a sample
    (root / "train" / "bees" / "notes.txt").write_text("not an image")

    src = DATASETS.get("image_folder")(DataConfig(source="image_folder", root=str(root)))
    assert src.class_names == ["ants", "bees"]
    assert isinstance(src.train, ArrayDataset) and src.train.x.dtype == torch.uint8
    assert src.train.x.shape == (6, 3, 6, 5)
    assert src.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(src.val) == 2 and len(src.test) == 2
    assert torch.equal(src.train.x[0], torch.from_numpy(pixels).permute(2, 0, 1))
    assert src.info["non_image_files"] == 1
    assert any("notes.txt" in w for w in src.info["warnings"])
    assert src.info["image_mode"] == "RGB" and src.info["image_size"] == [6, 5]


def test_flat_layout_grayscale_stays_one_channel(tmp_path):
    for c, cls in enumerate(("cat", "dog")):
        for i in range(2):
            _save(tmp_path / cls / f"{i}.png", (4, 4), mode="L", seed=c * 10 + i)
    src = image_folder(DataConfig(source="image_folder", root=str(tmp_path)))
    assert src.val is None and src.test is None
    assert src.train.x.shape == (4, 1, 4, 4)
    assert src.info["image_mode"] == "L"


def test_empty_class_folder_in_training_is_an_error(tmp_path):
    root = _split_tree(tmp_path)
    (root / "train" / "wasps").mkdir()
    (root / "val" / "wasps").mkdir()
    (root / "test" / "wasps").mkdir()
    with pytest.raises(DataError, match="wasps"):
        image_folder(DataConfig(source="image_folder", root=str(root)))


def test_empty_class_folder_outside_training_is_reported(tmp_path):
    root = _split_tree(tmp_path)
    for p in (root / "test" / "bees").iterdir():
        p.unlink()
    src = image_folder(DataConfig(source="image_folder", root=str(root)))
    assert src.info["empty_class_folders"] == ["test/bees"]
    assert src.test.y.tolist() == [0]


def test_class_folders_must_match_across_splits(tmp_path):
    root = _split_tree(tmp_path)
    _save(root / "val" / "wasps" / "0.png")
    with pytest.raises(DataError, match=r"wasps.*train") as err:
        image_folder(DataConfig(source="image_folder", root=str(root)))
    assert "val" in str(err.value)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    root = _split_tree(tmp_path, size=(16, 16))
    _truncate(root / "train" / "bees" / "1.jpg")
    with pytest.raises(DataError, match=r"bees/1\.jpg") as err:
        image_folder(DataConfig(source="image_folder", root=str(root)))
    assert "skip_bad_files" in str(err.value)


def test_skip_bad_files_counts_them(tmp_path):
    root = _split_tree(tmp_path, size=(16, 16))
    _truncate(root / "train" / "bees" / "1.jpg")
    _truncate(root / "val" / "ants" / "0.png")
    src = image_folder(DataConfig(source="image_folder", root=str(root), skip_bad_files=True))
    assert src.info["skipped_files"] == 2
    assert len(src.train) == 5 and len(src.val) == 1


def test_different_sizes_need_image_size(tmp_path):
    _save(tmp_path / "a" / "0.png", (6, 5))
    _save(tmp_path / "b" / "0.png", (9, 7))
    with pytest.raises(DataError, match="data.image_size"):
        image_folder(DataConfig(source="image_folder", root=str(tmp_path)))
    src = image_folder(DataConfig(source="image_folder", root=str(tmp_path), image_size=[8, 4]))
    assert src.train.x.shape == (2, 3, 8, 4)
    assert src.info["image_size"] == [8, 4]


def test_lazy_path_decodes_the_same_pixels(tmp_path):
    root = _split_tree(tmp_path)
    cfg = DataConfig(source="image_folder", root=str(root))
    eager = image_folder(cfg)
    lazy = image_folder(cfg.model_copy(update={"in_memory": False}))
    assert isinstance(lazy.train, ImageFileDataset) and lazy.info["in_memory"] is False
    x, y = lazy.train[4]
    assert torch.equal(x, eager.train.x[4]) and int(y) == 1
    # Without the cache (data.cache: off), a memory limit below the decoded size also chooses the lazy
    # path; with it, such a folder goes to the disk cache (tests/test_image_cache.py).
    off = cfg.model_copy(update={"cache": "off"})
    assert isinstance(image_folder(off, memory_limit_mb=1e-6).train, ImageFileDataset)


def test_lazy_varying_sizes_with_fixed_size_transforms(tmp_path):
    _save(tmp_path / "a" / "0.jpg", (20, 14))
    _save(tmp_path / "b" / "0.jpg", (12, 18))
    cfg = DataConfig(
        source="image_folder",
        root=str(tmp_path),
        transforms=[{"RandomResizedCrop": 8}, "ToTensor"],
        cache="off",
    )  # decoded per epoch (with the cache: tests/test_image_cache.py)
    src = image_folder(cfg)
    assert isinstance(src.train, ImageFileDataset) and src.info["image_sizes_vary"]
    train, _, _, pre = attach_transforms(src.train, src.train, None, cfg, src.info)
    assert train[0][0].shape == (3, 8, 8) and train[1][0].shape == (3, 8, 8)
    assert (
        pre["eval_transforms"][:2] == [{"Resize": {"size": 8}}, {"CenterCrop": {"size": 8}}]
        and pre["image_size"] is None
    )


def test_predict_transform_matches_evaluation(tmp_path):
    root = _split_tree(tmp_path)
    cfg = DataConfig(
        source="image_folder",
        root=str(root),
        image_size=4,
        transforms=["RandomHorizontalFlip", {"Normalize": "auto"}],
    )
    src = image_folder(cfg)
    _, val, _, pre = attach_transforms(src.train, src.val, src.test, cfg, src.info)
    predict = eval_transform_from_preprocessing(pre)
    from_file = predict(Image.open(root / "val" / "ants" / "0.png"))
    torch.testing.assert_close(from_file, val[0][0])
    assert pre["image_size"] == [4, 4] and pre["image_mode"] == "RGB"
