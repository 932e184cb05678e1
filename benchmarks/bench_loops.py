"""Training-loop benchmark: the same data and model through five loops, in one process, interleaved.

    python benchmarks/bench_loops.py                 # 60,000 samples, 3 rounds, MLP and CNN
    python benchmarks/bench_loops.py --quick         # a smoke run (small, 1 round)
    python benchmarks/bench_loops.py --rounds 5 --json runs/bench.json

Loops, each one epoch of SGD (momentum 0.5, lr 0.01) with batch 64 on 1x28x28 inputs, 10 classes:
  a  the notes' loop: torchvision `datasets.MNIST` over IDX files (written once into benchmarks/_data),
     `ToTensor` + `Normalize` per sample, DataLoader(batch 64, shuffle), `loss.item()` per step
  b  TensorDataset + DataLoader over the decoded, normalised tensors
  c  hand-written: index the in-memory tensors with a random permutation (no DataLoader)
  c+ the best hand-written loop we know here: c with `index_select` for the gather and, for the CNN,
     the channels-last layout (what trainlab does by itself); shows where trainlab's lead over c comes from
  d  PyTorch Lightning's Trainer with its defaults (logger, progress bar), checkpointing off, over (b)'s
     loader; d+log adds `self.log("loss", loss)` every step
  e  trainlab through its public API: `trainlab.train(config)` with the `mnist` source on the same files
Samples/s: a-c+ time the epoch loop; d from its on_train_epoch_start to on_train_epoch_end; e is the
run's own training samples/s (history `train_samples_per_second`: the epoch loop, not setup, test
evaluation or the run-directory writes, which happen outside it). Ratios e/x are taken within each
round; odd rounds run the loops in the reverse order (an ABBA design), and the headline is the
geometric mean of the per-round ratios over an even number of rounds, which cancels both a change of
machine speed between rounds and an effect of a loop's place in the round (one was measured: on the
MLP, trainlab ran 0.80-0.87x c when it came last in a round and 1.19-1.27x when it came first).
The median of the per-round ratios, the best round of each loop (max samples/s) and the ratio of the
bests are printed beside it. `--report FILE` prints the tables again from a saved --json file.
MFU = samples/s x FLOPs per training sample (forward + backward, torch.utils.flop_counter) / the peak
of a 2048^3 fp32 matmul probe on this machine.

Lightning is a benchmark-only dependency (`pip install -e ".[bench]"`, which `make bench` runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import struct
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import trainlab  # noqa: E402
from trainlab.engine.perf import flops_per_sample, peak_flops  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
MEAN, STD = 0.1307, 0.3081  # the notes' MNIST normalisation
BATCH, LR, MOMENTUM = 64, 0.01, 0.5
LOOPS = ("a", "b", "c", "c+", "d", "d+log", "e")
LABELS = {
    "a": "a. notes' loop: datasets.MNIST + ToTensor/Normalize per sample + DataLoader",
    "b": "b. TensorDataset + DataLoader",
    "c": "c. hand-written: permutation + index in-memory tensors",
    "c+": "c+. hand-written, best known: c with index_select (+ channels_last for the CNN)",
    "d": "d. Lightning Trainer (defaults, progress bar on)",
    "d+log": "d. Lightning Trainer + self.log(loss) each step",
    "e": "e. trainlab.train (mnist source, in-memory fast path)",
}


# ----------------------------------------------------------------------------- data


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 (28, 28) images of 10 classes: a per-class blurred pattern plus noise
    (learnable, not MNIST)."""
    protos = torch.rand(
        10, 1, 28, 28, generator=torch.Generator().manual_seed(1234)
    )  # shared by train and test
    protos = F.avg_pool2d(protos, 5, stride=1, padding=2)[:, 0]  # (10, 28, 28) smooth class patterns
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.7 * protos[y] + 0.3 * torch.rand(n, 28, 28, generator=g)
    x = (x - x.amin()) / (x.amax() - x.amin())
    return (x * 255).round().to(torch.uint8), y.to(torch.uint8)


