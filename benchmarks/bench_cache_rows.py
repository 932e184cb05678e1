"""Memory of a disk-cached image folder cut into splits: peak RSS of building the data and one epoch of the
training loader, each cache mode in a fresh process.

    python benchmarks/bench_cache_rows.py                   # 2,000 PNGs of 64x64, 3 rounds
    python benchmarks/bench_cache_rows.py --images 4000 --size 128 --rounds 2

The folder (random pixels, 10 classes) is cut by `data.val_fraction: 0.25` and `data.test_fraction: 0.25`
and trained with `Resize: [[S, S]]` + `RandomHorizontalFlip` + `ToTensor`, batch 64. A first process
writes the disk cache (not measured); then each round runs `disk` and `memory` in a fresh process each
(alternating which goes first): `build_data`, `make_loader` for the training split, two epochs. Printed
per mode, the median over the rounds: VmHWM (the peak resident memory; it counts the pages of the mapped
cache file that were read, which the kernel can drop) and its rise over the process after its imports;
RssAnon at the end (memory the process owns: copies of rows, precomputed inputs); milliseconds per
sample of the loader's second epoch alone (no model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


def status_kb(*keys: str) -> dict[str, int]:
    lines = Path("/proc/self/status").read_text().splitlines()
    found = {line.split(":")[0]: int(line.split()[1]) for line in lines if line.split(":")[0] in keys}
    return {k: found[k] for k in keys}


def child(root: Path, cache_dir: Path, cache: str, size: int) -> dict:
    import trainlab
    from trainlab.data import build_data, image_cache, splits  # noqa: F401 (imported before the baseline RSS)
    from trainlab.data.loaders import make_loader

    cfg = trainlab.load_config(
        None,
        {
            "data.source": "image_folder",
            "data.root": str(root),
            "data.cache": cache,
            "data.cache_dir": str(cache_dir),
            "data.val_fraction": 0.25,
            "data.test_fraction": 0.25,
            "data.transforms": [{"Resize": [[size, size]]}, "RandomHorizontalFlip", "ToTensor"],
        },
    )
    before = status_kb("VmRSS")["VmRSS"]  # trainlab, torch and friends imported
    bundle = build_data(cfg)
    loader = make_loader(bundle.train, 64, shuffle=True, seed=0)
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for _, y in loader:
            n += len(y)
        seconds = time.perf_counter() - start
    kb = status_kb("VmHWM", "RssAnon")
    return {
        "peak_mb": kb["VmHWM"] / 1024,
        "peak_gain_mb": (kb["VmHWM"] - before) / 1024,
        "anon_mb": kb["RssAnon"] / 1024,
        "ms_per_sample": 1000 * seconds / n,
    }


def run_child(root: Path, cache_dir: Path, cache: str, size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", cache, "--root", str(root), "--cache-dir", str(cache_dir),
         "--size", str(size)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("disk", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.root, args.cache_dir, args.child, args.size)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = make_folder(Path(tmp) / "images", args.images, args.size), Path(tmp) / "cache"
        run_child(root, cache_dir, "disk", args.size)  # writes the cache: later runs read it
        results: dict[str, list[dict]] = {"disk": [], "memory": []}
        for r in range(args.rounds):
            for cache in ("disk", "memory") if r % 2 == 0 else ("memory", "disk"):
                results[cache].append(run_child(root, cache_dir, cache, args.size))
    rows_mb = args.images * 3 * args.size * args.size / 2**20
    print(f"{args.images} images of {args.size}x{args.size} ({rows_mb:.1f} MB of rows), val 0.25, test 0.25")
    for cache, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"cache {cache:6}: peak RSS {med['peak_mb']:.0f} MB ({med['peak_gain_mb']:+.0f} MB over the "
            f"imports), RssAnon at the end {med['anon_mb']:.0f} MB, "
            f"loader {med['ms_per_sample']:.4f} ms/sample (median of {len(runs)})"
        )


if __name__ == "__main__":
    main()
