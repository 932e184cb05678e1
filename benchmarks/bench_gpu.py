"""GPU speed table: trainlab against a hand-written CUDA loop and Lightning's Trainer, in one process.

    python benchmarks/bench_gpu.py                        # on CUDA: MLP, CNN, ResNet-18; 2 rounds
    python benchmarks/bench_gpu.py --device cpu --quick   # a smoke run of the same code on the CPU
    python benchmarks/bench_gpu.py --json $OUT/bench_gpu.json

Models and data (synthetic, written once in the real on-disk formats under benchmarks/_data):
  mlp     the notes' MNIST MLP 784-512-256-128-64-10, batch 64, MNIST IDX files (60,000 images)
  cnn     the notes' MNIST CNN (trainlab's `lenet`), batch 64, the same files
  resnet  torchvision's ResNet-18 (10 classes) on CIFAR-10-shaped 3x32x32 images, batch 128, CIFAR-10
          python batches (50,000 images; torchvision's md5 check is skipped for these synthetic files)
Loops, each 2 epochs of SGD (lr 0.01, momentum 0.9); samples/s is the second epoch's (the first pays
for one-off costs: cuDNN autotuning, torch.compile, allocator growth):
  hand       hand-written: the normalised split on the device, a randperm per epoch, index_select
             batches, bf16 autocast on CUDA (fp32 on the CPU), no host sync per step
  lightning  Lightning's Trainer (defaults: logger, progress bar), precision bf16-mixed on CUDA, over a
             DataLoader of a TensorDataset (pin_memory on CUDA); checkpointing off
  trainlab   trainlab.train(config) with its defaults (device, precision and compile auto) on the files
Rounds alternate the order of the loops (ABBA); the ratios are geometric means of per-round ratios.
MFU = samples/s x FLOPs per training sample (torch.utils.flop_counter) / the measured matmul peak of
the precision the loops train in (bf16 on CUDA, fp32 on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trainlab  # noqa: E402
from bench_loops import DATA, MEAN, STD, ensure_mnist_files, make_model, silenced  # noqa: E402
from trainlab.engine.perf import flops_per_sample, peak_flops  # noqa: E402

LR, MOMENTUM, EPOCHS = 0.01, 0.9, 2
BATCH = {"mlp": 64, "cnn": 64, "resnet": 128}
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
LOOPS = ("hand", "lightning", "trainlab")
TARGETS = {("hand", "mlp"): 0.9, ("hand", "cnn"): 0.9, ("lightning", "mlp"): 1.5, ("lightning", "cnn"): 1.5}


# ----------------------------------------------------------------------------- data in the real formats


def ensure_cifar_files(n_train: int, n_test: int) -> Path:
    """CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta) of synthetic class patterns."""
    folder = DATA / "cifar-10-batches-py"
    stamp = folder / "synthetic.json"
    want = {"train": n_train, "test": n_test, "format": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return DATA
    folder.mkdir(parents=True, exist_ok=True)
    protos = np.random.default_rng(1234).integers(0, 256, (10, 3 * 32 * 32))
    rng = np.random.default_rng(0)
    per = -(-n_train // 5)
    sizes = [(f"data_batch_{i + 1}", min(per, n_train - i * per)) for i in range(5)] + [
        ("test_batch", n_test)
    ]
    for name, n in sizes:
        labels = rng.integers(0, 10, n)
        data = (0.6 * protos[labels] + 0.4 * rng.integers(0, 256, (n, 3 * 32 * 32))).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
            },
            f,
        )
    stamp.write_text(json.dumps(want))
    return DATA


def skip_cifar_md5() -> None:
    """torchvision checks the real files' md5; these are synthetic files in the same format."""
    import torchvision.datasets as tvd

    tvd.cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)


