"""`doctor` and `lr_find` on real tiny runs: verdicts, critical-point kinds, summary.json, the plot."""

import json
import textwrap
from pathlib import Path

import pytest

from trainlab.diagnose.doctor import doctor, format_diagnosis, format_lr_find, lr_find, shallower_model
from trainlab.errors import ConfigError
from trainlab.run import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SOURCE = """
import torch
from trainlab.data.base import ArrayDataset, SourceData


def curve(fn="sin3x", n=128, low=-3.0, high=3.0, val_low=None, val_high=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = {"sin3x": lambda x: torch.sin(3 * x), "square": lambda x: x**2}[fn]

    def draw(m, a, b):  # x uniform in [a, b), target f(x)
        x = a + (b - a) * torch.rand(m, 1, generator=g)
        return ArrayDataset(x, f(x)[:, 0])

    if val_low is None:
        return SourceData(train=draw(n, low, high), task="regression")
    # validation from another range; the test split is held out from the training range
    return SourceData(train=draw(n, low, high), val=draw(n // 2, val_low, val_high),
                      test=draw(n // 2, low, high), task="regression", info={"holdout_split": "test"})
"""


@pytest.fixture(autouse=True)
def source_module(tmp_path, monkeypatch):
    (tmp_path / "doctor_curves.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _config(name, model, optimizer, epochs, batch_size=128, **options):
    return {
        "name": name,
        "seed": 0,
        "model": model,
        "optimizer": optimizer,
        "data": {
            "source": "doctor_curves:curve",
            "options": options,
            "batch_size": batch_size,
            "val_fraction": 0.25,
            "test_fraction": 0.0,
        },
        "train": {"epochs": epochs, "device": "cpu"},
    }


def test_linear_model_on_sin_3x_is_model_bias_at_a_minimum(tmp_path):
    out = tmp_path / "bias"
    # full-batch SGD with lr 0.25 converges for this quadratic loss (Hessian eigenvalues ~2 and ~6)
    train(_config("bias", {"name": "linear"}, {"name": "SGD", "lr": 0.25}, epochs=40), out=out, quiet=True)
    d = doctor(out)
    assert d["verdict"] == "model_bias"
    cp = d["critical_point"]
    assert cp["kind"] == "minimum" and cp["weights"] == "last" and 0 < cp["lambda_min"] <= cp["lambda_max"]
    assert d["gradient_health"]["healthy"] and d["gradient_health"]["source"] == "layer_stats.jsonl"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["diagnosis"]["verdict"] == "model_bias" and summary["status"] == "completed"
    text = format_diagnosis(d)
    assert "verdict: model_bias" in text and "critical point: minimum" in text
    if (out / "report.html").exists():
        assert "model_bias" in (out / "report.html").read_text()


def test_validation_from_another_range_is_mismatch_given_a_holdout_from_the_training_range(tmp_path):
    out = tmp_path / "mismatch"
    cfg = _config(
        "mismatch",
        {"name": "mlp", "hidden": [32, 32], "activation": "tanh"},
        {"name": "Adam", "lr": 0.01},
        epochs=60,
        fn="square",
        low=0.0,
        high=1.0,
        val_low=2.0,
        val_high=3.0,
    )
    train(cfg, out=out, quiet=True)
    d = doctor(out)
    assert d["verdict"] == "mismatch", d["explanation"]
    assert d["numbers"]["holdout_loss"] < d["numbers"]["val_loss_best"] / 10


def test_compare_shallow_tells_optimization_from_model_bias(tmp_path):
    out = tmp_path / "deep"
    layers = [{"Linear": [1, 16]}, "Sigmoid"] + [{"Linear": [16, 16]}, "Sigmoid"] * 18 + [{"Linear": [16, 1]}]
    cfg = _config(
        "deep",
        {"name": "sequential", "layers": layers},
        {"name": "SGD", "lr": 0.2},
        epochs=30,
        batch_size=8,
        n=64,
        low=-1.0,
        high=1.0,
    )
    train(cfg, out=out, quiet=True)
    d = doctor(out, compare_shallow=True)
    assert d["verdict"] == "optimization", d["explanation"]
    assert len(d["shallow"]["model"]["layers"]) == 3 and (out / "doctor_shallow" / "summary.json").exists()


def test_shallower_model_configs():
    assert shallower_model({"name": "mlp", "hidden": [64, 32], "activation": "relu"}) == {
        "name": "mlp",
        "hidden": [64],
        "activation": "relu",
    }
    assert shallower_model({"name": "mlp", "hidden": [8]}) == {"name": "linear"}
    seq = {
        "name": "sequential",
        "layers": [{"Linear": [4, 8]}, "ReLU", {"Linear": [8, 8]}, "ReLU", {"Linear": [8, 3]}, "Softmax"],
    }
    assert shallower_model(seq)["layers"] == [{"Linear": [4, 8]}, "ReLU", {"Linear": [8, 3]}, "Softmax"]
    with pytest.raises(ConfigError, match="model.name 'resnet_small'"):
        shallower_model({"name": "resnet_small"})


def test_lr_find_on_a_config_suggests_a_rate_below_divergence_and_saves_the_plot(tmp_path):
    cfg = _config(
        "lrf", {"name": "linear"}, {"name": "SGD", "lr": 0.1}, epochs=1, batch_size=32, low=-1.0, high=1.0
    )
    r = lr_find(cfg, [], out=tmp_path / "lrf")
    assert (tmp_path / "lrf" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert r["stopped_early"] and r["suggestion_valley"] < r["divergence_lr"]
    assert "suggested learning rate" in format_lr_find(r)


@pytest.mark.parametrize("example, trains_with", [("digits_cnn", 3e-3), ("digits_mlp_shallow", 0.05)])
def test_lr_find_on_examples_suggests_near_the_lr_that_trains_them_and_keeps_to_the_run_folder(
    tmp_path, monkeypatch, example, trains_with
):
    """The examples train well with Adam 3e-3 and SGD (momentum 0.9) 0.05; the suggestion is within 3x.
    With runs/<name> holding a finished run, the plot goes into it: no runs/<name>-2 appears."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / example).mkdir(parents=True)
    (tmp_path / "runs" / example / "summary.json").write_text('{"status": "completed"}')
    r = lr_find(EXAMPLES / f"{example}.yaml")
    assert trains_with / 3 < r["suggestion"] < trains_with * 3, format_lr_find(r)
    assert r["plot"] == str(Path("runs") / example / "lr_find.png") and Path(r["plot"]).is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [example]


def test_deep_sigmoid_example_is_optimization_by_default_with_the_gradient_evidence(tmp_path):
    """examples/digits_mlp_deep.yaml stays at chance (its first layers get ~1e-4 of the last ones' gradient):
    plain `doctor` must not call that model bias; the shallower model is cheap, so it is trained unasked."""
    out = tmp_path / "deep"
    train(EXAMPLES / "digits_mlp_deep.yaml", out=out, quiet=True)
    d = doctor(out)
    assert d["verdict"] == "optimization", d["explanation"]
    assert "vanishing gradients" in d["explanation"]
    assert d["shallow"]["automatic"] and d["shallow"]["loss"] < 0.5 * d["numbers"]["train_loss"]
    assert "trained because this run was cheap" in format_diagnosis(d)


def test_lr_1000_run_far_above_the_baseline_is_an_optimization_failure(tmp_path):
    out = tmp_path / "lr1000"
    train(
        EXAMPLES / "digits_mlp_shallow.yaml", {"optimizer.lr": 1000, "train.epochs": 2}, out=out, quiet=True
    )
    d = doctor(out, compare_shallow=False)
    assert d["numbers"]["train_ratio"] > 10 and "shallow" not in d
    assert d["verdict"] == "optimization", d["explanation"]
    assert "Lower the learning rate" in d["next_steps"][0]
