"""`trainlab doctor RUN_DIR` and `trainlab lr-find CONFIG`: the diagnosis pieces applied to a run.

doctor loads the run (config, data, best weights), walks the loss flowchart on its metrics, finds
what kind of point the best weights sit at, reads the gradient health from layer_stats.jsonl (or
takes one snapshot), trains a shallower model (--compare-shallow, or unasked when the training loss
is large and the run was cheap) and optionally times batch sizes (--batch-sizes), then writes
everything into summary.json["diagnosis"] and re-renders report.html.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from trainlab.diagnose.batch_sweep import batch_size_sweep, largest_free_batch, plot_batch_sweep
from trainlab.diagnose.flowchart import baseline_loss, verdict
from trainlab.diagnose.gradients import gradient_health, gradient_snapshot, read_layer_stats
from trainlab.diagnose.hessian import critical_point
from trainlab.diagnose.lr_finder import lr_range_test, plot_lr_find
from trainlab.errors import ConfigError, TrainlabError

CRITICAL_BATCH = 256  # samples in the fixed batch of the Hessian analysis and gradient snapshot
SHALLOW_AUTO_SECONDS = 60.0  # doctor trains a shallower model unasked when the run trained at most this long


def _first_batch(dataset: Any, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from trainlab.data.loaders import make_loader

    x, y = next(iter(make_loader(dataset, min(n, len(dataset)), shuffle=False)))
    return x.to(device), y.to(device)


def _loss_on(loaded: Any, dataset: Any) -> float:
    from trainlab.data.loaders import make_loader
    from trainlab.engine.loop import evaluate

    loader = make_loader(
        dataset, loaded.config.data.eval_batch_size or 256, shuffle=False, device=loaded.device
    )
    return evaluate(loaded.model, loader, loaded.loss_fn, None, loaded.device)[0]["loss"]


def _targets(dataset: Any) -> torch.Tensor:
    from trainlab.data.splits import targets_of

    return torch.as_tensor(targets_of(dataset))


def _holdout(loaded: Any) -> dict[str, Any] | None:
    """A held-out loss from the training distribution, when the run has one.

    A validation split cut at random from the training data is itself such a set. A source whose
    own validation set differs (say, another range) can name a split drawn like its training data
    with `SourceData(info={"holdout_split": "test"})`. Otherwise None: the verdict then says
    overfitting_or_mismatch unless the curves make it clear.
    """
    info, b, d = loaded.bundle.info, loaded.bundle, loaded.config.data
    named = info.get("holdout_split")
    if named in ("val", "test") and getattr(b, named) is not None and len(getattr(b, named)):
        return {
            "loss": _loss_on(loaded, getattr(b, named)),
            "source": f"{named} split (declared by the data source)",
        }
    # `val_from` when the splitter records it; else: splits.split_source only cuts anything (and
    # records "stratified") when the source has no validation set of its own
    val_from = info.get("val_from") or (
        "k_fold" if d.k_fold else "val_fraction" if "stratified" in info and d.val_fraction > 0 else None
    )
    if val_from in ("val_fraction", "k_fold") and b.val is not None and len(b.val):
        return {
            "loss": _loss_on(loaded, b.val),
            "source": "validation split (random, from the training data)",
        }
    return None


def shallower_model(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The model config of a shallower variant: `mlp` keeps its first hidden layer (one hidden
    layer becomes `linear`); `sequential` keeps everything up to the second Linear, then one Linear
    to the output. Anything else is a ConfigError (no depth knob known)."""
    cfg = copy.deepcopy(model_cfg)
    name = cfg.get("name")
    if name == "mlp":
        hidden = list(cfg.get("hidden", (64, 32)))
        if len(hidden) > 1:
            cfg["hidden"] = hidden[:1]
            return cfg
        return {"name": "linear"}
    if name == "sequential":
        layers = cfg.get("layers") or []
        linear = [i for i, item in enumerate(layers) if isinstance(item, dict) and "Linear" in item]
        if len(linear) >= 3 and all(isinstance(layers[i]["Linear"], list) for i in (linear[0], linear[-1])):
            first, last = layers[linear[0]]["Linear"], layers[linear[-1]]["Linear"]
            cfg["layers"] = [
                *layers[: linear[1]],
                {"Linear": [first[1], last[1], *last[2:]]},
                *layers[linear[-1] + 1 :],
            ]
            return cfg
    raise ConfigError(
        f"--compare-shallow: no shallower variant is known for model.name {name!r} (it works for `mlp` "
        "with 2+ hidden layers and `sequential` with 3+ `Linear: [in, out]` layers); train a shallower "
        "model on the same data yourself and compare its final training loss."
    )


