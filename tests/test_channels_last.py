"""`train.channels_last`: auto turns the channels-last layout on for 2-d conv nets on the CPU when the
model's forward allows it, keeps contiguous tensors otherwise; `true` on a model that cannot take it
is a config error; training in either layout gives the same numbers up to float rounding."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import trainlab
from conftest import cli_in_process, tiny_config
from trainlab.engine.device import resolve_channels_last
from trainlab.errors import ConfigError

CPU = torch.device("cpu")


def conv_net(channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 10)
    )


class ViewNet(nn.Module):
    """The notes' style `x.view(batch, -1)` after a convolution: needs contiguous conv features."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))


def images(n: int = 4, channels: int = 1) -> torch.Tensor:
    return torch.randn(n, channels, 8, 8)


def test_auto_uses_channels_last_for_a_conv_net_on_the_cpu():
    model = conv_net(channels=3)
    assert resolve_channels_last(model, images(channels=3), "auto", CPU)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()  # really converted (with 3 input channels the layouts differ)
    assert model.training  # the trial forward ran in eval mode and put the mode back


def test_auto_leaves_models_without_2d_convolutions_and_non_image_inputs_alone():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert not resolve_channels_last(mlp, images(), "auto", CPU)
    conv1d = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 10))
    assert not resolve_channels_last(conv1d, torch.randn(4, 1, 8), "auto", CPU)
    model = conv_net(channels=3)
    assert not resolve_channels_last(model, images(channels=3), False, CPU)
    assert model[0].weight.is_contiguous()


def test_auto_falls_back_when_the_forward_needs_contiguous_tensors():
    model = ViewNet()
    assert not resolve_channels_last(model, images(), "auto", CPU)
    assert model.conv.weight.is_contiguous()  # converted back
    model(images())  # and it still runs


def test_only_4d_tensors_change_layout():
    class WithVolume(nn.Module):  # a 5-d buffer: Module.to(memory_format=channels_last) would raise
        def __init__(self):
            super().__init__()
            self.conv = conv_net(channels=3)
            self.register_buffer("volume", torch.zeros(1, 1, 2, 2, 2))

        def forward(self, x):
            return self.conv(x)

    model = WithVolume()
    assert resolve_channels_last(model, images(channels=3), "auto", CPU)
    assert model.conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.volume.is_contiguous() and model.training


def test_true_does_not_blame_the_layout_for_a_forward_that_fails_anyway():
    broken = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(5, 10))  # 4*6*6 features, not 5
    assert not resolve_channels_last(broken, images(), True, CPU)  # training reports the real error
    assert broken[0].weight.is_contiguous()


def test_the_trial_moves_no_random_stream():
    class Noisy(nn.Module):  # draws random numbers even in eval mode
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 10)

        def forward(self, x):
            return self.head((self.conv(x) + 0.01 * torch.randn(1)).flatten(1))

    model, x = Noisy(), images(channels=3)
    state = torch.get_rng_state()
    assert resolve_channels_last(model, x, "auto", CPU)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_lazy_model_not_yet_built_is_trainable_after_the_trial():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10)
    )  # uninitialised until a forward
    assert resolve_channels_last(model, images(channels=3), "auto", CPU)  # the trial forward builds it
    model(images(channels=3)).sum().backward()  # no inference tensors left behind by the trial
    assert model[2].weight.grad is not None


def test_true_on_a_model_that_cannot_take_it_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.channels_last: true.*\.view"):
        resolve_channels_last(ViewNet(), images(), True, CPU)


def test_both_layouts_train_to_the_same_numbers(tmp_path):
    histories = {}
    for setting in (False, True):
        cfg = tiny_config(train={"epochs": 2, "device": "cpu", "channels_last": setting})
        cfg["model"] = {"name": "small_cnn"}
        run = trainlab.train(cfg, out=tmp_path / str(setting), quiet=True)
        assert run.summary["channels_last"] is setting
        histories[setting] = run.history_rows
    for a, b in zip(histories[False], histories[True]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)


def test_the_default_example_trains_channels_last_and_says_so(tmp_path, capsys):
    code, _, err = cli_in_process(
        capsys, "train", "--out", str(tmp_path / "run"), "--quiet", "train.epochs=1"
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["channels_last"] is True and summary["threads"] >= 1


def test_cli_refuses_channels_last_true_for_a_view_model_with_exit_2(tmp_path, capsys):
    (tmp_path / "view_net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))\n"
    )
    config = tmp_path / "view.yaml"
    config.write_text(
        "name: view\ndata: {source: digits}\nmodel: {name: 'view_net:Net'}\n"
        "train: {epochs: 1, device: cpu, channels_last: true}\n"
    )
    code, out, err = cli_in_process(capsys, "train", str(config), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2
    assert "train.channels_last" in err and "Traceback" not in err + out
    # auto: the same model trains, in the contiguous layout
    code, _, err = cli_in_process(
        capsys, "train", str(config), "--out", str(tmp_path / "run2"), "--quiet", "train.channels_last=auto"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["channels_last"] is False