def tensors(model_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split decoded once and normalised (what trainlab's fast path precomputes)."""
    import torchvision.datasets as tvd

    if model_name == "resnet":
        ds = tvd.CIFAR10(str(DATA), train=True, download=False)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return x.contiguous(), torch.tensor(ds.targets)
    ds = tvd.MNIST(str(DATA), train=True, download=False)
    return ((ds.data.float() / 255 - MEAN) / STD).unsqueeze(1).contiguous(), ds.targets.long()


def build(model_name: str) -> nn.Module:
    if model_name == "resnet":
        import torchvision

        return torchvision.models.resnet18(num_classes=10)
    return make_model(model_name)


def trainlab_config(model_name: str, device: str, seed: int) -> dict:
    if model_name == "resnet":
        data = {
            "source": "cifar10",
            "transforms": ["ToTensor", {"Normalize": {"mean": CIFAR_MEAN, "std": CIFAR_STD}}],
        }
        model = {"name": "torchvision:resnet18"}
    else:
        data = {"source": "mnist", "transforms": ["ToTensor", {"Normalize": {"mean": [MEAN], "std": [STD]}}]}
        model = {"name": "mlp", "hidden": [512, 256, 128, 64]} if model_name == "mlp" else {"name": "lenet"}
    return {
        "name": f"bench_gpu_{model_name}",
        "seed": seed,
        "data": {**data, "root": str(DATA), "batch_size": BATCH[model_name], "val_fraction": 0.0},
        "model": model,
        "optimizer": {"name": "SGD", "lr": LR, "momentum": MOMENTUM},
        "train": {"epochs": EPOCHS, "device": device},
    }


# ----------------------------------------------------------------------------- the loops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # note: host sync, only at epoch boundaries for timing


def run_hand(model_name: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, seed: int) -> float:
    torch.manual_seed(seed)
    model = build(model_name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = x.to(device), y.to(device)  # the whole split on the device
    dtype = torch.bfloat16 if device.type == "cuda" else None
    batch, seconds = BATCH[model_name], 0.0
    model.train()
    for _ in range(EPOCHS):
        sync(device)
        t = time.perf_counter()
        for idx in torch.randperm(len(x), device=device).split(batch):
            xb, yb = torch.index_select(x, 0, idx), torch.index_select(y, 0, idx)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        seconds = time.perf_counter() - t
    return len(x) / seconds


def run_lightning(
    model_name: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, seed: int
) -> float:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build(model_name)

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            sync(device)
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            sync(device)
            self.seconds = time.perf_counter() - self.t  # the last epoch's

    torch.manual_seed(seed)
    timer = EpochTimer()
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_epochs=EPOCHS,
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            precision="bf16-mixed" if cuda else "32-true",
            enable_checkpointing=False,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=BATCH[model_name], shuffle=True, pin_memory=cuda)
        trainer.fit(Module(), loader)
    return len(x) / timer.seconds


def run_trainlab(model_name: str, device: torch.device, seed: int, n: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run = trainlab.train(trainlab_config(model_name, device.type, seed), out=Path(tmp) / "run")
    row = run.history_rows[-1]
    assert row["epoch"] == EPOCHS and row["train_samples_per_second"] > 0, row
    info = {k: run.summary.get(k) for k in ("precision", "peak_flops_precision", "mfu", "channels_last")}
    return row["train_samples_per_second"], info


# ----------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--models", default="mlp,cnn,resnet")
    p.add_argument("--loops", default=",".join(LOOPS))
    p.add_argument("--rounds", type=int, default=2, help="rounds of every loop, alternating their order")
    p.add_argument("--mnist-samples", type=int, default=60_000)
    p.add_argument("--cifar-samples", type=int, default=50_000)
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: 2,048 MNIST / 1,024 CIFAR samples, 1 round"
    )
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--verbose", action="store_true", help="show the loops' own progress bars and logs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu for a smoke run)")
    if args.quick:
        args.mnist_samples, args.cifar_samples, args.rounds = 2048, 1024, 1
    models = [m for m in args.models.split(",") if m]
    loops = [lp for lp in args.loops.split(",") if lp]
    try:
        import lightning  # noqa: F401
    except ImportError:
        if "lightning" in loops:
            print("lightning is not installed here: skipping its loop", file=sys.stderr)
            loops.remove("lightning")
    ensure_mnist_files(args.mnist_samples, 1000 if not args.quick else 256)
    ensure_cifar_files(args.cifar_samples, 1000 if not args.quick else 256)
    skip_cifar_md5()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    label = "bf16" if device.type == "cuda" else "fp32"
    peak_flops(device, dtype, n=512)  # warm-up of the probe
    peak = peak_flops(device, dtype)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{datetime.date.today()} {name}; torch {torch.__version__}; measured {label} matmul peak "
        f"{peak / 1e12:.2f} TFLOP/s; {EPOCHS} epochs per loop, samples/s of the last",
        flush=True,
    )
    data = {m: tensors(m) for m in models}
    flops = {
        m: flops_per_sample(build(m), nn.CrossEntropyLoss(), data[m][0][:8], data[m][1][:8]) for m in models
    }
    results: dict[str, dict[str, list[float]]] = {m: {lp: [] for lp in loops} for m in models}
    trainlab_info: dict[str, dict] = {}
    for r in range(args.rounds):
        for m in models:
            x, y = data[m]
            for lp in loops if r % 2 == 0 else loops[::-1]:
                with silenced(not args.verbose):
                    if lp == "hand":
                        sps = run_hand(m, x, y, device, r)
                    elif lp == "lightning":
                        sps = run_lightning(m, x, y, device, r)
                    else:
                        sps, trainlab_info[m] = run_trainlab(m, device, r, len(x))
                results[m][lp].append(sps)
            print(
                f"round {r + 1} {m}: " + ", ".join(f"{lp} {results[m][lp][-1]:,.0f}" for lp in loops),
                flush=True,
            )
            if args.json:  # partial numbers, in case a time limit stops the run before the table
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(
                    json.dumps({"partial": True, "device": name, "samples_per_second": results})
                )
    table = report(results, flops, peak, label, loops, models, trainlab_info)
    out = {
        "date": str(datetime.date.today()),
        "device": name,
        "torch": torch.__version__,
        "peak_flops": peak,
        "peak_precision": label,
        "flops_per_sample": flops,
        "samples_per_second": results,
        "table": table,
        "trainlab": trainlab_info,
        "rounds": args.rounds,
        "quick": args.quick,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


def report(results, flops, peak, label, loops, models, trainlab_info) -> dict:
    table: dict[str, dict[str, dict]] = {}
    print(
        f"\n| model | loop | samples/s (median) | trainlab / this | MFU ({label} peak) |\n"
        "|---|---|---|---|---|"
    )
    for m in models:
        table[m] = {}
        mine = results[m].get("trainlab", [])
        for lp in loops:
            runs = results[m][lp]
            ratios = [a / b for a, b in zip(mine, runs)]
            med = statistics.median(runs)
            t = table[m][lp] = {
                "samples_per_second": med,
                "trainlab_ratio": statistics.geometric_mean(ratios) if ratios else None,
                "mfu": med * flops[m] / peak if flops[m] else None,
            }
            ratio = f"{t['trainlab_ratio']:.2f}x" if t["trainlab_ratio"] is not None else "-"
            mfu = f"{100 * t['mfu']:.2f}%" if t["mfu"] is not None else "-"
            print(f"| {m} | {lp} | {med:,.0f} | {ratio} | {mfu} |")
    for m, info in trainlab_info.items():  # what trainlab's own summary.json says
        if info.get("mfu"):
            print(
                f"trainlab {m}: precision {info.get('precision') or '?'}, "
                f"its summary's MFU {100 * info['mfu']:.2f}% of the "
                f"{info.get('peak_flops_precision') or '?'} peak it measured"
            )
    for (lp, m), want in TARGETS.items():
        if m in table and lp in table[m] and table[m][lp]["trainlab_ratio"] is not None:
            got = table[m][lp]["trainlab_ratio"]
            print(f"target trainlab >= {want}x {lp} on {m}: {got:.2f}x {'met' if got >= want else 'NOT met'}")
    return table


if __name__ == "__main__":
    main()
