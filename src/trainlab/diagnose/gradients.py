"""Gradient health: per-layer gradient norms, ‖g‖/‖w‖, update ratios and dead ReLU units.

A "layer" is a module with parameters of its own (Linear, Conv2d, BatchNorm, ...), named as in
`model.named_modules()`, in registration order (for most models, input to output). Vanishing
gradients show as first layers' gradient norms orders of magnitude below the last layers';
exploding ones as gradient norms that dwarf the weights (a single SGD step would move a layer far
beyond its own size), that grow by orders of magnitude, or that are not finite.

`LayerStatsCallback` samples the gradients every `every_n_steps` optimizer steps (one host sync
each time) and writes one row per layer per epoch to `<run_dir>/layer_stats.jsonl`:
    {"epoch", "step", "layer", "weight_norm", "grad_norm", "grad_to_weight", "update_ratio"}
plus, when `track_dead_relu`, rows {"epoch", "step", "layer", "dead_fraction"} for nn.ReLU modules
(functional F.relu calls are invisible to module hooks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.engine.callbacks import Callback
from trainlab.engine.device import unwrap


def parameterised_layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, own trainable parameters) of every module that has some, in registration order."""
    layers = []
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            layers.append((name or type(module).__name__, params))
    return layers


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖concat(tensors)‖ without concatenating: sqrt of the sum of squared per-tensor norms."""
    return torch.stack([t.detach().float().norm() for t in tensors]).square().sum().sqrt()


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 and math.isfinite(a) else None


def gradient_snapshot(
    model: nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, torch.Tensor]
) -> list[dict[str, Any]]:
    """Rows for one backward pass on `batch` (no training needed: e.g. at initialisation).

    The model's mode and existing `.grad`s are left as they were.
    """
    layers = parameterised_layers(model)
    params = [p for _, ps in layers for p in ps]
    x, y = batch
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
    by_param = {id(p): (g if g is not None else torch.zeros_like(p)) for p, g in zip(params, grads)}
    rows = []
    for name, ps in layers:
        w, g = float(_norms(list(ps))), float(_norms([by_param[id(p)] for p in ps]))
        rows.append(
            {
                "epoch": 0,
                "step": 0,
                "layer": name,
                "weight_norm": w,
                "grad_norm": g,
                "grad_to_weight": _ratio(g, w),
                "update_ratio": None,
            }
        )
    return rows


class LayerStatsCallback(Callback):
    """Records per-layer statistics during training (see the module docstring)."""

    def __init__(
        self, run_dir: str | Path | None = None, every_n_steps: int = 25, track_dead_relu: bool = False
    ):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every_n_steps = max(1, every_n_steps)
        self.track_dead_relu = track_dead_relu
        self.rows: list[dict[str, Any]] = []  # everything recorded, also when nothing is written

    # -- hooks
    def on_train_begin(self, logs: dict[str, Any]) -> None:
        model = unwrap(logs["model"])  # the user's module inside DDP / torch.compile
        self.scaler = logs.get("scaler")  # fp16: gradients are scaled at backward
        if self.run_dir is None:
            run = logs.get("run_dir") or getattr(logs.get("run"), "path", None)
            self.run_dir = Path(run) if run is not None else None
        self.layers = parameterised_layers(model)
        self._previous = self._weights()  # for the update ratio ‖Δw‖/‖w‖ over an epoch
        self._grad_sum = torch.zeros(len(self.layers))
        self._grad_max = torch.zeros(len(self.layers))
        self._samples = 0
        self._dead: dict[str, list[float]] = {}
        self._sample_relu = False
        self._hooks = []
        if self.track_dead_relu:
            for name, module in model.named_modules():
                if isinstance(module, nn.ReLU):
                    self._hooks.append(module.register_forward_hook(self._relu_hook(name)))

    def on_batch_end(self, step: int, logs: dict[str, Any]) -> None:  # noqa: ARG002
        # arm the ReLU hooks for the next training batch only, every N steps
        self._sample_relu = self.track_dead_relu and (step + 1) % self.every_n_steps == 0

    def on_after_backward(self, step: int, logs: dict[str, Any]) -> None:  # noqa: ARG002
        if step % self.every_n_steps:
            return
        grads = []
        for _, ps in self.layers:
            gs = [p.grad for p in ps if p.grad is not None]
            grads.append(_norms(gs) if gs else torch.zeros((), device=ps[0].device))
        norms = torch.stack(grads).cpu()  # note: host sync, once every N steps
        if self.scaler is not None and self.scaler.is_enabled():
            norms = norms / self.scaler.get_scale()
        self._grad_sum += norms
        self._grad_max = torch.maximum(self._grad_max, norms)
        self._samples += 1

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        step = int(logs.get("step", 0))
        epoch = int(logs.get("epoch", epoch))
        weights = self._weights()
        rows = []
        for i, (name, _) in enumerate(self.layers):
            w = float(_norms(weights[i]))
            delta = float(_norms([a - b for a, b in zip(weights[i], self._previous[i])]))
            g = float(self._grad_sum[i] / self._samples) if self._samples else None
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "layer": name,
                    "weight_norm": w,
                    "grad_norm": g,
                    "grad_norm_max": float(self._grad_max[i]) if self._samples else None,
                    "grad_to_weight": _ratio(g, w) if g is not None else None,
                    "update_ratio": _ratio(delta, float(_norms(self._previous[i]))),
                }
            )
        for name, fractions in self._dead.items():
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "layer": name,
                    "dead_fraction": sum(fractions) / len(fractions),
                }
            )
        self._previous = weights
        self._grad_sum.zero_()
        self._grad_max.zero_()
        self._samples, self._dead = 0, {}
        self.rows.extend(rows)
        if self.run_dir is not None:
            with open(self.run_dir / "layer_stats.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def on_train_end(self, logs: dict[str, Any]) -> None:  # noqa: ARG002
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- helpers
    def _weights(self) -> list[list[torch.Tensor]]:
        return [[p.detach().clone() for p in ps] for _, ps in self.layers]

    def _relu_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:  # noqa: ARG001
            if not (self._sample_relu and module.training) or output.dim() < 2:
                return
            # a unit (feature / channel, dim 1) is dead on this batch if it is zero for every sample
            # and position: reduce (B, C, ...) -> (C,)
            alive = (output.detach() > 0).transpose(0, 1).reshape(output.shape[1], -1).any(1)
            self._dead.setdefault(name, []).append(float((~alive).float().mean()))  # note: host sync

        return hook


def read_layer_stats(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "layer_stats.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _short(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def gradient_health(
    rows: list[dict[str, Any]],
    vanish_ratio: float = 1e-3,
    explode_ratio: float = 1e2,
    dead_threshold: float = 0.5,
) -> dict[str, Any]:
    """Flags from layer-stats rows (of `LayerStatsCallback` or `gradient_snapshot`).

    vanishing: layers whose gradient norm is below `vanish_ratio` × the largest gradient norm of the
      layers after them (latest epoch).
    exploding: a non-finite gradient, ‖g‖/‖w‖ above `explode_ratio`, or a layer's gradient norm
      growing by more than 1/vanish_ratio from the first epoch to the last.
    dead_relu: ReLU modules with more than `dead_threshold` of their units never active on a batch.
    """
    grad_rows = [r for r in rows if r.get("grad_norm") is not None]
    flags: dict[str, Any] = {"vanishing": False, "exploding": False, "dead_relu": False}
    messages: list[str] = []
    result: dict[str, Any] = {"flags": flags, "layers": {}, "messages": messages}
    if grad_rows:
        last_epoch = max(r["epoch"] for r in grad_rows)
        latest = [r for r in grad_rows if r["epoch"] == last_epoch]
        names = [r["layer"] for r in latest]
        g = [float(r["grad_norm"]) for r in latest]
        result["epoch"] = last_epoch
        result["layers"] = {
            r["layer"]: {k: r.get(k) for k in ("grad_norm", "weight_norm", "grad_to_weight", "update_ratio")}
            for r in latest
        }
        # vanishing: compare each layer with the strongest gradient downstream of it
        downstream_max = [max(g[i + 1 :]) if i + 1 < len(g) else 0.0 for i in range(len(g))]
        vanishing = [
            n
            for n, gi, dm in zip(names, g, downstream_max)
            if math.isfinite(dm) and dm > 0 and gi < vanish_ratio * dm
        ]
        if vanishing:
            flags["vanishing"] = True
            worst = min(gi / dm for gi, dm in zip(g, downstream_max) if dm > 0 and math.isfinite(dm))
            messages.append(
                f"vanishing gradients: {_short(vanishing)} get gradients {1 / max(worst, 1e-300):.1e}× "
                "smaller than later layers, so they barely train."
            )
        result["vanishing_layers"] = vanishing
        # exploding: not finite, huge relative to the weights, or growing over training
        exploding = [
            r["layer"]
            for r in latest
            if not math.isfinite(float(r["grad_norm"]))
            or (r.get("grad_to_weight") is not None and r["grad_to_weight"] > explode_ratio)
        ]
        first_epoch = min(r["epoch"] for r in grad_rows)
        if first_epoch != last_epoch:
            first = {r["layer"]: float(r["grad_norm"]) for r in grad_rows if r["epoch"] == first_epoch}
            exploding += [
                n
                for n, gi in zip(names, g)
                if first.get(n, 0) > 0 and gi > first[n] / vanish_ratio and n not in exploding
            ]
        if exploding:
            flags["exploding"] = True
            messages.append(
                f"exploding gradients: {_short(exploding)} have gradients that are not finite, "
                f"more than {explode_ratio:g}× their weights' norm, or grew over 1000× during training."
            )
        result["exploding_layers"] = exploding
    dead_rows = [r for r in rows if r.get("dead_fraction") is not None]
    if dead_rows:
        last = max(r["epoch"] for r in dead_rows)
        dead = {r["layer"]: r["dead_fraction"] for r in dead_rows if r["epoch"] == last}
        result["dead_fraction"] = dead
        bad = [n for n, f in dead.items() if f > dead_threshold]
        if bad:
            flags["dead_relu"] = True
            messages.append(
                f"dead ReLU units: {_short(bad)} have more than {dead_threshold:.0%} of their units never "
                "active; lower the learning rate or use LeakyReLU/GELU."
            )
        result["dead_relu_layers"] = bad
    result["healthy"] = not any(flags.values())
    return result
