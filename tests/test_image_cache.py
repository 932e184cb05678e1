"""The image cache (data/image_cache.py): image folders decoded once at the training size, in memory or in
a memory-mapped file on disk. Correctness only: the same samples as decoding per epoch, memory and disk
give the same tensors, a changed file, a truncated cache file or another version's manifest rebuilds the
cache, resume is exact, bad files are still skipped or reported. Tiny folders written by the tests."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

import trainlab
from test_distributed import assert_close_weights, weights
from trainlab.data import build_data, image_cache
from trainlab.data.base import ArrayDataset
from trainlab.data.image_cache import CACHE_VERSION, CachedImages
from trainlab.data.images import ImageFileDataset
from trainlab.data.loaders import ResumableDataLoader, TensorLoader, make_loader
from trainlab.data.peek import sample_batch
from trainlab.data.splits import targets_of
from trainlab.errors import DataError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GLOO = dist.is_available() and dist.is_gloo_available()
TRANSFORMS = [{"Resize": [[8, 8]]}, "RandomHorizontalFlip", "ToTensor"]


def make_folder(root, n=16, seed=0):
    """n random images of 10-30 px a side (a third PNG, the rest JPEG) in cats/ and dogs/."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("cats", "dogs")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(10, 31, 2))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 3 == 0 else 'jpg'}")
    return root


def config(root, **data):
    return trainlab.load_config(
        None,
        {
            "data.source": "image_folder",
            "data.root": str(root),
            "data.batch_size": 4,
            "data.val_fraction": 0.25,
            "data.test_fraction": 0.0,
            "data.transforms": TRANSFORMS,
            **{f"data.{k}": v for k, v in data.items()},
        },
    )


def cache_files(folder):
    return sorted(
        p.name for p in folder.iterdir() if p.suffix in (".npy", ".json") and not p.name.startswith(".")
    )


def test_cached_splits_hold_the_same_samples_as_decoding_per_epoch(tmp_path):
    root = make_folder(tmp_path / "images")
    cached, off = build_data(config(root, cache="memory")), build_data(config(root, cache="off"))
    assert isinstance(cached.train, ArrayDataset) and cached.train.x.shape == (12, 3, 8, 8)
    assert not isinstance(off.train, ArrayDataset)  # several sizes: decoded per sample, every epoch
    assert cached.info["cache"]["where"] == "memory"
    assert cached.info["notes"][-1].startswith("decoded 16 images once at 8×8 into memory")
    for split in ("train", "val"):
        assert torch.equal(targets_of(getattr(cached, split)), targets_of(getattr(off, split)))
    # One epoch through each loader: the same samples in the same order (labels batch by batch), and
    # without augmentation (validation) the same pixels.
    fast = make_loader(cached.train, 4, shuffle=True, seed=3)
    slow = make_loader(off.train, 4, shuffle=True, seed=3)
    assert isinstance(fast, TensorLoader) and isinstance(slow, ResumableDataLoader)
    assert [y.tolist() for _, y in fast] == [y.tolist() for _, y in slow]
    for (xa, ya), (xb, yb) in zip(
        make_loader(cached.val, 4, shuffle=False), make_loader(off.val, 4, shuffle=False)
    ):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert cached.input_shape == off.input_shape == (3, 8, 8)


def test_memory_and_disk_give_identical_tensors_and_disk_is_reused(tmp_path):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    memory = build_data(config(root, cache="memory", cache_dir=str(folder)))
    assert not folder.exists()  # memory mode writes nothing
    disk = build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert disk.info["cache"]["where"] == "disk"
    assert [p.rsplit(".", 1)[1] for p in cache_files(folder)] == ["json", "npy"]  # one folder: one cache
    assert torch.equal(memory.train.x, disk.train.x) and torch.equal(memory.val.x, disk.val.x)
    again = build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert again.info["notes"][-1].startswith("read 16 images")  # decoded by the earlier run
    from_disk = build_data(config(root, cache="memory", cache_dir=str(folder)))  # memory mode reuses it
    assert from_disk.info["notes"][-1].startswith("read 16 images") and torch.equal(
        from_disk.train.x, memory.train.x
    )


