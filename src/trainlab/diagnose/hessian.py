"""Is training stuck at a critical point, and which kind? (gradient norm + Hessian extremes)

At a critical point the gradient is zero and the Hessian H decides what the point is: all
eigenvalues positive -> local minimum; some negative -> saddle point, and the eigenvector u of a
negative eigenvalue is a way out: L(θ + αu) ≈ L(θ) + ½λα² < L(θ).

H is never formed. A Hessian-vector product Hv costs about one extra backward pass: compute the
gradient g(θ) with `create_graph=True` once, then Hv = ∂(g·v)/∂θ by backpropagating through that
graph (double backprop). Lanczos with full reorthogonalisation builds a small tridiagonal matrix T
from m such products whose extreme eigenvalues converge to H's extremes from the inside: both ends
come from the same m products (power iteration would need a second run on H − λI for the other
end and converges much more slowly). With m ≥ the number of parameters the answer is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

KINDS = ("not_critical", "minimum", "saddle", "inconclusive")


def lanczos_extremes(
    hvp: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int, like: torch.Tensor, seed: int = 0
) -> dict[str, Any]:
    """Smallest and largest eigenvalues (and unit eigenvectors) of the symmetric operator `hvp`.

    `n` is the dimension, `like` a tensor whose dtype/device the vectors take. Costs `min(steps, n)`
    products and keeps that many vectors of size n (memory: steps × n numbers).
    """
    steps = max(1, min(steps, n))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(like)
    v = v / v.norm()
    basis: list[torch.Tensor] = []  # orthonormal Lanczos vectors q_1..q_m
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(steps):
        basis.append(v)
        w = hvp(v)
        alphas.append(float(w @ v))
        # Full reorthogonalisation (twice is enough): keeps the basis orthogonal in float32, where
        # plain three-term Lanczos loses orthogonality and reports "ghost" copies of eigenvalues.
        q = torch.stack(basis)  # (k, n)
        for _ in range(2):
            w = w - q.T @ (q @ w)
        beta = float(w.norm())
        if beta <= 1e-10 * max(1.0, abs(alphas[-1])) or len(basis) == steps:
            break  # Krylov space exhausted (exact answer) or budget spent
        betas.append(beta)
        v = w / beta
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(t)  # ascending; T = Y diag(evals) Yᵀ
    q = torch.stack(basis)  # (m, n)
    to_vec = lambda y: y.to(like) @ q  # noqa: E731 -- Ritz vector Q y, unit length since Q is orthonormal
    return {
        "lambda_min": float(evals[0]),
        "lambda_max": float(evals[-1]),
        "v_min": to_vec(evecs[:, 0]),
        "v_max": to_vec(evecs[:, -1]),
        "hvps": m,
    }


def hutchinson_trace(
    hvp: Callable[[torch.Tensor], torch.Tensor], n: int, samples: int, like: torch.Tensor, seed: int = 1
) -> dict[str, float]:
    """tr(H) ≈ mean of zᵀHz over Rademacher vectors z (unbiased), with its standard error."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(like)
        values.append(float(z @ hvp(z)))
    mean = sum(values) / len(values)
    var = sum((x - mean) ** 2 for x in values) / max(1, len(values) - 1)
    return {"trace": mean, "trace_stderr": math.sqrt(var / len(values)), "samples": len(values)}


def _classify(
    grad_rel: float, lam_min: float, lam_max: float, grad_tol: float, tol: float | None
) -> tuple[str, float]:
    scale = max(abs(lam_min), abs(lam_max))
    tol = 1e-3 * scale + 1e-8 if tol is None else tol  # "zero" relative to the largest curvature
    if grad_rel > grad_tol:
        return "not_critical", tol
    if lam_min > tol:
        return "minimum", tol
    if lam_min < -tol:
        return "saddle", tol
    return "inconclusive", tol  # a flat direction: higher-order terms decide (e.g. y⁴)