def _compare_shallow(loaded: Any) -> dict[str, Any]:
    from trainlab.run import train

    cfg = loaded.config.to_dict()
    cfg["model"] = shallower_model(cfg["model"])
    cfg["name"] = f"{cfg.get('name', 'run')}-shallow"
    out = Path(loaded.run_dir) / "doctor_shallow"
    if out.exists():
        shutil.rmtree(out)  # our own folder from a previous doctor run
    train(cfg, out=out, quiet=True)  # same data, optimizer and budget; TrainingDiverged propagates
    losses = [r["loss"] for r in _epoch_rows(out, "train")]
    return {"loss": min(losses), "model": cfg["model"], "run_dir": str(out)}


def _epoch_rows(run_dir: Path, split: str) -> list[dict[str, Any]]:
    from trainlab.logging import RunDir

    rd = RunDir.open(run_dir)
    return [
        r
        for r in rd.read_metrics()
        if r.get("split") == split and r.get("kind", "epoch") == "epoch" and "loss" in r
    ]


def _last_weights(loaded: Any) -> tuple[torch.nn.Module, str]:
    """A copy of the model with checkpoints/last.pt's weights ("last"), or the loaded best ones."""
    from trainlab.engine.checkpoint import load_checkpoint

    path = Path(loaded.run_dir) / "checkpoints" / "last.pt"
    if not path.exists():
        return loaded.model, "best"
    model = copy.deepcopy(loaded.model)
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval(), "last"


def _batch_sweep(loaded: Any, time_limit: float = 30.0) -> dict[str, Any]:
    """Time one forward/backward/SGD step of a copy of the model per batch size."""
    from trainlab.data.loaders import make_loader

    model = copy.deepcopy(loaded.model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    n = len(loaded.bundle.train)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def step(b: int) -> None:
        if b not in cache:
            x, y = next(iter(make_loader(loaded.bundle.train, b, shuffle=False)))
            cache.clear()  # keep one batch in memory at a time
            cache[b] = (x.to(loaded.device), y.to(loaded.device))
        x, y = cache[b]
        optimizer.zero_grad(set_to_none=True)
        loaded.loss_fn(model(x), y).backward()
        optimizer.step()
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)  # time the work, not the launch

    sizes = [2**k for k in range(int(math.log2(max(1, n))) + 1)]
    rows = batch_size_sweep(step, n, sizes=sizes, time_limit=time_limit)
    plot = plot_batch_sweep(rows, Path(loaded.run_dir) / "plots" / "batch_sweep.png")
    return {"rows": rows, "largest_free_batch": largest_free_batch(rows), "plot": str(plot)}


def _auto_shallow(loaded: Any, base: float, large: float = 0.3) -> bool:
    """Whether doctor trains a shallower model by default: the training loss is large (the one
    question the comparison answers), a shallower variant of the model is known, and the run was
    cheap (at most SHALLOW_AUTO_SECONDS of training; the shallower model costs less)."""
    from trainlab.diagnose.flowchart import _curve

    train = _curve(loaded.history, "train")
    seconds = loaded.summary.get("train_time_seconds")
    if (
        loaded.summary.get("status") == "failed"
        or not train
        or not all(math.isfinite(v) for v in train)
        or min(train) <= large * base
        or seconds is None
    ):
        return False  # a diverged run is a numerical failure whatever a shallower model does
    try:
        shallower_model(loaded.config.to_dict()["model"])
    except ConfigError:
        return False
    return seconds <= SHALLOW_AUTO_SECONDS