def mapped_file(x):
    """The file (or '[heap]', or None) of the memory mapping that holds x's data, from /proc/self/maps."""
    ptr = x.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= ptr < end:
            return fields[5] if len(fields) == 6 else None
    return None


def epoch(dataset, shuffle):
    """One epoch of the fast loader: [(x, y)] with the global RNG (the random flips) seeded."""
    torch.manual_seed(0)
    loader = make_loader(dataset, 4, shuffle=shuffle, seed=3)
    assert isinstance(loader, TensorLoader)
    return list(loader)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory mappings")
def test_splits_cut_from_a_disk_cache_stay_in_it_and_batch_as_in_memory(tmp_path):
    root, folder = make_folder(tmp_path / "images", n=24), tmp_path / "cache"
    fractions = {"val_fraction": 0.25, "test_fraction": 0.25, "cache_dir": str(folder)}
    disk = build_data(config(root, cache="disk", **fractions))
    memory = build_data(config(root, cache="memory", **fractions))  # reads the same cache into memory
    npy = str(_cache_of(folder, ".npy").resolve())
    splits = {s: (getattr(disk, s), getattr(memory, s)) for s in ("train", "val", "test")}
    assert [len(d) for d, _ in splits.values()] == [12, 6, 6]
    for name, (d, m) in splits.items():
        # not copied: every split indexes the one mapping of the cache file; memory mode copies as before
        assert d.storage is disk.train.storage and mapped_file(d.storage) == npy, name
        assert d.rows is not None and m.rows is None and mapped_file(m.x) != npy
        assert torch.equal(d.x, m.x) and torch.equal(d.y, m.y), name
        # the same batches: samples, order, pixels (flips included) over one epoch
        shuffle = name == "train"
        for (xd, yd), (xm, ym) in zip(epoch(d, shuffle), epoch(m, shuffle), strict=True):
            assert torch.equal(yd, ym) and torch.equal(xd, xm), name
    loader = make_loader(disk.train, 4, shuffle=True, seed=3)
    assert not loader.precomputed and mapped_file(loader.x) == npy
    assert torch.equal(sample_batch(loader, 3)[0], sample_batch(memory.train, 3)[0])  # peeking: its rows
    folds = build_data(config(root, cache="disk", **{**fractions, "val_fraction": 0.0}, k_fold=3, fold=1))
    cut = (folds.train, folds.val, folds.test)  # k-fold cuts keep row numbers too
    assert [len(s) for s in cut] == [12, 6, 6] and all(mapped_file(s.storage) == npy for s in cut)


def test_auto_goes_to_disk_when_the_memory_limit_is_exceeded(tmp_path):
    root = make_folder(tmp_path / "images")
    bundle = build_data(config(root, cache_memory_mb=0.001))
    assert bundle.info["cache"]["where"] == "disk"
    assert bundle.info["cache"]["dir"] == str(root / ".trainlab-cache")  # the default: beside the data
    assert build_data(config(root)).info["cache"]["where"] == "memory"  # 3 KB fit the default share of RAM


def test_a_changed_file_rebuilds_the_cache(tmp_path):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    first = build_data(config(root, cache="disk", cache_dir=str(folder), val_fraction=0.0))
    target = root / "cats" / "0.png"  # lossless: its new pixels can be checked
    stat = target.stat()
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = build_data(config(root, cache="disk", cache_dir=str(folder), val_fraction=0.0))
    assert second.info["notes"][-1].startswith("decoded 16 images once")
    row = second.train.x[0]  # cats/0.png is the first file
    assert torch.equal(row, torch.full((3, 8, 8), 200, dtype=torch.uint8)) and not torch.equal(
        row, first.train.x[0]
    )


