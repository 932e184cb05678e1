"""k-fold cross-validation: `data.k_fold: K` trains K models (fold i validates on part i of the
training data; the test split stays fixed), each in its own run directory, then summarises every
metric as mean ± std over the folds in `<out>/kfold_summary.json`."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainlab.claim import release_all
from trainlab.config import Config
from trainlab.logging import write_json_atomic


@dataclass
class KFoldRun:
    run_dir: Path
    runs: list[Any]
    summary: dict[str, Any]

    @property
    def status(self) -> str:
        return "completed" if all(r.status == "completed" for r in self.runs) else "failed"


def train_kfold(cfg: Config, out: str | Path | None = None, quiet: bool = False) -> KFoldRun:
    from trainlab.run import default_run_dir, train_one

    out = Path(out) if out else default_run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for fold in range(cfg.data.k_fold):
        fold_cfg = cfg.model_copy(deep=True)
        fold_cfg.data.fold = fold
        fold_cfg.name = f"{cfg.name}_fold{fold}"
        if not quiet:
            print(f"\n=== fold {fold + 1}/{cfg.data.k_fold} ===")
        try:
            runs.append(train_one(fold_cfg, out / f"fold_{fold}", resume=False, quiet=quiet, callbacks=[]))
        finally:
            release_all()  # each fold's folder is locked while it trains
    summary: dict[str, Any] = {
        "k_fold": cfg.data.k_fold,
        "folds": [str(r.run_dir) for r in runs],
        "metrics": {},
    }
    for split in ("val", "test"):
        values: dict[str, list[float]] = {}
        for r in runs:
            for name, v in (r.final.get(split) or {}).items():
                if isinstance(v, (int, float)):
                    values.setdefault(name, []).append(float(v))
        for name, vs in values.items():
            if name in ("samples_per_second", "data_wait_fraction"):
                continue
            summary["metrics"][f"{split}_{name}"] = {
                "mean": statistics.fmean(vs),
                "std": statistics.stdev(vs) if len(vs) > 1 else 0.0,
                "values": vs,
            }
    write_json_atomic(out / "kfold_summary.json", summary)
    if not quiet:
        print(f"\n{cfg.data.k_fold}-fold cross-validation ({out}):")
        for name, m in summary["metrics"].items():
            print(f"  {name:<16} {m['mean']:.4f} ± {m['std']:.4f}")
    return KFoldRun(out, runs, summary)
