"""Gradient-health flags on nets whose answer is known, and the callback's rows and file."""

import json

import pytest
import torch
from torch import nn

from trainlab.diagnose.gradients import (
    LayerStatsCallback,
    gradient_health,
    gradient_snapshot,
    read_layer_stats,
)
from trainlab.engine.callbacks import CallbackList

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _chain(depth, width, act=None, in_dim=4):
    layers = []
    for i in range(depth):
        layers.append(nn.Linear(in_dim if i == 0 else width, 1 if i == depth - 1 else width))
        if act is not None and i < depth - 1:
            layers.append(act())
    return nn.Sequential(*layers)


def _batch(n=32, d=4):
    return torch.randn(n, d), torch.randn(n, 1)


def test_thirty_layer_sigmoid_net_flags_vanishing_gradients_in_its_first_layers():
    torch.manual_seed(0)
    model = _chain(30, 16, nn.Sigmoid)
    h = gradient_health(gradient_snapshot(model, nn.MSELoss(), _batch()))
    assert h["flags"]["vanishing"] and not h["flags"]["exploding"] and not h["healthy"]
    assert "0" in h["vanishing_layers"]  # the first Linear (module name "0") is named
    assert "58" not in h["vanishing_layers"]  # the last one is not
    assert "vanishing" in h["messages"][0]


def test_linear_chain_with_weights_times_3_flags_exploding_gradients():
    torch.manual_seed(0)
    model = _chain(20, 16)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    h = gradient_health(gradient_snapshot(model, nn.MSELoss(), _batch()))
    assert h["flags"]["exploding"] and not h["flags"]["vanishing"]
    assert len(h["exploding_layers"]) == 20


def test_clean_mlp_raises_no_flag():
    torch.manual_seed(0)
    model = _chain(3, 32, nn.ReLU)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    h = gradient_health(gradient_snapshot(model, nn.MSELoss(), _batch()))
    assert h["healthy"] and not any(h["flags"].values()) and h["messages"] == []
    assert set(h["layers"]) == {"0", "2", "4"}
    assert all(p.grad is None for p in model.parameters()) and model.training  # nothing disturbed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_growth_over_epochs_and_non_finite_gradients_flag_exploding():
    rows = [
        {"epoch": 1, "layer": "fc", "grad_norm": 0.1, "weight_norm": 10.0, "grad_to_weight": 0.01},
        {"epoch": 3, "layer": "fc", "grad_norm": 500.0, "weight_norm": 10.0, "grad_to_weight": 50.0},
    ]
    assert gradient_health(rows)["exploding_layers"] == ["fc"]
    nan_rows = [
        {"epoch": 1, "layer": "fc", "grad_norm": float("nan"), "weight_norm": 1.0, "grad_to_weight": None}
    ]
    assert gradient_health(nan_rows)["flags"]["exploding"]


def test_callback_writes_per_epoch_rows_with_update_ratio_and_dead_units(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].bias[:5] = -100.0  # five of eight hidden units can never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = LayerStatsCallback(tmp_path, every_n_steps=2, track_dead_relu=True)
    cbs = CallbackList([cb])
    cbs.call("on_train_begin", {"model": model, "optimizer": opt, "config": None, "run": None})
    x, y = _batch(16)
    step = 0
    for epoch in (1, 2):
        for _ in range(4):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            cbs.call("on_after_backward", step, {"model": model})
            opt.step()
            step += 1
            cbs.call("on_batch_end", step, {})
        cbs.call("on_epoch_end", epoch, {"epoch": epoch, "step": step})
    cbs.call("on_train_end", {})
    rows = read_layer_stats(tmp_path)
    assert rows == [json.loads(json.dumps(r)) for r in cb.rows]
    weights = [r for r in rows if "weight_norm" in r]
    assert [(r["epoch"], r["layer"]) for r in weights] == [(1, "0"), (1, "2"), (2, "0"), (2, "2")]
    last = weights[-1]
    assert last["grad_norm"] > 0 and last["grad_to_weight"] == pytest.approx(
        last["grad_norm"] / last["weight_norm"]
    )
    assert 0 < last["update_ratio"] < 1
    dead = [r for r in rows if "dead_fraction" in r]
    assert dead and all(r["layer"] == "1" and r["dead_fraction"] >= 5 / 8 for r in dead)
    h = gradient_health(rows)
    assert h["flags"]["dead_relu"] and h["dead_relu_layers"] == ["1"]
    assert model[1]._forward_hooks == {}  # hooks removed at the end