def test_a_changed_file_removes_the_stale_caches_and_keeps_other_transforms_of_the_same_files(tmp_path):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    other_root = make_folder(tmp_path / "other", n=4)

    def build(root, size):
        transforms = [{"Resize": [[size, size]]}, "ToTensor"]
        return build_data(
            config(root, cache="disk", cache_dir=str(folder), val_fraction=0.0, transforms=transforms)
        )

    build(root, 8), build(root, 6), build(other_root, 8)
    assert len(cache_files(folder)) == 6  # train caches of two sizes, and one of another root
    (folder / "train-old.json").write_text(json.dumps({"version": 1, "key": "old"}))  # no root: left alone
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    dead, alive = folder / f".train-0a1b.npy.{ended.pid}.tmp", folder / f".train-2c3d.json.{os.getpid()}.tmp"
    foreign = folder / f".notes.txt.{ended.pid}.tmp"  # not a cache's: the folder may hold other files
    for tmp in (dead, alive, foreign):  # left by a killed writer, and by one still writing (this process)
        tmp.write_bytes(b"x" * 1000)
        os.utime(tmp, (time.time() - 7200, time.time() - 7200))

    target = root / "cats" / "0.png"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))  # "edited"
    edited = build(root, 8)
    assert edited.info["notes"][-1].startswith("decoded 16 images once")
    assert edited.info["cache"]["removed"]["caches"] == 2  # both sizes described the old files
    assert "removed 2 stale caches and 1 leftover .tmp file" in edited.info["notes"][-1]
    assert not dead.exists() and alive.exists() and foreign.exists()
    other = sorted({n.rsplit(".", 1)[0] for n in cache_files(folder)} - {"train-old"})
    assert len(other) == 2  # the new cache and the other root's
    assert build(root, 6).info["cache"]["removed"]["caches"] == 0  # same files, another size: both kept
    assert len(cache_files(folder)) == 7  # 3 caches (npy + json) and the old manifest
    assert build(root, 8).info["notes"][-1].startswith("read 16 images")


def _cache_of(folder, suffix):
    (path,) = [p for p in folder.iterdir() if p.suffix == suffix]
    return path


def test_a_truncated_cache_file_or_another_versions_manifest_is_rebuilt(tmp_path):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    good = build_data(config(root, cache="disk", cache_dir=str(folder))).train.x.clone()
    npy = _cache_of(folder, ".npy")
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])  # cut short, as by a kill or a full disk
    rebuilt = build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert rebuilt.info["notes"][-1].startswith("decoded 16 images once") and torch.equal(
        rebuilt.train.x, good
    )

    manifest = _cache_of(folder, ".json")
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "version": CACHE_VERSION + 1}))
    again = build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert again.info["notes"][-1].startswith("decoded 16 images once") and torch.equal(again.train.x, good)
    assert json.loads(manifest.read_text())["version"] == CACHE_VERSION


def test_bad_files_are_reported_or_skipped_with_the_cache(tmp_path):
    root = make_folder(tmp_path / "images")
    bad = root / "dogs" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError, match=r"dogs/1\.jpg"):
        build_data(config(root, cache="memory"))
    bundle = build_data(config(root, cache="disk", cache_dir=str(tmp_path / "cache"), skip_bad_files=True))
    assert bundle.info["skipped_files"] == 1 and len(bundle.train) + len(bundle.val) == 15
    assert isinstance(bundle.train, ArrayDataset)