def write_idx(path: Path, array: torch.Tensor) -> None:
    """The IDX format torchvision's MNIST reads: magic (0, 0, dtype 0x08 = uint8, ndim), sizes, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + array.contiguous().numpy().tobytes())
    os.replace(tmp, path)


def ensure_mnist_files(n_train: int, n_test: int) -> Path:
    """MNIST-format files under benchmarks/_data/MNIST/raw (written once per size; git-ignored)."""
    raw = DATA / "MNIST" / "raw"
    stamp = raw / "synthetic.json"
    want = {"train": n_train, "test": n_test, "format": 2}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return DATA
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = synthetic_images(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    stamp.write_text(json.dumps(want))
    return DATA


def notes_dataset():
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    return datasets.MNIST(str(DATA), train=True, download=False, transform=tf)


def in_memory_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The training images decoded once: float (N, 1, 28, 28), normalised as (a) does per sample."""
    from torchvision import datasets

    ds = datasets.MNIST(str(DATA), train=True, download=False)
    x = ((ds.data.float() / 255 - MEAN) / STD).unsqueeze(1).contiguous()
    return x, ds.targets.long()


# ----------------------------------------------------------------------------- models


def make_model(name: str) -> nn.Module:
    if name == "mlp":  # trainlab's `mlp` with hidden [512, 256, 128, 64] builds the same layers
        dims = [784, 512, 256, 128, 64]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(64, 10))
    return NotesCNN()


class NotesCNN(nn.Module):
    """The notes' CNN (trainlab's `lenet`): relu(pool(conv k5 1->10)),
    relu(pool(conv k5 10->20)), fc 320->10."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 10, 5), nn.Conv2d(10, 20, 5)
        self.fc = nn.Linear(320, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # (B, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2(x), 2))  # (B, 20, 4, 4)
        return self.fc(x.flatten(1))


TRAINLAB_MODEL = {"mlp": {"name": "mlp", "hidden": [512, 256, 128, 64]}, "cnn": {"name": "lenet"}}


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


# ----------------------------------------------------------------------------- the loops (samples/s)


def run_notes(model_name: str, n: int, seed: int) -> float:
    torch.manual_seed(seed)
    model, ds = make_model(model_name), notes_dataset()
    if n < len(ds):
        ds = torch.utils.data.Subset(ds, range(n))
    opt, loss_fn = sgd(model), nn.CrossEntropyLoss()
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True)
    model.train()
    running = 0.0
    t = time.perf_counter()
    for inputs, target in loader:
        opt.zero_grad()
        loss = loss_fn(model(inputs), target)
        loss.backward()
        opt.step()
        running += loss.item()  # the notes' running loss: one host read per step
    return len(ds) / (time.perf_counter() - t)


def _plain_steps(model: nn.Module, batches, opt: torch.optim.Optimizer, channels_last: bool = False) -> None:
    for xb, yb in batches:
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


def run_tensor_dataloader(model_name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    model = make_model(model_name)
    opt = sgd(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    model.train()
    t = time.perf_counter()
    _plain_steps(model, loader, opt)
    return len(x) / (time.perf_counter() - t)


def run_hand_written(model_name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    model = make_model(model_name)
    opt = sgd(model)
    model.train()
    t = time.perf_counter()
    perm = torch.randperm(len(x))
    batches = ((x[idx], y[idx]) for idx in perm.split(BATCH))
    _plain_steps(model, batches, opt)
    return len(x) / (time.perf_counter() - t)


def run_hand_written_best(model_name: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    model = make_model(model_name)
    channels_last = model_name == "cnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = sgd(model)
    model.train()
    t = time.perf_counter()
    perm = torch.randperm(len(x))
    batches = ((torch.index_select(x, 0, idx), torch.index_select(y, 0, idx)) for idx in perm.split(BATCH))
    _plain_steps(model, batches, opt, channels_last)
    return len(x) / (time.perf_counter() - t)


def run_lightning(model_name: str, x: torch.Tensor, y: torch.Tensor, seed: int, log_loss: bool) -> float:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model(model_name)

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = F.cross_entropy(self.model(xb), yb)
            if log_loss:
                self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return sgd(self.model)

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.t

    torch.manual_seed(seed)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            enable_checkpointing=False,
            default_root_dir=tmp,
            callbacks=[timer],
        )  # logger, progress bar: defaults
        trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True))
    return len(x) / timer.seconds


def trainlab_config(model_name: str, seed: int) -> dict:
    return {
        "name": f"bench_{model_name}",
        "seed": seed,
        "data": {
            "source": "mnist",
            "root": str(DATA),
            "batch_size": BATCH,
            "val_fraction": 0.0,
            "transforms": ["ToTensor", {"Normalize": {"mean": [MEAN], "std": [STD]}}],
        },
        "model": TRAINLAB_MODEL[model_name],
        "optimizer": {"name": "SGD", "lr": LR, "momentum": MOMENTUM},
        "train": {"epochs": 1, "device": "cpu"},
    }


def run_trainlab(model_name: str, seed: int, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run = trainlab.train(trainlab_config(model_name, seed), out=Path(tmp) / "run")
    row = run.history_rows[-1]
    assert row["train_samples_per_second"] > 0 and run.summary.get("samples_per_second"), row
    return row["train_samples_per_second"]


# ----------------------------------------------------------------------------- driver


@contextlib.contextmanager
def silenced(enabled: bool):
    """Progress bars and logs still run (and are formatted), into a buffer instead of the terminal."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    # Lightning's info lines go through logging handlers made at import (not through sys.stdout).
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def one(loop: str, model_name: str, n: int, seed: int, tensors, quiet: bool) -> float:
    x, y = tensors
    with silenced(quiet):
        if loop == "a":
            return run_notes(model_name, n, seed)
        if loop == "b":
            return run_tensor_dataloader(model_name, x, y, seed)
        if loop == "c":
            return run_hand_written(model_name, x, y, seed)
        if loop == "c+":
            return run_hand_written_best(model_name, x, y, seed)
        if loop in ("d", "d+log"):
            return run_lightning(model_name, x, y, seed, log_loss=loop == "d+log")
        return run_trainlab(model_name, seed, n)