def doctor(
    run_dir: str | Path, compare_shallow: bool | None = None, batch_sizes: bool = False, hvp_budget: int = 20
) -> dict[str, Any]:
    """Diagnose a finished (or failed) run; writes summary.json["diagnosis"] and returns it.

    compare_shallow: True trains a shallower model on the same data and budget, False never does,
    None (the default) does when it is cheap and would change the answer (see `_auto_shallow`)."""
    from trainlab.finished import load_run
    from trainlab.logging import RunDir

    loaded = load_run(run_dir)
    bundle, summary = loaded.bundle, loaded.summary
    base = baseline_loss(bundle.task, _targets(bundle.train))

    # Where did optimization end? The last weights, not the best-on-validation ones.
    model, weights = _last_weights(loaded)
    batch = _first_batch(bundle.train, CRITICAL_BATCH, loaded.device)
    rows = read_layer_stats(run_dir)
    health = gradient_health(rows if rows else gradient_snapshot(model, loaded.loss_fn, batch))
    health["source"] = "layer_stats.jsonl" if rows else f"one backward pass at the {weights} weights"

    auto = compare_shallow is None and _auto_shallow(loaded, base)
    shallow = _compare_shallow(loaded) if compare_shallow or auto else None
    if shallow is not None:
        shallow["automatic"] = auto  # trained without --compare-shallow because it was cheap
    diverged = summary.get("status") == "failed"
    try:
        diagnosis = verdict(
            loaded.history,
            base,
            shallow=shallow,
            holdout=_holdout(loaded),
            diverged=diverged,
            gradient_health=health,
        )
    except ValueError as e:  # no training rows: metrics.jsonl missing, empty or cut short
        raise TrainlabError(
            f"doctor: {Path(run_dir) / 'metrics.jsonl'}: {e}; the file is missing, empty or was cut "
            f"short before an epoch ended, so there is no loss curve to diagnose"
        ) from None
    if shallow is not None:
        diagnosis["shallow"] = shallow
    diagnosis["numbers"]["train_loss_best_weights"] = _loss_on(loaded, bundle.train)  # eval mode, no dropout
    try:
        diagnosis["critical_point"] = critical_point(model, loaded.loss_fn, batch, hvp_budget=hvp_budget)
        diagnosis["critical_point"].update(batch_size=len(batch[1]), weights=weights)
    except RuntimeError as e:  # e.g. an op without a double backward (cuDNN RNNs)
        diagnosis["critical_point"] = {"kind": "unavailable", "error": str(e).splitlines()[0]}
    diagnosis["gradient_health"] = health
    if batch_sizes:
        diagnosis["batch_sizes"] = _batch_sweep(loaded)

    RunDir.open(run_dir).update_summary(diagnosis=diagnosis)
    from trainlab.report.html import write_report

    write_report(Path(run_dir))
    return diagnosis