def _critical_point(
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    shift: Callable[[torch.Tensor], None],
    hvp_budget: int,
    grad_tol: float,
    tol: float | None,
    escape_step: float | None,
    trace_samples: int,
    seed: int,
) -> dict[str, Any]:
    """`loss_fn()` evaluates the loss at the current `params` (leaves with requires_grad);
    `shift(delta)` adds a flat vector delta to them in place (under no_grad)."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.cat([gr.reshape(-1) for gr in grads])  # (n,), still differentiable w.r.t. params
    n = g.numel()

    def hvp(v: torch.Tensor) -> torch.Tensor:
        # ∂(g·v)/∂θ = Hv; retain_graph so the same gradient graph serves every product
        hv = torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.cat(
            [(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, params)]
        ).detach()

    loss_value = float(loss.detach())
    grad_norm = float(g.detach().norm())
    grad_rel = grad_norm / max(abs(loss_value), 1e-12)
    ext = lanczos_extremes(hvp, n, 2 * hvp_budget, g.detach(), seed=seed)
    lam_min, lam_max = ext["lambda_min"], ext["lambda_max"]
    kind, tol_used = _classify(grad_rel, lam_min, lam_max, grad_tol, tol)

    result: dict[str, Any] = {
        "kind": kind,
        "loss": loss_value,
        "grad_norm": grad_norm,
        "grad_norm_relative": grad_rel,
        "lambda_max": lam_max,
        "lambda_min": lam_min,
        "lambda_max_abs": max(abs(lam_min), abs(lam_max)),
        "tol": tol_used,
        "grad_tol": grad_tol,
        "num_parameters": n,
        "hvps": ext["hvps"],
    }
    if trace_samples > 0:
        result.update(hutchinson_trace(hvp, n, trace_samples, g.detach(), seed=seed + 1))
        result["hvps"] += trace_samples
    g = g.detach()
    del grads, loss  # free the double-backprop graph before the escape evaluations

    if lam_min < 0:
        # The escape direction: unit eigenvector of λ_min; both signs are tried (g·u decides at first order).
        u = ext["v_min"]
        gdotu = float(g @ u)
        theta_norm = float(torch.cat([p.detach().reshape(-1) for p in params]).norm())
        alpha = escape_step if escape_step is not None else 1e-2 * max(1.0, theta_norm)
        result["escape"] = _escape(loss_fn, shift, u, alpha, lam_min, loss_value, gdotu)
    return result


def _escape(loss_fn, shift, u, alpha, lam_min, loss_before, gdotu) -> dict[str, Any]:
    """Loss after θ ± αu (the better sign), restoring θ afterwards."""
    best = None
    for sign in (1.0, -1.0):
        step = sign * alpha * u
        shift(step)
        try:
            with torch.no_grad():
                after = float(loss_fn())
        finally:
            shift(-step)
        if best is None or after < best[1]:
            best = (sign, after)
    sign, after = best
    return {
        "step": alpha,
        "loss_before": loss_before,
        "loss_after": after,
        "predicted_change": sign * alpha * gdotu + 0.5 * lam_min * alpha**2,  # second-order Taylor
        "lowers_loss": after < loss_before,
        "direction": (sign * u).detach().cpu().tolist() if u.numel() <= 16 else None,
    }


def critical_point_of_function(
    f: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    hvp_budget: int = 20,
    grad_tol: float = 1e-3,
    tol: float | None = None,
    escape_step: float | None = None,
    trace_samples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The same analysis for a plain function f(θ) of a flat tensor θ (e.g. f(x, y) = x² − 3y²)."""
    point = theta.detach().clone().reshape(-1).requires_grad_(True)

    def shift(delta: torch.Tensor) -> None:
        with torch.no_grad():
            point.add_(delta)

    return _critical_point(
        lambda: f(point), [point], shift, hvp_budget, grad_tol, tol, escape_step, trace_samples, seed
    )


def critical_point(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    hvp_budget: int = 20,
    grad_tol: float = 1e-3,
    tol: float | None = None,
    escape_step: float | None = None,
    trace_samples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Gradient norm, extreme Hessian eigenvalues and the kind of point the model's weights are at,
    for the loss on one fixed `batch` (x, y), in eval mode (no dropout noise, frozen batch-norm
    statistics). `hvp_budget` Hessian-vector products per end (2× in total, by Lanczos).

    kind: `not_critical` (‖g‖/|L| > grad_tol), `minimum` (λ_min > tol), `saddle` (λ_min < −tol;
    `escape` holds the loss after a small step along its eigenvector), else `inconclusive`.
    `tol` defaults to 1e-3·max|λ|. The model's parameters and train/eval modes are restored exactly
    afterwards (`torch.autograd.grad` leaves `.grad` untouched).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    modes = {m: m.training for m in model.modules()}
    saved = [p.detach().clone() for p in params]
    x, y = batch
    model.eval()

    def loss() -> torch.Tensor:
        return loss_fn(model(x), y)

    sizes = [p.numel() for p in params]

    def shift(delta: torch.Tensor) -> None:
        with torch.no_grad():
            for p, d in zip(params, delta.split(sizes)):
                p.add_(d.view_as(p))

    try:
        with torch.enable_grad():
            return _critical_point(
                loss, params, shift, hvp_budget, grad_tol, tol, escape_step, trace_samples, seed
            )
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        for m, mode in modes.items():
            m.training = mode