def model_flops(model_name: str, x: torch.Tensor, y: torch.Tensor) -> float:
    return flops_per_sample(make_model(model_name), nn.CrossEntropyLoss(), x[:BATCH], y[:BATCH])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds of every loop, even (default 6)")
    p.add_argument("--samples", type=int, default=60_000, help="training samples (default 60,000)")
    p.add_argument(
        "--test-samples", type=int, default=1_000, help="test-file samples (trainlab evaluates them)"
    )
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated subset of {','.join(LOOPS)}")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2,048 samples, 1 round")
    p.add_argument("--json", type=Path, help="also write the per-round numbers here")
    p.add_argument("--verbose", action="store_true", help="show the loops' own progress bars and logs")
    p.add_argument("--report", type=Path, help="print the tables from a saved --json file and exit")
    args = p.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        results = saved["samples_per_second"]
        models = list(results)
        table = report(
            results, saved["flops_per_sample"], saved["peak_flops"], list(results[models[0]]), models
        )
        return {**saved, "table": table}
    if args.rounds > 1 and args.rounds % 2:
        p.error("--rounds must be even (as many rounds in each order)")
    if args.quick:
        args.samples, args.rounds, args.test_samples = 2048, 1, 256
    models = [m for m in args.models.split(",") if m]
    loops = [lp for lp in args.loops.split(",") if lp]
    unknown = [m for m in models if m not in TRAINLAB_MODEL] + [lp for lp in loops if lp not in LOOPS]
    if unknown:
        p.error(f"unknown model/loop: {', '.join(unknown)}")
    try:
        import lightning  # noqa: F401
    except ImportError:
        if any(lp.startswith("d") for lp in loops):
            print("lightning is not installed (pip install -e '.[bench]'); skipping loop d", file=sys.stderr)
            loops = [lp for lp in loops if not lp.startswith("d")]

    ensure_mnist_files(args.samples, args.test_samples)
    tensors = in_memory_tensors()
    peak_flops(torch.device("cpu"), n=512)  # warm-up of the probe (threads, allocator)
    peak = peak_flops(torch.device("cpu"), n=2048, repeats=10)
    flops = {m: model_flops(m, *tensors) for m in models}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.samples:,} samples, "
        f"batch {BATCH}, {args.rounds} round(s); "
        f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"peak fp32 matmul probe {peak / 1e9:.1f} GFLOP/s; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    for m in models:  # warm-up: one-off costs (allocator, oneDNN primitives, imports) stay out of round 1
        for lp in loops:
            one(lp, m, min(args.samples, 1024), 0, (tensors[0][:1024], tensors[1][:1024]), not args.verbose)
    results: dict[str, dict[str, list[float]]] = {m: {lp: [] for lp in loops} for m in models}
    for r in range(args.rounds):
        for m in models:
            for lp in loops if r % 2 == 0 else loops[::-1]:
                sps = one(lp, m, args.samples, r, tensors, not args.verbose)
                results[m][lp].append(sps)
            print(
                f"round {r + 1} {m}: "
                + ", ".join(f"{lp} {results[m][lp][-1]:,.0f}" for lp in loops)
                + f"  (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )

    table = report(results, flops, peak, loops, models)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "samples": args.samples,
        "rounds": args.rounds,
        "peak_flops": peak,
        "flops_per_sample": flops,
        "samples_per_second": results,
        "table": table,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


# The targets: trainlab (e) over the row, per model.
TARGETS = {
    ("c", "mlp"): 0.95,
    ("c", "cnn"): 0.95,
    ("a", "mlp"): 3.0,
    ("a", "cnn"): 2.0,
    ("d", "mlp"): 1.4,
    ("d", "cnn"): 1.0,
}


def report(results, flops, peak, loops, models) -> dict:
    """Per loop: median and best samples/s over rounds, the median of per-round ratios e/x and the ratio
    of the bests, MFU (of the median); printed as a Markdown table, then the targets met or not."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for m in models:
        table[m] = {}
        e_runs = results[m].get("e", [])
        for lp in loops:
            runs = results[m][lp]
            ratios = [e / v for e, v in zip(e_runs, runs)]
            med, best = statistics.median(runs), max(runs)
            table[m][lp] = {
                "samples_per_second": med,
                "best_samples_per_second": best,
                "trainlab_ratio": statistics.geometric_mean(ratios) if ratios else None,
                "trainlab_median_ratio": statistics.median(ratios) if ratios else None,
                "trainlab_best_ratio": max(e_runs) / best if e_runs else None,
                "mfu": med * flops[m] / peak if flops[m] else None,
            }
    for m in models:
        print(
            f"\n{m.upper()} (FLOPs per training sample {flops[m] / 1e6:.2f} M)\n"
            "| loop | samples/s (median) | e / this (geometric mean of rounds) | e / this (median of rounds) "
            "| samples/s (best) | e / this (bests) | MFU |\n|---|---|---|---|---|---|---|"
        )
        for lp in loops:
            t = table[m][lp]
            ratio = f"{t['trainlab_ratio']:.2f}x" if t["trainlab_ratio"] is not None else "-"
            median_ratio = (
                f"{t['trainlab_median_ratio']:.2f}x" if t["trainlab_median_ratio"] is not None else "-"
            )
            best_ratio = f"{t['trainlab_best_ratio']:.2f}x" if t["trainlab_best_ratio"] is not None else "-"
            print(
                f"| {LABELS[lp]} | {t['samples_per_second']:,.0f} | {ratio} | {median_ratio} | "
                f"{t['best_samples_per_second']:,.0f} | "
                f"{best_ratio} | " + (f"{100 * t['mfu']:.1f}%" if t["mfu"] else "-") + " |"
            )
    print("\nratios: trainlab's samples/s over the row's; 'of rounds' pairs the two loops within each round")
    checks = [
        (lp, m, want)
        for (lp, m), want in TARGETS.items()
        if m in table and lp in table[m] and "e" in table[m]
    ]
    if checks:
        print("\ntargets (e / row: geometric mean of rounds, the headline | median of rounds | bests):")
        for lp, m, want in checks:
            t = table[m][lp]
            got, others = t["trainlab_ratio"], (t["trainlab_median_ratio"], t["trainlab_best_ratio"])
            verdict = ("met" if got >= want else "NOT met") + (
                "" if all(o >= want for o in others) == (got >= want) else " (not by every statistic)"
            )
            print(f"  {m} e/{lp} >= {want:.2f}x: {got:.2f}x | {others[0]:.2f}x | {others[1]:.2f}x  {verdict}")
    return table


if __name__ == "__main__":
    main()