def broken_png(path: Path) -> None:
    """A PNG whose compressed pixels are garbage under valid CRCs: PIL's verify() passes it, torchvision
    0.29's decoder dies on it with SIGSEGV, PIL's decoder raises OSError."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.index(b"IDAT")
    n = struct.unpack(">I", data[i - 4 : i])[0]
    data[i + 4 : i + 4 + n] = b"\xff" * n
    data[i + 4 + n : i + 8 + n] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 4 + n])))
    path.write_bytes(bytes(data))


def test_a_png_with_broken_compressed_data_is_an_error_not_a_crash(tmp_path):
    root = make_folder(tmp_path / "images")
    broken_png(root / "cats" / "0.png")
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(
        f"data: {{source: image_folder, root: {root}, cache: memory, val_fraction: 0.25,\n"
        "  transforms: [{Resize: [[8, 8]]}, ToTensor]}\n"
        "model: {name: mlp, hidden: [8]}\ntrain: {max_steps: 1}\n"
    )
    cli = [sys.executable, "-m", "trainlab", "train", str(cfg), "--quiet"]
    # in a child process: a regression would kill it (exit -11), not this test session
    done = subprocess.run([*cli, "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cats/0.png" in done.stderr and "skip_bad_files" in done.stderr
    skipped = subprocess.run(
        [*cli, "data.skip_bad_files=true", "--out", str(tmp_path / "run2")], capture_output=True, text=True
    )
    assert skipped.returncode == 0, skipped.stderr[-2000:]


def test_a_file_that_fails_to_decode_leaves_the_disk_cache_by_row_number(tmp_path, monkeypatch):
    """A file the scan passes but the decoder rejects (a real one is rare: the scan checks headers and
    ends) is dropped; on disk the other rows stay in the mapped file, and read back, the same."""
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    decode = image_cache.decode_file

    def failing(path, mode):
        if Path(path).name == "1.jpg":
            raise OSError("broken data stream")
        return decode(path, mode)

    monkeypatch.setattr(image_cache, "decode_file", failing)
    memory = build_data(config(root, cache="memory", skip_bad_files=True))
    for first in (True, False):  # decoded, then read back
        disk = build_data(config(root, cache="disk", cache_dir=str(folder), skip_bad_files=True))
        assert disk.info["notes"][-1].startswith("decoded" if first else "read")
        assert disk.info["skipped_files"] == memory.info["skipped_files"] == 1
        npy = str(_cache_of(folder, ".npy").resolve())
        assert len(disk.train.storage) == 16 and mapped_file(disk.train.storage) == npy
        assert disk.val.storage is disk.train.storage
        assert len(set(torch.cat([disk.train.rows, disk.val.rows]).tolist())) == 15
        for split in ("train", "val"):
            d, m = getattr(disk, split), getattr(memory, split)
            assert torch.equal(d.x, m.x) and torch.equal(d.y, m.y)


def test_images_of_several_sizes_after_the_head_are_cached_at_their_own_sizes(tmp_path):
    # The ants/bees shape: training starts with RandomResizedCrop (no fixed size before it): the train
    # folder is decoded once at the files' own sizes and transformed per sample; evaluation is Resize +
    # CenterCrop (a fixed size): the val folder is stacked for the batched fast path.
    for split in ("train", "val"):
        make_folder(tmp_path / "images" / split, n=6, seed=len(split))
    args = {
        "data.source": "image_folder",
        "data.root": str(tmp_path / "images"),
        "data.batch_size": 4,
        "data.transforms": [{"RandomResizedCrop": 8}, "ToTensor"],
        "data.eval_transforms": [{"Resize": 10}, {"CenterCrop": 8}, "ToTensor"],
        "data.cache": "disk",
        "data.cache_dir": str(tmp_path / "cache"),
    }
    bundle = build_data(trainlab.load_config(None, args))
    assert isinstance(bundle.train.dataset, CachedImages) and isinstance(bundle.val, ArrayDataset)
    assert bundle.val.x.shape == (6, 3, 8, 8)
    assert any(n.startswith("the train transforms start with a random item") for n in bundle.info["notes"])
    assert bundle.info["notes"][-1].startswith("decoded 6 images once at their own sizes (up to")
    off = build_data(trainlab.load_config(None, {**args, "data.cache": "off"}))
    raw_cached, raw_off = bundle.train.dataset, off.train.dataset  # under the per-sample transforms
    for i in range(6):
        assert torch.equal(raw_cached[i][0], raw_off[i][0]) and raw_cached[i][1] == raw_off[i][1]
    assert bundle.train[0][0].shape == bundle.val[0][0].shape == (3, 8, 8)
    again = build_data(trainlab.load_config(None, args))  # read back from the disk cache
    assert again.info["notes"][-1].startswith("read 6 images at their own sizes")
    assert all(torch.equal(again.train.dataset[i][0], raw_off[i][0]) for i in range(6))
    # auto, and too large for memory: only the stacked val split goes to disk; train is decoded per epoch
    tight = build_data(
        trainlab.load_config(None, {**args, "data.cache": "auto", "data.cache_memory_mb": 0.001})
    )
    assert isinstance(tight.train.dataset, ImageFileDataset) and isinstance(tight.val, ArrayDataset)
    assert tight.info["cache"]["where"] == "disk"
    assert any(n.startswith("not cached: the train transforms start") for n in tight.info["notes"])


def test_the_food11_example_runs_on_the_cached_fast_path(tmp_path):
    for split in ("train", "val", "test"):
        make_folder(tmp_path / "food-11" / split, n=4, seed=len(split))
    cfg = trainlab.load_config(EXAMPLES / "food11.yaml", {"data.root": str(tmp_path / "food-11")})
    bundle = build_data(cfg)
    for split in (bundle.train, bundle.val, bundle.test):
        assert isinstance(split, ArrayDataset) and split.x.shape[1:] == (3, 128, 128)
    assert bundle.preprocessing["fast_path"] is True


@pytest.mark.parametrize(
    "transforms",
    [
        "[{Resize: [[8, 8]]}, RandomHorizontalFlip, ToTensor]",  # rows of one size: TensorLoader
        "[{RandomResizedCrop: 8}, RandomHorizontalFlip, ToTensor]",  # own sizes: CroppedImageLoader
    ],
    ids=["resize", "crop"],
)
def test_resume_mid_epoch_with_the_disk_cache_is_exact(tmp_path, transforms):
    """Killed inside a checkpoint save mid-run (the fault hook of tests/test_resume.py), resumed: the same
    weights as an uninterrupted run."""
    from trainlab.cli import main

    root = make_folder(tmp_path / "images", n=24)
    args = [
        "data.source=image_folder",
        f"data.root={root}",
        "data.batch_size=4",
        "data.val_fraction=0.25",  # both cut from the disk cache by row numbers
        "data.test_fraction=0.25",
        f"data.transforms={transforms}",
        "data.eval_transforms=[{Resize: [[8, 8]]}, ToTensor]",
        "data.cache=disk",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model.name=mlp",
        "model.hidden=[16]",
        "train.epochs=2",
        "train.checkpoint_every_n_steps=2",
        "--quiet",
    ]
    run, marker = tmp_path / "run", tmp_path / "in_save"
    # 12 training images, batch 4: saves at step 2 (the first last.pt), then at the end of epoch 1
    # (step 3), which pauses inside the save and is killed: last.pt stays at step 2, mid-epoch.
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainlab", "train", *args, "--out", str(run)],
        env={**os.environ, "TQDM_DISABLE": "1", "TRAINLAB_FAULT_PAUSE_IN_SAVE": str(marker)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reference = tmp_path / "reference"
    assert main(["train", *args, "--out", str(reference)]) == 0  # meanwhile, the uninterrupted run
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the paused save"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = run / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["loader"] == {"epoch": 0, "position": 2}
    assert main(["train", *args, "--out", str(run), "--resume"]) == 0
    got, ref = (
        torch.load(last, weights_only=True),
        torch.load(reference / "checkpoints" / "last.pt", weights_only=True),
    )
    assert got["global_step"] == ref["global_step"] == 6
    for k in ref["model"]:
        assert torch.equal(got["model"][k], ref["model"][k]), k


# ----------------------------------------------------------------------------- DDP: one rank decodes


@pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend is not available")
def test_under_ddp_one_rank_decodes_and_the_other_maps_its_disk_cache(tmp_path):
    """`trainlab train --nproc 2` with data.cache: memory: rank 0 decodes into the disk cache beside the
    data, rank 1 waits and maps the same file, and training gives the weights of one process with batch
    2 x 4 that decodes every epoch (data.cache: off)."""
    from trainlab.cli import main

    root = make_folder(tmp_path / "images")
    args = [
        "data.source=image_folder",
        f"data.root={root}",
        "data.batch_size=4",
        "data.val_fraction=0.25",
        "data.test_fraction=0",
        "data.transforms=[{Resize: [[8, 8]]}, ToTensor]",  # no augmentation: the sample order decides
        "model.name=mlp",
        "model.hidden=[16]",
        "optimizer.name=SGD",
        "optimizer.lr=0.05",
        "optimizer.momentum=0.9",
        "scheduler.name=none",
        "train.epochs=2",
        "train.device=cpu",
    ]
    ddp = ["train", *args, "data.cache=memory", "--out", "ddp", "--nproc", "2"]
    proc = subprocess.Popen(  # meanwhile, the single process below
        [sys.executable, "-m", "trainlab", *ddp],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"},
    )
    single = tmp_path / "single"
    off = ["data.batch_size=8", "data.cache='off'"]  # quoted: YAML reads a bare off as false
    assert main(["train", *args, *off, "--out", str(single), "--quiet"]) == 0
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "completed"
    cache = summary["data_info"]["cache"]
    assert (cache["ranks"], cache["decoded_by"], cache["where"]) == (2, 1, "disk")
    assert f"into the disk cache {root / '.trainlab-cache'}, shared by 2 ranks" in stdout
    assert stdout.count("decoded 16 images once") == 1  # printed once, by rank 0
    assert len(cache_files(root / ".trainlab-cache")) == 2  # one cache (npy + manifest), written once
    assert_close_weights(weights(tmp_path / "ddp"), weights(single))


def _rank_with_a_broken_file(rank: int, init_file: str, root: Path, out: Path) -> None:
    """One of two gloo ranks (torch.multiprocessing.spawn) building the data while cats/0.png cannot be
    decoded; writes the DataError it got to out/<rank>.txt."""
    from trainlab.data import image_cache

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    decode = image_cache.decode_file

    def broken(path, mode):
        if Path(path).name == "0.png":
            raise OSError("broken on purpose")
        return decode(path, mode)

    image_cache.decode_file = broken
    try:
        build_data(config(root, cache="memory"))
        message = "no error"
    except DataError as e:
        message = str(e)
    finally:
        dist.destroy_process_group()
    (out / f"{rank}.txt").write_text(message)


@pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend is not available")
def test_under_ddp_a_decoding_error_on_rank_0_stops_the_waiting_rank_too(tmp_path):
    root = make_folder(tmp_path / "images")
    torch.multiprocessing.spawn(
        _rank_with_a_broken_file, args=(str(tmp_path / "init"), root, tmp_path), nprocs=2, join=True
    )
    first, other = ((tmp_path / f"{r}.txt").read_text() for r in (0, 1))
    assert first.startswith(f"image {root / 'cats' / '0.png'}: cannot decode (broken on purpose)")
    assert other.startswith("rank 0 could not cache the image folder") and first in other


# ----------------------------------------------------------------------------- a cache_dir that fails


def test_a_cache_dir_that_cannot_be_written_is_a_data_error_naming_it(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "images")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=rf"data\.cache_dir: cannot write the image cache in {blocker}/cache"):
        build_data(config(root, cache="disk", cache_dir=str(blocker / "cache")))

    def read_only(*args, **kwargs):  # what a read-only folder gives, without needing a non-root user
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(np.lib.format, "open_memmap", read_only)
    folder = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"data\.cache_dir: .* in {folder} \(Permission denied\)"):
        build_data(config(root, cache="disk", cache_dir=str(folder)))


def test_a_full_disk_is_a_data_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(DataError, match=rf"not enough free space for the image cache \(0 MB\) in {folder};"):
        build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert list(folder.iterdir()) == []  # the .tmp is gone

    def unsupported(fd, offset, length):  # a file system that cannot reserve space: written without
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    bundle = build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert bundle.info["notes"][-1].startswith("decoded 16 images once") and len(cache_files(folder)) == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda m: [m],  # a JSON list
        lambda m: {k: v for k, v in m.items() if k != "kept"},
        lambda m: {**m, "kept": ["0", 1]},
        lambda m: {**m, "kept": [0, 1, 99]},  # past the 16 files
    ],
)
def test_a_malformed_manifest_is_no_cache_and_is_rebuilt(tmp_path, change):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    good = build_data(config(root, cache="disk", cache_dir=str(folder))).train.x.clone()
    manifest = _cache_of(folder, ".json")
    manifest.write_text(json.dumps(change(json.loads(manifest.read_text()))))
    rebuilt = build_data(config(root, cache="disk", cache_dir=str(folder)))
    assert rebuilt.info["notes"][-1].startswith("decoded 16 images once")
    assert torch.equal(rebuilt.train.x, good) and json.loads(manifest.read_text())["kept"] == list(range(16))


def test_files_that_fail_to_decode_are_named_in_a_note(tmp_path, monkeypatch):
    root, folder = make_folder(tmp_path / "images"), tmp_path / "cache"
    decode = image_cache.decode_file

    def failing(path, mode):
        if Path(path).name in ("1.jpg", "5.jpg"):
            raise OSError("broken data stream")
        return decode(path, mode)

    monkeypatch.setattr(image_cache, "decode_file", failing)
    decoded = build_data(config(root, cache="disk", cache_dir=str(folder), skip_bad_files=True))
    assert decoded.info["skipped_files"] == 2
    assert (
        "skipped 2 files that failed to decode: dogs/1.jpg (broken data stream), dogs/5.jpg (broken data "
        "stream)" in decoded.info["notes"]
    )
    read = build_data(config(root, cache="disk", cache_dir=str(folder), skip_bad_files=True))
    assert (
        "skipped 2 files that failed to decode when the cache was written: dogs/1.jpg, dogs/5.jpg"
        in (read.info["notes"])
    )


def _as_two_ranks(tmp_path, monkeypatch):
    """This process as rank 0 of 2 for the image cache: a real gloo group of one, world_size() says 2."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    monkeypatch.setattr(image_cache.distributed, "world_size", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "0")


@pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend is not available")
def test_under_ddp_an_unwritable_cache_dir_falls_back_to_memory_per_rank(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "images")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _as_two_ranks(tmp_path, monkeypatch)
    try:
        bundle = build_data(config(root, cache="memory", cache_dir=str(blocker / "cache")))
        assert bundle.info["cache"]["where"] == "memory" and bundle.train.rows is None
        note, summary = bundle.info["notes"][-2:]
        assert note.startswith("each of the 2 ranks decodes the images into its own memory: data.cache_dir")
        assert summary.startswith("decoded 16 images once at 8×8 into memory, ")
        assert "shared by" not in summary

        folder = tmp_path / "cache"
        expected = ["decoded 16 images once", "read 16 images at 8×8 (decoded by an earlier run) from"]
        for start in expected:  # auto, which fits in memory: the ranks share the disk cache
            bundle = build_data(config(root, cache="auto", cache_dir=str(folder)))
            summary = bundle.info["notes"][-1]
            assert bundle.info["cache"]["where"] == "disk" and "data.cache: memory" not in summary
            assert "shared by 2 ranks (one copy in the page cache, not one per rank)" in summary
            assert summary.startswith(start)
        monkeypatch.setenv("LOCAL_RANK", "1")  # a rank that waits for its machine's local rank 0
        summary = build_data(config(root, cache="auto", cache_dir=str(folder))).info["notes"][-1]
        assert summary.startswith("read 16 images at 8×8 (decoded by an earlier run or local rank 0)")
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- placement of a mapped split


def test_a_mapped_split_stays_on_the_host_for_any_accelerator_and_batches_are_copied():
    storage = torch.arange(6 * 4, dtype=torch.uint8).reshape(6, 4)
    split = ArrayDataset(storage, torch.arange(3), rows=torch.tensor([5, 0, 3]))
    expected = {"cpu": "device", "cuda": "pinned", "mps": "host", "xpu": "host"}
    for device, placement in expected.items():  # nothing touches the device while the loader is built
        loader = TensorLoader(split, 2, shuffle=False, device=device)
        assert (loader.placement, loader.x.device.type) == (placement, "cpu"), device
    # "meta" stands for an accelerator this machine lacks: each batch is gathered on the host, then moved
    batches = list(TensorLoader(split, 2, shuffle=False, device="meta"))
    assert [(x.device.type, tuple(x.shape), y.device.type) for x, y in batches] == [
        ("meta", (2, 4), "meta"),
        ("meta", (1, 4), "meta"),
    ]
