"""TensorBoard beyond scalars: a sample input batch and the model graph at the start, first-layer conv
kernels and weight/gradient histograms every `histogram_every` epochs, the confusion matrix at the end.

Scalars (loss, metrics, LR, gradient norm, samples/s) are written by the logging callback; this one
adds what costs more and so is written rarely.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.utils import make_grid

from trainlab.engine.callbacks import Callback
from trainlab.engine.device import unwrap
from trainlab.report.plots import confusion_matrix_figure


class TensorBoardExtras(Callback):
    """`writer` is a `torch.utils.tensorboard.SummaryWriter`; `sample_batch` an (x, y) pair (else taken
    from `logs["sample_batch"]` at train begin); `histogram_every` None turns the histograms off;
    `run_dir` (else `logs["run_dir"]`) is where the confusion matrix' predictions/val.npz is read at the end,
    unless `on_train_end`'s logs carry "predictions" ({"target", "output"} arrays)."""

    def __init__(
        self,
        writer: Any,
        histogram_every: int | None = None,
        sample_batch: tuple[torch.Tensor, Any] | None = None,
        class_names: list[str] | None = None,
        max_images: int = 32,
        run_dir: str | Path | None = None,
    ):
        self.writer = writer
        self.histogram_every = histogram_every
        self.sample_batch = sample_batch
        self.class_names = class_names
        self.max_images = max_images
        self.model: nn.Module | None = None
        self.run_path = Path(run_dir) if run_dir is not None else None
        self.epochs_done = 0  # counted here (saved in state_dict) so "every N epochs" survives --resume
        self._grads: dict[str, torch.Tensor] | None = (
            None  # buffers, only during an epoch that logs histograms
        )

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.model = unwrap(logs["model"])
        self.run_path = _run_path(logs) or self.run_path
        self.class_names = self.class_names or logs.get("class_names")
        batch = self.sample_batch if self.sample_batch is not None else logs.get("sample_batch")
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, torch.Tensor):
            if x.ndim == 4 and x.shape[1] in (1, 3):  # (B, C, H, W) images
                imgs = x[: self.max_images].detach().float().cpu()
                imgs = (imgs - imgs.min()) / (imgs.max() - imgs.min()).clamp_min(
                    1e-12
                )  # normalised inputs -> [0, 1]
                self.writer.add_images("inputs/sample_batch", imgs, 0)
            self._add_graph(x)
        self._add_kernels(0)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._histogram_epoch() and self.model is not None:
            # preallocated once per such epoch; each backward copies into them (no allocation per step)
            self._grads = {
                n: torch.empty_like(p) for n, p in self.model.named_parameters() if p.requires_grad
            }

    def on_after_backward(self, step: int, logs: dict[str, Any]) -> None:
        # The loop may say which batch is the epoch's last ("last_batch"); without it every step of this
        # epoch overwrites the buffers and the last step's gradients remain at epoch end.
        if self._grads is None or logs.get("last_batch") is False:
            return
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self._grads and p.grad is not None:
                    self._grads[n].copy_(p.grad)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._histogram_epoch() and self.model is not None:
            step = int(logs.get("step", epoch))
            for n, p in self.model.named_parameters():
                self.writer.add_histogram(f"weights/{n}", p.detach().float().cpu(), step)
                if self._grads is not None and n in self._grads:
                    self.writer.add_histogram(f"grads/{n}", self._grads[n].float().cpu(), step)
            self._add_kernels(step)
        self._grads = None
        self.epochs_done += 1

    def on_train_end(self, logs: dict[str, Any]) -> None:
        step = int(logs.get("step", self.epochs_done))
        self._add_kernels(step)
        preds = logs.get("predictions") or self._read_predictions()
        if preds is not None and self.class_names:
            target, output = np.asarray(preds["target"]).astype(int), np.asarray(preds["output"])
            if output.ndim == 2 and output.shape[1] == len(self.class_names):
                pred = output.argmax(axis=1)
            elif output.ndim == 1 and len(self.class_names) == 2:
                pred = (output >= 0.5).astype(int)  # binary: P(class 1)
            else:
                pred = None  # a regression: no confusion matrix
            if pred is not None:
                self.writer.add_figure(
                    "eval/confusion_matrix", confusion_matrix_figure(target, pred, self.class_names), step
                )
        self.writer.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state.get("epochs_done", 0))

    # ------------------------------------------------------------------ helpers

    def _histogram_epoch(self) -> bool:
        return bool(self.histogram_every) and (self.epochs_done + 1) % self.histogram_every == 0

    def _add_graph(self, x: torch.Tensor) -> None:
        """Trace the model on two samples. Tracing runs a forward pass, so it runs in eval mode (batch-norm
        statistics stay untouched) and it is skipped with a warning where tracing fails (data-dependent
        control flow, dict inputs, some compiled models)."""
        model = self.model
        was_training = model.training
        try:
            device = next(model.parameters()).device
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings are noise here
                self.writer.add_graph(model, x[:2].to(device))
        except Exception as e:
            warnings.warn(
                f"TensorBoard: could not add the model graph ({type(e).__name__}: {e}); "
                "the other TensorBoard logs are unaffected.",
                stacklevel=2,
            )
        finally:
            model.train(was_training)

    def _add_kernels(self, step: int) -> None:
        """The first Conv2d's kernels as one image grid, each kernel scaled to its own range and enlarged
        (kernels are 3x3 to 11x11 pixels: too small to see at their own size)."""
        conv = (
            next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
            if self.model is not None
            else None
        )
        if conv is None:
            return
        w = conv.weight.detach().float().cpu()  # (out, in, kh, kw)
        if w.shape[1] != 3:
            w = w.mean(dim=1, keepdim=True)  # gray: exact for in == 1
        grid = make_grid(w[:64], nrow=8, padding=1, normalize=True, scale_each=True, pad_value=1.0)
        scale = max(1, 64 // max(w.shape[-2:]))
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
        self.writer.add_image("weights/first_conv_kernels", grid, step)

    def _read_predictions(self) -> dict[str, np.ndarray] | None:
        path = self.run_path / "predictions" / "val.npz" if self.run_path else None
        if path is None or not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in ("target", "output") if k in f.files} if "target" in f.files else None


def _run_path(logs: dict[str, Any]) -> Path | None:
    """The run directory from logs["run_dir"], or logs["run"] (a path or an object with `.path`)."""
    for value in (logs.get("run_dir"), logs.get("run")):
        if isinstance(value, (str, Path)):
            return Path(value)
        if value is not None and isinstance(getattr(value, "path", None), (str, Path)):
            return Path(value.path)
    return None
