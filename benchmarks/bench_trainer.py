"""The Python API's speed: `trainlab.Trainer.from_datasets` on a `TensorDataset` against a plain loop
over the same tensors (shuffled index batches, the same model, optimizer and batch size).

    .venv/bin/python benchmarks/bench_trainer.py [--rounds 6] [--samples 20000]

Rounds alternate the order (ABBA); each figure is one epoch's wall time after a warm-up epoch; the
headline is the geometric mean over rounds of trainer time / plain time (target: at most 1.2).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def plain_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for idx in order.split(batch_size):
        xb, yb = torch.index_select(x, 0, idx), torch.index_select(y, 0, idx)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        optimizer.step()
    return time.perf_counter() - start


def trainer_epoch(model: nn.Module, data: TensorDataset, batch_size: int, seed: int) -> float:
    import trainlab

    trainer = trainlab.Trainer.from_datasets(
        model,
        data,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5),
        batch_size=batch_size,
        seed=seed,
        epochs=1,
        device="cpu",
        quiet=True,
        channels_last=False,
    )
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.samples, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.samples,), generator=g)
    data = TensorDataset(x, y)
    trainer_epoch(make_model(), data, args.batch_size, 0)  # warm-up (imports, first allocations)
    plain_epoch(make_model(), x, y, args.batch_size, 0)
    ratios, plain, ours = [], [], []
    for r in range(args.rounds):
        order = ("plain", "trainer") if r % 2 == 0 else ("trainer", "plain")
        times = {}
        for name in order:
            torch.manual_seed(r)
            model = make_model()
            times[name] = (
                plain_epoch(model, x, y, args.batch_size, r)
                if name == "plain"
                else trainer_epoch(model, data, args.batch_size, r)
            )
        plain.append(times["plain"])
        ours.append(times["trainer"])
        ratios.append(times["trainer"] / times["plain"])
        print(
            f"round {r + 1}: plain {times['plain']:.3f} s, Trainer.from_datasets {times['trainer']:.3f} s, "
            f"ratio {ratios[-1]:.2f}",
            flush=True,
        )
    geo = math.exp(statistics.fmean(math.log(v) for v in ratios))
    print(
        f"\n{args.samples} samples of 1x28x28, MLP 784-256-10, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"epoch seconds, median: plain {statistics.median(plain):.3f}, Trainer {statistics.median(ours):.3f}"
    )
    print(
        f"Trainer / plain: geometric mean {geo:.2f}, median {statistics.median(ratios):.2f} (target <= 1.2)"
    )


if __name__ == "__main__":
    main()
