"""Image-folder benchmark: a folder of JPEGs of many sizes through four loops, in one process, interleaved.

    python benchmarks/bench_images.py                      # 990 JPEGs, 4 rounds of 2 epochs
    python benchmarks/bench_images.py --quick              # a smoke run (110 images, 2 rounds)
    python benchmarks/bench_images.py --rounds 6 --json runs/bench_images.json
    python benchmarks/bench_images.py --report runs/bench_images.json
    python benchmarks/bench_images.py --loaders             # the data path alone: ms per sample, no model

The folder (written once per run into a temporary directory, deterministic): 990 JPEGs (quality 90)
of 240-520 px a side in 11 class folders, smooth colour fields with a few shapes (their JPEG size
and decode cost are those of photos, not of noise). Every loop trains `resnet_small` (trainlab's
model zoo, built with the same seed) on `Resize: [[64, 64]]` + `RandomHorizontalFlip`, batch 32,
SGD (lr 0.01, momentum 0.9), on all 990 images (no validation or test split), for 2 epochs:

  cache   trainlab, `data.cache: auto` (the default): decoded once at 64x64 into memory, then the
          in-memory fast path (TensorLoader) with the flip per batch
  off     trainlab, `data.cache: off`: decoded and resized per sample every epoch through the
          DataLoader (data.num_workers: 0, the default)
  pil     the notes' way, hand-written: a Dataset that opens each file with PIL, `Resize((64, 64))`,
          `RandomHorizontalFlip`, `ToTensor` per sample, DataLoader(batch 32, shuffle), a plain step
  tensor  the same model and step on an in-memory uint8 tensor (990, 3, 64, 64), hand-written:
          `index_select` of a random permutation, a per-sample flip, /255: the model alone
  before  with `--before SRC`: trainlab from another checkout's `src` folder (e.g. a git worktree of
          the commit before the image cache, 2b6acb7), the same config without `data.cache`, run in
          a subprocess (PYTHONPATH=SRC); its epoch-2 samples/s and data wait, as for `cache`
`--crop` swaps the Resize for `RandomResizedCrop: 64` (the ants/bees recipe: no fixed size before the
first random item): `cache` then decodes each file once at its own size (CachedImages) and crops,
resizes and flips per sample in the DataLoader; `pil` crops with PIL; `tensor` is left out.
The hand-written loops use the channels-last layout, as trainlab does on the CPU for conv nets, so
that the ratios compare data paths, not layouts. Samples/s are those of the second epoch (trainlab:
its history's `train_samples_per_second` of epoch 2, the epoch loop only; the hand-written loops:
the second epoch's wall time); `data_wait_fraction` is trainlab's, of epoch 2. The ratios cache/x
are taken within each round; odd rounds run the loops in the reverse order, and the headline is the
geometric mean of the per-round ratios over an even number of rounds (as in bench_loops.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import trainlab
from bench_loops import silenced  # the same muting as the loop benchmark (benchmarks/ is on sys.path)
from trainlab.config import Config

SIZE, BATCH, EPOCHS, LR, MOMENTUM = 64, 32, 2, 0.01, 0.9
CLASSES = 11
LOOPS = ("cache", "off", "pil", "tensor")
LABELS = {
    "before": "trainlab before the cache (--before checkout), decoded per epoch",
    "cache": "trainlab, data.cache: auto (decoded once into memory)",
    "off": "trainlab, data.cache: off (decoded per epoch)",
    "pil": "hand-written: PIL per sample in a DataLoader (the notes' way)",
    "tensor": "hand-written: the same model on in-memory uint8 tensors",
}


# ----------------------------------------------------------------------------- the folder


def make_folder(root: Path, n: int = 990, classes: int = CLASSES, seed: int = 0) -> Path:
    """n JPEGs of 240-520 px a side in `classes` class folders; the same files for the same seed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % classes
        h, w = (int(v) for v in rng.integers(240, 521, size=2))
        base = np.array([(37 * c) % 256, (91 * c + 60) % 256, (53 * c + 120) % 256], dtype=np.float32)
        coarse = np.clip(base + rng.normal(0, 40, (6, 8, 3)), 0, 255).astype(
            np.uint8
        )  # a smooth colour field
        img = PIL.Image.fromarray(coarse).resize((w, h), PIL.Image.BICUBIC)
        grain = (
            rng.integers(-6, 7, (h // 4, w // 4, 1), dtype=np.int16).repeat(4, 0).repeat(4, 1)
        )  # some texture
        pixels = np.asarray(img, dtype=np.int16)
        pixels[: grain.shape[0], : grain.shape[1]] += grain
        img = PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = PIL.ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            box = [x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:04d}.jpg", quality=90)
    return root


# ----------------------------------------------------------------------------- the loops


def train_items(crop: bool) -> list:
    return [
        {"RandomResizedCrop": SIZE} if crop else {"Resize": [[SIZE, SIZE]]},
        "RandomHorizontalFlip",
        "ToTensor",
    ]


def trainlab_config(root: Path, cache: str, seed: int, crop: bool = False) -> dict:
    return {
        "name": f"bench_images_{cache}",
        "seed": seed,
        "data": {
            "source": "image_folder",
            "root": str(root),
            "cache": cache,
            "batch_size": BATCH,
            "val_fraction": 0.0,
            "test_fraction": 0.0,
            "transforms": train_items(crop),
        },
        "model": {"name": "resnet_small"},
        "optimizer": {"name": "SGD", "lr": LR, "momentum": MOMENTUM},
        "train": {"epochs": EPOCHS, "device": "cpu"},
    }


def run_trainlab(root: Path, cache: str, seed: int, crop: bool) -> tuple[float, float]:
    """(samples/s, data_wait_fraction) of the last epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        run = trainlab.train(trainlab_config(root, cache, seed, crop), out=Path(tmp) / "run")
    row = run.history_rows[-1]
    return row["train_samples_per_second"], row["train_data_wait_fraction"]


_BEFORE = """
import json, sys, tempfile, pathlib, trainlab
with tempfile.TemporaryDirectory() as tmp:
    run = trainlab.train(json.loads(sys.argv[1]), out=pathlib.Path(tmp) / "run")
row = run.history_rows[-1]
print(json.dumps([row["train_samples_per_second"], row.get("train_data_wait_fraction")]))
"""


def run_before(src: Path, root: Path, seed: int, crop: bool) -> tuple[float, float]:
    """trainlab of another checkout (`src`: its src folder) on the same config, in a subprocess."""
    import os
    import subprocess

    config = trainlab_config(root, "off", seed, crop)
    del config["data"]["cache"]  # a key the older code does not know
    env = {**os.environ, "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _BEFORE, json.dumps(config)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"--before {src}: the run failed:\n{done.stderr[-2000:]}")
    sps, wait = json.loads(done.stdout.strip().splitlines()[-1])
    return sps, wait


def make_model(seed: int) -> nn.Module:
    from trainlab.models import build_model

    torch.manual_seed(seed)
    cfg = Config.model_validate({"model": {"name": "resnet_small"}}).model
    return build_model(cfg, (3, SIZE, SIZE), CLASSES, "classification").to(memory_format=torch.channels_last)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


class PILFolder(Dataset):
    """The notes' dataset: PIL opens, converts, resizes and flips one file per __getitem__."""

    def __init__(self, root: Path, crop: bool = False):
        self.files = sorted(root.glob("*/*.jpg"))
        classes = sorted({f.parent.name for f in self.files})
        self.targets = [classes.index(f.parent.name) for f in self.files]
        first = v2.RandomResizedCrop(SIZE) if crop else v2.Resize((SIZE, SIZE))
        self.transform = v2.Compose(
            [first, v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with PIL.Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), self.targets[i]


def run_pil(root: Path, seed: int, crop: bool) -> float:
    model, ds = make_model(seed), PILFolder(root, crop)
    opt = _sgd(model)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for _epoch in range(EPOCHS):
        start = time.perf_counter()
        for x, y in loader:
            _step(model, opt, x, y)
    return len(ds) / (time.perf_counter() - start)


def loader_costs(root: Path, crop: bool) -> dict[str, float]:
    """Milliseconds per sample of trainlab's training loader alone (no model),
    second epoch, per cache mode."""
    from trainlab.data import build_data
    from trainlab.data.loaders import make_loader

    costs = {}
    for cache in ("auto", "off"):
        bundle = build_data(Config.model_validate(trainlab_config(root, cache, 0, crop)))
        loader = make_loader(bundle.train, BATCH, shuffle=True, seed=0)
        for _ in range(EPOCHS):
            start, n = time.perf_counter(), 0
            for _, y in loader:
                n += len(y)
        costs[cache] = 1000 * (time.perf_counter() - start) / n
    return costs


def in_memory_tensors(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The folder's images at 64x64 as uint8 (N, 3, 64, 64), decoded once (outside the timing)."""
    ds = PILFolder(root)
    resize = v2.Resize((SIZE, SIZE))
    images = []
    for f in ds.files:
        with PIL.Image.open(f) as img:
            images.append(v2.functional.pil_to_tensor(resize(img.convert("RGB"))))
    return torch.stack(images), torch.tensor(ds.targets)


def run_tensor(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    model = make_model(seed)
    opt = _sgd(model)
    g = torch.Generator().manual_seed(seed)
    for _epoch in range(EPOCHS):
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            xb = torch.index_select(x, 0, idx)
            flip = (torch.rand(len(idx), generator=g) < 0.5)[:, None, None, None]
            xb = torch.where(flip, xb.flip(-1), xb).float() / 255
            _step(model, opt, xb, torch.index_select(y, 0, idx))
    return len(x) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- driver


def one(loop: str, root: Path, seed: int, tensors, quiet: bool, crop: bool, before: Path | None) -> dict:
    if loop == "before":
        sps, wait = run_before(before, root, seed, crop)
        return {"samples_per_second": sps, "data_wait_fraction": wait}
    with silenced(quiet):
        if loop in ("cache", "off"):
            sps, wait = run_trainlab(root, "auto" if loop == "cache" else "off", seed, crop)
            return {"samples_per_second": sps, "data_wait_fraction": wait}
        if loop == "pil":
            return {"samples_per_second": run_pil(root, seed, crop)}
        return {"samples_per_second": run_tensor(*tensors, seed)}


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def report(results: list[dict[str, dict]], meta: dict) -> dict:
    rounds = len(results)
    recipe = "RandomResizedCrop: 64" if meta.get("crop") else "Resize [[64, 64]]"
    print(
        f"\n{meta['images']} JPEGs ({meta['folder_mb']:.0f} MB), {recipe} + flip, resnet_small, "
        f"batch {BATCH}, {rounds} rounds, samples/s of epoch {EPOCHS}; "
        f"torch {meta['torch']}, {meta['threads']} threads\n"
    )
    print(
        "| loop | samples/s (median) | best round | data_wait_fraction (epoch 2) "
        "| cache / loop (geomean of rounds) | per round |"
    )
    print("|---|---|---|---|---|---|")
    table = {}
    for loop in meta.get("loops", LOOPS):
        sps = [r[loop]["samples_per_second"] for r in results]
        waits = [
            r[loop].get("data_wait_fraction")
            for r in results
            if r[loop].get("data_wait_fraction") is not None
        ]
        ratios = [r["cache"]["samples_per_second"] / r[loop]["samples_per_second"] for r in results]
        wait = f"{statistics.median(waits):.3f} ({min(waits):.3f}-{max(waits):.3f})" if waits else "-"
        ratio = "1" if loop == "cache" else f"{geomean(ratios):.2f}x"
        per_round = "" if loop == "cache" else ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"| {LABELS[loop]} | {statistics.median(sps):.0f} | {max(sps):.0f} | "
            f"{wait} | {ratio} | {per_round} |"
        )
        table[loop] = {
            "median_samples_per_second": statistics.median(sps),
            "best": max(sps),
            "ratio_geomean": geomean(ratios),
            "ratios": ratios,
            "data_wait_fractions": waits,
        }
    print(f"\ncache note: {meta.get('cache_note')}")
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=990)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="110 images, 2 rounds")
    parser.add_argument(
        "--loaders", action="store_true", help="time trainlab's loaders alone (no model) and exit"
    )
    parser.add_argument(
        "--crop", action="store_true", help="RandomResizedCrop: 64 instead of Resize [[64, 64]]"
    )
    parser.add_argument(
        "--before", type=Path, metavar="SRC", help="also time trainlab from this checkout's src folder"
    )
    parser.add_argument("--json", type=Path, help="save the measurements here")
    parser.add_argument("--report", type=Path, help="print the tables of a saved --json file and exit")
    parser.add_argument("--verbose", action="store_true", help="show trainlab's output")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        return report(saved["results"], saved["meta"])
    n, rounds = (110, 2) if args.quick else (args.images, args.rounds)
    if rounds % 2:
        rounds += 1  # an even number: each loop equally often early and late in a round
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "images", n)
        meta = {
            "images": n,
            "folder_mb": sum(f.stat().st_size for f in root.rglob("*.jpg")) / 2**20,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "argv": sys.argv[1:],
        }
        if args.loaders:
            with silenced(not args.verbose):
                costs = loader_costs(root, args.crop)
            print(
                f"ms per sample of the training loader alone (epoch {EPOCHS}): "
                f"cache auto {costs['auto']:.3f}, "
                f"cache off {costs['off']:.3f} ({costs['off'] / costs['auto']:.0f}x)"
            )
            return costs
        loops = LOOPS[:-1] if args.crop else LOOPS
        if args.before:
            loops = (*loops, "before")
        meta.update(loops=loops, crop=args.crop)
        tensors = None if args.crop else in_memory_tensors(root)
        with silenced(not args.verbose):  # the cache's own line, from one run
            from trainlab.data import build_data

            bundle = build_data(Config.model_validate(trainlab_config(root, "auto", 0, args.crop)))
        meta["cache_note"] = "; ".join(bundle.info.get("notes", []))
        results = []
        for r in range(rounds):
            order = loops if r % 2 == 0 else loops[::-1]
            row = {}
            for loop in order:
                row[loop] = one(loop, root, r, tensors, not args.verbose, args.crop, args.before)
                print(f"round {r + 1}/{rounds} {loop}: {row[loop]}", file=sys.stderr, flush=True)
            results.append(row)
    table = report(results, meta)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=1))
    return table


if __name__ == "__main__":
    main()
