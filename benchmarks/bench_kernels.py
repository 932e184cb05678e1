"""The measurements behind three of trainlab's speed choices (BENCHMARKS.md, "Where the speed comes from").

    python benchmarks/bench_kernels.py layout    # contiguous vs channels-last training step,
                                                 # each zoo conv net
    python benchmarks/bench_kernels.py gather    # x[idx] vs torch.index_select for a batch of 64 MNIST rows
    python benchmarks/bench_kernels.py omp       # the MLP step under each OMP_WAIT_POLICY, idle and
                                                 # beside a busy process

Each prints medians over interleaved repeats; `omp` runs one child process per setting (the policy is
read when torch loads its OpenMP runtime, so it cannot change within a process).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

BATCH = 64


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, channels_last: bool) -> float:
    """ms per SGD step (batch x, momentum 0.5) after 3 warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for i in range(3 + steps):
        if i == 3:
            t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t) / steps * 1e3


def layout(repeats: int) -> None:
    from trainlab.models import zoo

    cases = {  # name: (model, sample shape, steps per repeat)
        "lenet 1x28x28": (zoo.LeNet((1, 28, 28), 10), (1, 28, 28), 30),
        "small_cnn 1x8x8": (zoo.SmallCNN((1, 8, 8), 10), (1, 8, 8), 30),
        "notes' CIFAR Sequential 3x28x28": (
            nn.Sequential(
                nn.Conv2d(3, 20, 5),
                nn.MaxPool2d(2),
                nn.Conv2d(20, 50, 5),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(800, 500),
                nn.Linear(500, 10),
            ),
            (3, 28, 28),
            30,
        ),
        "resnet_small 1x28x28": (zoo.ResNetSmall((1, 28, 28), 10), (1, 28, 28), 5),
        "inception 1x28x28": (zoo.InceptionNet((1, 28, 28), 10), (1, 28, 28), 5),
        "cnn_classifier 3x64x64": (zoo.CNNClassifier((3, 64, 64), 11), (3, 64, 64), 5),
    }
    print(
        f"training step, batch {BATCH}, SGD; median of {repeats} interleaved repeats; "
        f"{torch.get_num_threads()} threads"
    )
    for name, (model, shape, steps) in cases.items():
        x, y = torch.randn(BATCH, *shape), torch.randint(0, 10, (BATCH,))
        plain, nhwc = [], []
        for _ in range(repeats):
            plain.append(train_steps(copy.deepcopy(model), x, y, steps, False))
            nhwc.append(train_steps(copy.deepcopy(model), x, y, steps, True))
        a, b = statistics.median(plain), statistics.median(nhwc)
        print(f"  {name}: contiguous {a:.2f} ms, channels_last {b:.2f} ms, speed-up {a / b:.2f}x", flush=True)


def gather(repeats: int) -> None:
    x, y = torch.randn(60_000, 1, 28, 28), torch.randint(0, 10, (60_000,))
    for threads in (torch.get_num_threads(), 1):
        torch.set_num_threads(threads)
        index, select = [], []
        for _ in range(repeats):
            perm = torch.randperm(len(x)).split(BATCH)
            t = time.perf_counter()
            for i in perm:
                x[i], y[i]
            index.append((time.perf_counter() - t) / len(perm) * 1e6)
            t = time.perf_counter()
            for i in perm:
                torch.index_select(x, 0, i), torch.index_select(y, 0, i)
            select.append((time.perf_counter() - t) / len(perm) * 1e6)
        print(
            f"{threads} thread(s), a batch of {BATCH} random rows (inputs and targets): x[idx] "
            f"{statistics.median(index):.1f} us, index_select {statistics.median(select):.1f} us",
            flush=True,
        )


def omp_child(repeats: int) -> None:
    """Samples/s of the hand-written MLP loop (bench_loops' loop c) on 12,800 samples, `repeats` times."""
    from bench_loops import run_hand_written  # the same loop and model as the loop benchmark

    n = 12_800
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    print(", ".join(f"{run_hand_written('mlp', x, y, r):,.0f}" for r in range(repeats)))


def omp(repeats: int) -> None:
    settings = [
        ("default policy, 2 threads", {}),
        ("PASSIVE, 2 threads", {"OMP_WAIT_POLICY": "PASSIVE"}),
        ("default policy, 1 thread", {"OMP_NUM_THREADS": "1"}),
    ]
    for busy in (False, True):
        other = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            print("beside one busy process:" if busy else "idle machine:", flush=True)
            for label, env in settings:
                env = {
                    k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")
                } | env
                out = subprocess.run(
                    [sys.executable, __file__, "omp-child", "--repeats", str(repeats)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                print(f"  {label}: MLP samples/s {out}", flush=True)
        finally:
            if other is not None:
                other.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["layout", "gather", "omp", "omp-child"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    {"layout": layout, "gather": gather, "omp": omp, "omp-child": omp_child}[args.what](args.repeats)


if __name__ == "__main__":
    main()
