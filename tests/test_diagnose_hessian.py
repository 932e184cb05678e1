"""Critical points against known answers: closed-form Hessians and torch's own dense Hessian."""

import torch
from torch import nn
from torch.func import functional_call

from trainlab.diagnose.hessian import critical_point, critical_point_of_function, lanczos_extremes


def test_saddle_of_x2_minus_3y2_has_eigenvalues_2_and_minus_6_and_escapes_along_y():
    f = lambda t: t[0] ** 2 - 3 * t[1] ** 2  # noqa: E731
    r = critical_point_of_function(f, torch.zeros(2))
    assert r["kind"] == "saddle"
    assert abs(r["lambda_max"] - 2) < 1e-5 and abs(r["lambda_min"] + 6) < 1e-5
    esc = r["escape"]
    assert esc["loss_after"] < esc["loss_before"] == 0.0 and esc["lowers_loss"]
    # the escape direction is ±y: no x component, unit length
    dx, dy = esc["direction"]
    assert abs(dx) < 1e-5 and abs(abs(dy) - 1) < 1e-5
    assert abs(esc["loss_after"] - esc["predicted_change"]) < 1e-8  # exact for a quadratic


def test_bowl_is_a_minimum_and_flat_quartic_is_inconclusive():
    bowl = critical_point_of_function(lambda t: t[0] ** 2 + 2 * t[1] ** 2, torch.zeros(2))
    assert bowl["kind"] == "minimum" and "escape" not in bowl
    assert abs(bowl["lambda_min"] - 2) < 1e-5 and abs(bowl["lambda_max"] - 4) < 1e-5
    quartic = critical_point_of_function(lambda t: t[0] ** 2 + t[1] ** 4, torch.zeros(2))
    assert quartic["kind"] == "inconclusive"  # H = diag(2, 0): second order cannot decide


def test_away_from_a_critical_point_the_gradient_decides():
    r = critical_point_of_function(lambda t: t[0] ** 2 + 2 * t[1] ** 2, torch.tensor([1.0, -0.5]))
    assert r["kind"] == "not_critical"
    assert abs(r["grad_norm"] - (2**2 + 2**2) ** 0.5) < 1e-5


def _mlp_2_4_1():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def test_mlp_extreme_eigenvalues_match_torch_dense_hessian():
    model = _mlp_2_4_1()
    x = torch.randn(16, 2, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    loss_fn = nn.MSELoss()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of_flat(flat):
        parts = dict(zip(names, (c.view(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return loss_fn(functional_call(model, parts, (x,)), y)

    evals = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of_flat, flat0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    r = critical_point(model, loss_fn, (x, y), hvp_budget=20)
    for got, want in ((r["lambda_min"], evals[0]), (r["lambda_max"], evals[-1])):
        assert abs(got - float(want)) <= 1e-3 * abs(float(want))
    assert r["num_parameters"] == 17
    # weights and mode restored exactly, even after the escape step evaluations
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lanczos_on_a_large_diagonal_finds_both_ends_within_budget():
    d = torch.linspace(-1.0, 5.0, 200)
    d[0], d[-1] = -3.0, 9.0  # separated extremes converge within a few dozen products
    r = lanczos_extremes(lambda v: d * v, 200, 40, d)
    assert r["hvps"] == 40
    assert abs(r["lambda_min"] + 3) < 1e-3 and abs(r["lambda_max"] - 9) < 1e-3
    assert abs(abs(float(r["v_min"][0])) - 1) < 1e-2


def test_hutchinson_trace_of_a_diagonal_quadratic():
    f = lambda t: (torch.tensor([1.0, 2.0, 3.0]) * t**2).sum()  # noqa: E731 -- H = diag(2, 4, 6)
    r = critical_point_of_function(f, torch.zeros(3), trace_samples=8)
    assert abs(r["trace"] - 12) < 1e-5 and r["trace_stderr"] < 1e-5  # zᵀHz is exact for diagonal H
