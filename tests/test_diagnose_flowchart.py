"""The flowchart verdicts on four small, really trained cases with known answers, plus edge cases."""

import math

import pytest
import torch
from torch import nn

from trainlab.diagnose.flowchart import VERDICTS, baseline_loss, verdict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _train(model, x, y, x_val, y_val, epochs=10, steps_per_epoch=40, lr=1e-2, optimizer="Adam"):
    """Full-batch training; one history row per split per epoch, like metrics.jsonl."""
    opt = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer == "Adam"
        else torch.optim.SGD(model.parameters(), lr=lr)
    )
    mse, history, step = nn.MSELoss(), [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            opt.zero_grad()
            mse(model(x), y).backward()
            opt.step()
            step += 1
        with torch.no_grad():
            history.append({"epoch": epoch, "step": step, "split": "train", "loss": mse(model(x), y).item()})
            history.append(
                {"epoch": epoch, "step": step, "split": "val", "loss": mse(model(x_val), y_val).item()}
            )
    return history


def _mse(model, x, y):
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def _mlp(widths, act=nn.Tanh):
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def test_linear_model_on_sin_3x_is_model_bias():
    torch.manual_seed(0)
    x, xv = torch.rand(64, 1) * 6 - 3, torch.rand(64, 1) * 6 - 3
    y, yv = torch.sin(3 * x), torch.sin(3 * xv)
    history = _train(nn.Linear(1, 1), x, y, xv, yv, lr=0.05)
    v = verdict(history, baseline_loss("regression", y))
    assert v["verdict"] == "model_bias", v
    assert v["numbers"]["train_ratio"] > 0.8 and v["next_steps"]


def test_deep_sigmoid_net_worse_than_shallow_one_is_optimization():
    torch.manual_seed(0)
    x = torch.rand(64, 1) * 2 - 1
    y = torch.sin(3 * x)
    deep = _mlp([1] + [16] * 19 + [1], act=nn.Sigmoid)  # 20 linear layers
    shallow = _mlp([1, 16, 1], act=nn.Sigmoid)
    history = _train(deep, x, y, x, y, epochs=5, lr=0.5, optimizer="SGD")
    _train(shallow, x, y, x, y, epochs=5, lr=0.5, optimizer="SGD")
    base = baseline_loss("regression", y)
    v = verdict(history, base, shallow={"loss": _mse(shallow, x, y)})
    assert v["verdict"] == "optimization", v
    assert v["numbers"]["shallow_train_loss"] < v["numbers"]["train_loss"]
    # without the comparison the same curves read as model bias
    assert verdict(history, base)["verdict"] == "model_bias"


def test_large_mlp_on_30_noisy_points_is_overfitting():
    torch.manual_seed(0)
    f = lambda x: torch.sin(2 * x)  # noqa: E731
    x, xv, xh = (torch.rand(n, 1) * 4 - 2 for n in (30, 200, 200))
    y, yv, yh = (f(t) + 0.5 * torch.randn_like(t) for t in (x, xv, xh))
    model = _mlp([1, 256, 256, 1], act=nn.ReLU)
    history = _train(model, x, y, xv, yv, epochs=15, lr=3e-3)
    base = baseline_loss("regression", y)
    v = verdict(history, base, holdout={"loss": _mse(model, xh, yh)})
    assert v["verdict"] == "overfitting", v
    assert v["numbers"]["train_ratio"] < 0.1
    # the validation curve itself is U-shaped here, which is enough without a held-out set
    assert verdict(history, base)["verdict"] == "overfitting"


def test_validation_from_another_range_is_mismatch():
    torch.manual_seed(0)
    x, xh, xv = torch.rand(64, 1), torch.rand(64, 1), torch.rand(64, 1) + 2  # train/holdout [0,1], val [2,3]
    f = lambda x: x**2  # noqa: E731
    model = _mlp([1, 32, 32, 1])
    history = _train(model, x, f(x), xv, f(xv))
    base = baseline_loss("regression", f(x))
    v = verdict(history, base, holdout={"loss": _mse(model, xh, f(xh))})
    assert v["verdict"] == "mismatch", v
    # without the held-out set it cannot be told from overfitting (the val curve never turned up)
    assert verdict(history, base)["verdict"] == "overfitting_or_mismatch"


def test_nan_or_divergence_is_numerical_failure_and_good_fit_is_ok():
    rows = [
        {"epoch": 1, "step": 5, "split": "train", "loss": 1.0},
        {"epoch": 2, "step": 10, "split": "train", "loss": math.nan},
    ]
    assert verdict(rows, 1.0)["verdict"] == "numerical_failure"
    good = [
        {"epoch": 1, "step": 5, "split": "train", "loss": 0.05},
        {"epoch": 1, "step": 5, "split": "val", "loss": 0.06},
    ]
    assert verdict(good, 1.0, diverged=True)["verdict"] == "numerical_failure"
    v = verdict(good, 1.0)
    assert v["verdict"] == "ok" and v["verdict"] in VERDICTS and "0.05" in v["explanation"]


def test_baselines_are_constant_predictor_losses():
    y = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert baseline_loss("regression", y) == pytest.approx(
        nn.functional.mse_loss(torch.full_like(y, 3.0), y).item()
    )
    labels = torch.tensor([0, 0, 1, 2])
    prior = torch.tensor([0.5, 0.25, 0.25])
    ce = nn.functional.cross_entropy(prior.log().expand(4, 3), labels).item()
    assert baseline_loss("classification", labels) == pytest.approx(ce)
    assert baseline_loss("binary", torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(
        nn.functional.binary_cross_entropy(torch.full((4,), 0.25), torch.tensor([1.0, 0, 0, 0])).item()
    )


def _rows(train_losses, val_losses=None):
    rows = [{"epoch": e, "split": "train", "loss": v} for e, v in enumerate(train_losses, 1)]
    return rows + [{"epoch": e, "split": "val", "loss": v} for e, v in enumerate(val_losses or [], 1)]


HEALTHY = {"flags": {"vanishing": False, "exploding": False, "dead_relu": False}, "messages": []}
VANISHING = {
    "flags": {"vanishing": True, "exploding": False, "dead_relu": False},
    "messages": [
        "vanishing gradients: 1, 3 get gradients 5.9e+04× smaller than later layers, so they barely train."
    ],
}


def test_a_training_loss_above_the_constant_baseline_is_optimization_not_model_bias():
    # lr=1000 on digits: the loss ends 718× the class prior's entropy (ln 10)
    v = verdict(_rows([1900.0, 1653.0]), math.log(10), gradient_health=HEALTHY)
    assert v["verdict"] == "optimization" and "718×" in v["explanation"]
    assert "Lower the learning rate" in v["next_steps"][0]
    # just above the baseline (learned nothing) is optimization too, without the learning-rate advice
    v = verdict(_rows([2.31, 2.309]), 2.302, gradient_health=HEALTHY)
    assert v["verdict"] == "optimization" and "got nowhere" in v["explanation"]
    assert not v["next_steps"][0].startswith("Lower the learning rate")


def test_vanishing_gradients_without_a_shallow_comparison_are_optimization():
    v = verdict(_rows([1.5, 1.4]), 2.302, gradient_health=VANISHING)
    assert v["verdict"] == "optimization" and "vanishing gradients: 1, 3" in v["explanation"]
    # healthy gradients and no comparison: model bias, as before; a shallower model no better: model bias
    assert verdict(_rows([1.5, 1.4]), 2.302, gradient_health=HEALTHY)["verdict"] == "model_bias"
    assert (
        verdict(_rows([1.5, 1.4]), 2.302, shallow={"loss": 1.45}, gradient_health=VANISHING)["verdict"]
        == "model_bias"
    )