def format_diagnosis(d: dict[str, Any]) -> str:
    """The diagnosis for the console."""
    lines = [f"verdict: {d['verdict']}", "", d["explanation"], "", "next steps:"]
    lines += [f"  - {s}" for s in d["next_steps"]]
    sh = d.get("shallow")
    if sh:
        lines += [
            "",
            f"shallower model: training loss {sh['loss']:.4g} ({sh['run_dir']}"
            + (
                "; trained because this run was cheap, --no-compare-shallow skips it)"
                if sh.get("automatic")
                else ")"
            ),
        ]
    cp = d.get("critical_point") or {}
    if cp:
        lines += ["", f"critical point: {cp['kind']}"]
        if "error" in cp:
            lines.append(f"  ({cp['error']})")
        else:
            lines.append(
                f"  loss {cp['loss']:.4g}, gradient norm {cp['grad_norm']:.3g} "
                f"({cp['grad_norm_relative']:.3g} × loss), Hessian eigenvalues from {cp['lambda_min']:.4g} "
                f"to {cp['lambda_max']:.4g} ({cp['hvps']} Hessian-vector products, "
                f"batch of {cp.get('batch_size', '?')}, {cp.get('weights', 'best')} weights)"
            )
            esc = cp.get("escape")
            if esc:
                lines.append(
                    f"  a step of {esc['step']:.3g} along the negative-curvature direction takes the loss "
                    f"from {esc['loss_before']:.6g} to {esc['loss_after']:.6g}"
                )
    gh = d.get("gradient_health") or {}
    if gh:
        lines += [
            "",
            "gradient health: "
            + ("no problem found" if gh.get("healthy") else "problems found")
            + f" (from {gh.get('source', '?')})",
        ]
        lines += [f"  - {m}" for m in gh.get("messages", [])]
    bs = d.get("batch_sizes")
    if bs:
        lines += ["", "batch size   time/update   samples/s   time/epoch"]
        lines += [
            f"  {r['batch_size']:>9}   {r['time_per_update'] * 1e3:>8.3f} ms   "
            f"{r['samples_per_second']:>9.0f}   {r['time_per_epoch']:>8.3f} s"
            for r in bs["rows"]
        ]
        if bs.get("largest_free_batch"):
            lines.append(
                f"  larger batches cost about the same time per update up to {bs['largest_free_batch']}"
            )
    return "\n".join(lines)


def lr_find(
    config: str | Path | dict | None,
    overrides: list[str] | dict | None = None,
    out: str | Path | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """LR range test on the pipeline a config builds (model, loss, optimizer, train loader); saves
    the plot to `out` (a .png path or a folder). By default the plot goes beside the runs it tunes:
    the latest run folder of the config's name (runs/<name>, or runs/<name>-N when that exists),
    so the test never starts a new run folder; when no run exists yet it creates runs/<name>/ with
    just lr_find.png, and the next `trainlab train` trains into that same folder."""
    from trainlab.config import load_config
    from trainlab.pipeline import build_pipeline
    from trainlab.run import default_run_dir

    cfg = load_config(config, overrides or [])
    pipe = build_pipeline(cfg)
    result = lr_range_test(
        pipe.model, pipe.loss_fn, pipe.optimizer, pipe.train_loader, device=pipe.device, **kwargs
    )
    path = Path(out) if out is not None else default_run_dir(cfg, existing=True)
    if path.suffix.lower() != ".png":
        path = path / "lr_find.png"
    result["plot"] = str(plot_lr_find(result, path))
    result["optimizer"] = cfg.optimizer.name
    return result


def format_lr_find(r: dict[str, Any]) -> str:
    def lr(v: float | None) -> str:
        return f"{v:.2e}" if v is not None else "none (the loss did not clearly fall at any LR of the test)"

    lines = [
        f"LR range test ({r.get('optimizer', '')}, {len(r['all_lrs'])} steps from {r['all_lrs'][0]:.1e} "
        f"to {r['all_lrs'][-1]:.1e}{', stopped: the loss diverged' if r['stopped_early'] else ''})"
        if r["all_lrs"]
        else "LR range test: the first step already gave a non-finite loss"
    ]
    lines.append(
        f"suggested learning rate:       {lr(r['suggestion_steepest'])}"
        + (
            " (where the smoothed loss falls fastest, at most a tenth of the LR with the lowest loss)"
            if r["suggestion_steepest"] is not None
            else ""
        )
    )
    lines.append(f"a cautious choice (valley):    {lr(r['suggestion_valley'])}")
    if r.get("divergence_lr"):
        lines.append(f"the loss blows up from about:  {r['divergence_lr']:.2e}")
    if r.get("plot"):
        lines.append(f"plot: {r['plot']}")
    return "\n".join(lines)
