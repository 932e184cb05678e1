"""LR range test: exact restore, divergence where theory puts it, NaN-tolerant suggestions."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainlab.diagnose.lr_finder import lr_range_test, plot_lr_find, suggest_steepest, suggest_valley

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def test_restores_model_optimizer_and_rng_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    # one real step so the optimizer has state (exp_avg, step) worth restoring
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    model.eval()
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}
    groups = opt.state_dict()["param_groups"]
    rng = torch.get_rng_state()
    r = lr_range_test(model, nn.MSELoss(), opt, [(x, y)] * 3, num_steps=30)
    assert len(r["all_lrs"]) > 10  # it really trained (and moved the weights) in between
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    after = opt.state_dict()
    assert after["param_groups"] == groups and after["param_groups"][0]["lr"] == 1e-3
    assert after["state"].keys() == state.keys()
    assert all(torch.equal(after["state"][k][n], t) for k, v in state.items() for n, t in v.items())
    assert not model.training and torch.equal(torch.get_rng_state(), rng)
    # the optimizer still steps the model's own parameters (not copies)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert not torch.equal(params[0], model[0].weight)


@pytest.mark.parametrize("a", [2.0, 20.0, 2000.0])
def test_quadratic_with_sgd_diverges_just_past_2_over_a(a):
    theta = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = theta

        def forward(self, x):
            return 0.5 * a * self.theta**2

    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = lr_range_test(model, lambda out, y: out.sum(), opt, [(None, None)])
    assert r["stopped_early"]
    # SGD multiplies θ by (1 − lr·a): the loss grows from the first lr above 2/a (ramp steps are ×1.2)
    assert 2 / a < r["divergence_lr"] <= 1.21 * (2 / a)
    assert r["suggestion_steepest"] < 2 / a and r["suggestion_valley"] < 2 / a
    assert theta.item() == 1.0
    # unsmoothed, the 4×-the-best rule stops within a couple of steps of 2/a
    r0 = lr_range_test(model, lambda out, y: out.sum(), opt, [(None, None)], smooth=0.0)
    assert 2 / a < r0["stop_lr"] < 2 * (2 / a)


def test_suggestions_ignore_everything_after_the_first_nan():
    lrs = [10 ** (-6 + i / 10) for i in range(40)]
    losses = [1.0] * 10 + [1.0 - 0.09 * i for i in range(10)] + [0.1] * 5 + [math.nan, -50.0] + [0.1] * 13
    steep, valley = suggest_steepest(lrs, losses), suggest_valley(lrs, losses)
    assert lrs[9] <= steep <= lrs[19]  # inside the falling stretch, not at the -50 after the NaN
    assert lrs[10] <= valley <= lrs[19]
    assert (
        suggest_steepest(lrs[:3], [math.nan] * 3) is None and suggest_valley([1e-3, 1e-2], [1.0, 0.5]) is None
    )


def test_stops_at_first_nan_and_plots(tmp_path):
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        return 0 * out.sum() + (math.nan if len(calls) > 40 else 1.0 / len(calls))  # falls, then NaN

    model = nn.Linear(1, 1)
    r = lr_range_test(model, loss_fn, torch.optim.SGD(model.parameters(), lr=1.0), [(torch.ones(1, 1), None)])
    assert r["stopped_early"] and len(r["all_lrs"]) == 40 and all(math.isfinite(v) for v in r["raw_losses"])
    png = plot_lr_find(r, tmp_path / "plots" / "lr_find.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_suggestion_is_on_the_descent_not_on_early_noise_or_a_recovery():
    """Flat for 5 decades with a wiggle at the start, the real fall over 1e-3..1e-2, a blow-up, then a
    recovery: the headline is the steep part of the real fall, not the wiggle nor the recovery."""
    lrs = list(np.logspace(-7, 1, 100))
    x = np.log10(lrs)
    losses = 2.3 - 0.3 / (1 + np.exp(-(x + 2.5) * 4))  # logistic fall centred at 10^-2.5
    losses[1:4] -= 0.05  # a dip in the noisy, barely smoothed first points
    losses[x > -1.5] += 4.0 * (x[x > -1.5] + 1.5)  # blow-up from 10^-1.5 to 6 ...
    losses[x > -0.5] = 6.0 - 2.5 * (x[x > -0.5] + 0.5)  # ... then a steeper fall to 2.25: only recovery
    lr = suggest_steepest(lrs, list(losses))
    assert 10**-3.3 < lr < 10**-2.4  # steepest at 10^-2.5, capped at a tenth of the lowest loss's LR


def test_a_flat_curve_gets_no_suggestion():
    lrs = list(np.logspace(-7, 1, 100))
    losses = 1.1 + 0.003 * np.sin(np.arange(100))  # noise only, then it blows up
    losses[90:] += np.arange(10)
    assert suggest_steepest(lrs, list(losses)) is None
