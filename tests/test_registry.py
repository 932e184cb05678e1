"""The registries (trainlab/registry.py): every registered dataset, model, loss, optimizer, scheduler and
metric builds and works; unknown names are config errors with the closest names; `module:attr`
imports user code from the config's folder and the working directory; `trainlab list` shows it all."""

from __future__ import annotations

import math
import uuid

import pytest
import torch
from torch import nn

import trainlab
from conftest import cli_in_process, tiny_config
from trainlab.config import LossConfig, OptimizerConfig, SchedulerConfig, validate
from trainlab.errors import ConfigError
from trainlab.registry import DATASETS, KINDS, LOSSES, METRICS, MODELS, OPTIMIZERS, SCHEDULERS, load_builtins

load_builtins()

# Sources that read files (data.root / data.path): without them they must say which key is missing.
FILE_SOURCES = {
    "cifar10": "data.root",
    "cifar100": "data.root",
    "fashion_mnist": "data.root",
    "kmnist": "data.root",
    "mnist": "data.root",
    "image_folder": "data.root",
    "csv": "data.path",
}
SMALL = {"mnist1d": {"num_samples": 200}}  # the generator's default (5000 sequences) takes seconds


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_builds(name):
    from trainlab.data import build_data
    from trainlab.data.base import TASKS

    config = validate({"data": {"source": name, "options": SMALL.get(name, {})}})
    if name in FILE_SOURCES:
        with pytest.raises(ConfigError, match=FILE_SOURCES[name]):
            build_data(config)
        return
    bundle = build_data(config)
    assert bundle.task in TASKS
    assert len(bundle.train) > 0 and len(bundle.test) > 0
    x, y = bundle.train[0]
    assert tuple(x.shape) == tuple(bundle.input_shape)
    if bundle.task == "classification":
        assert bundle.output_dim >= 2 and 0 <= int(y) < bundle.output_dim


def model_input_shape(name: str) -> tuple[int, ...]:
    if name in ("rnn", "lstm", "gru"):
        return (20, 3)  # (T, F) sequences
    if name in ("linear", "logistic", "mlp", "sigmoid_net"):
        return (6,)
    if name == "small_cnn":
        return (1, 8, 8)
    return (3, 32, 32)  # images big enough for every conv net of the zoo


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_and_maps_a_batch_to_outputs(name):
    from trainlab.config import ModelConfig
    from trainlab.models import build_model

    shape = model_input_shape(name)
    output_dim = 1 if name == "logistic" else 5
    model = build_model(
        ModelConfig(name=name), shape, output_dim, "binary" if output_dim == 1 else "classification"
    )
    assert isinstance(model, nn.Module)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape in ((2, output_dim), (2,) if output_dim == 1 else (2, output_dim))


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_builds_and_gives_a_finite_scalar(name):
    from trainlab.losses import ADAPT, TASKS, build_loss

    task = TASKS[ADAPT[name]][0] if name in ADAPT else "classification"
    loss_fn = build_loss(LossConfig(name=name), task)
    torch.manual_seed(0)
    output = torch.rand(4, 3, requires_grad=True)  # in (0, 1): valid probabilities for BCELoss too
    target = torch.tensor([0, 2, 1, 2])  # class indices, the loader's classification targets
    loss = loss_fn(output, target)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_and_steps(name):
    from trainlab.engine.optim import build_optimizer

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(OptimizerConfig(name=name, lr=0.01), model)
    assert type(optimizer).__name__ == name
    model(torch.randn(8, 3)).pow(2).mean().backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


SCHEDULER_ARGS = {"step": {"step_size": 1}, "multistep": {"milestones": [1]}, "exponential": {"gamma": 0.5}}


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_builds_and_steps(name):
    from trainlab.engine.optim import build_scheduler

    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = build_scheduler(
        SchedulerConfig(name=name, **SCHEDULER_ARGS.get(name, {})), optimizer, steps_per_epoch=4, epochs=3
    )
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(2):  # two epochs of the loop's calls
        for _ in range(4):
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch({"val_loss": 1.0})  # a constant val loss: plateau sees no improvement
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(lr > 0 and math.isfinite(lr) for lr in lrs)
    if name == "none":
        assert lrs == [0.1, 0.1, 0.1]
    elif name != "plateau":  # plateau waits `patience` (10) epochs
        assert lrs[-1] != pytest.approx(0.1), lrs


def perfect_batch(task: str) -> tuple[torch.Tensor, torch.Tensor, int | None, int]:
    """Model outputs that predict their targets exactly, as (output, target, num_classes, output_dim)."""
    if task == "classification":
        target = torch.tensor([0, 1, 2, 0, 1, 2])
        return torch.eye(3)[target] * 10, target, 3, 3
    if task == "binary":
        target = torch.tensor([0, 1, 0, 1, 1, 0])
        return (target.float() * 20 - 10).unsqueeze(1), target, 2, 1
    target = torch.tensor([0.5, -1.0, 2.0, 3.0, 0.0, 1.5])
    return target.unsqueeze(1).clone(), target, None, 1


PERFECT = {
    "accuracy": 1.0,
    "f1": 1.0,
    "precision": 1.0,
    "recall": 1.0,
    "auroc": 1.0,
    "mse": 0.0,
    "mae": 0.0,
    "rmse": 0.0,
    "r2": 1.0,
}


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_builds_for_its_tasks_and_scores_a_perfect_prediction(name):
    from trainlab.metrics import TaskMetrics

    tasks = [t for t in ("classification", "binary", "regression") if _supports(name, t)]
    assert tasks, f"metric {name} supports no task"
    for task in tasks:
        output, target, num_classes, output_dim = perfect_batch(task)
        metrics = TaskMetrics(task, num_classes, output_dim, [name])
        metrics.update(output, target)
        assert metrics.compute()[name] == pytest.approx(PERFECT[name], abs=1e-6), (name, task)


def _supports(name: str, task: str) -> bool:
    try:
        METRICS.get(name)(task, 3, 1)
        return True
    except ConfigError:
        return False


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    "registry, typo, meant",
    [
        (DATASETS, "digts", "digits"),
        (MODELS, "smal_cnn", "small_cnn"),
        (LOSSES, "CrossEntropyLos", "CrossEntropyLoss"),
        (OPTIMIZERS, "Adamm", "Adam"),
        (SCHEDULERS, "cosin", "cosine"),
        (METRICS, "acuracy", "accuracy"),
    ],
)
def test_unknown_names_are_config_errors_with_the_closest_name(registry, typo, meant):
    with pytest.raises(ConfigError) as e:
        registry.get(typo, "some.key")
    message = str(e.value)
    assert "some.key" in message and repr(typo) in message and f"did you mean {meant!r}" in message


def test_unknown_names_in_a_config_name_the_key(tmp_path):
    for overrides, key, meant in [
        ({"model.name": "mpl"}, "model.name", "mlp"),
        ({"optimizer.name": "sgdd"}, "optimizer.name", "SGD"),
        ({"metrics": ["acuracy"]}, "metrics[0]", "accuracy"),
    ]:
        with pytest.raises(ConfigError) as e:
            trainlab.train(tiny_config(), overrides, out=tmp_path / key, quiet=True)
        assert key in str(e.value) and meant in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- user code

USER_CODE = '''
import torch
from torch import nn


class Net(nn.Module):
    """a user's model"""

    def __init__(self, in_features, num_classes, width=8):
        super().__init__()
        self.width = width
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes)
        )

    def forward(self, x):
        return self.body(x)


def half_cross_entropy(output, target):
    return 0.5 * nn.functional.cross_entropy(output, target)
'''


def test_module_attr_imports_user_code_from_the_config_folder(tmp_path, monkeypatch, no_report):
    module = f"user_net_{uuid.uuid4().hex[:8]}"  # a fresh module name: sys.modules caches imports
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / f"{module}.py").write_text(USER_CODE)
    (folder / "run.yaml").write_text(
        "name: user\ndata: {source: iris, batch_size: 16}\n"
        f"model: {{name: '{module}:Net', width: 12}}\n"
        f"loss: {{name: '{module}:half_cross_entropy'}}\n"
        "train: {epochs: 1, device: cpu}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the config's folder
    run = trainlab.train(str(folder / "run.yaml"), out=tmp_path / "run", quiet=True)
    assert type(run.model).__name__ == "Net" and type(run.model).__module__ == module
    assert run.model.width == 12 and run.model.body[1].in_features == 4  # iris: 4 features, 3 classes
    assert run.model.body[3].out_features == 3
    assert run.status == "completed" and math.isfinite(run.final["test"]["loss"])


def test_module_attr_imports_from_the_working_directory_and_reports_bad_specs(tmp_path, monkeypatch):
    module = f"cwd_net_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    assert MODELS.get(f"{module}:Net").__name__ == "Net"
    with pytest.raises(ConfigError, match=r"model\.name.*did you mean 'Net'"):
        MODELS.get(f"{module}:Nett", "model.name")
    with pytest.raises(ConfigError, match=r"model\.name.*no_such_module"):
        MODELS.get("no_such_module:Net", "model.name")


# ----------------------------------------------------------------------------- trainlab list


def test_list_prints_every_kind_with_names_and_descriptions(capsys):
    code, out, err = cli_in_process(capsys, "list")
    assert code == 0, err
    for kind, registry in KINDS.items():
        assert f"{kind}:" in out
        for entry in registry.entries():
            line = next((ln for ln in out.splitlines() if ln.split()[:1] == [entry.name]), None)
            assert line is not None, f"{kind}: {entry.name} not listed"
            assert len(line.split(None, 1)) == 2, f"{entry.name} has no description"


def test_list_models_prints_only_models(capsys):
    code, out, err = cli_in_process(capsys, "list", "models")
    assert code == 0, err
    first_words = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert set(MODELS.names()) <= set(first_words)
    assert not set(first_words) & set(OPTIMIZERS.names() + DATASETS.names())  # only the models
    assert "datasets:" not in out
    code, _, err = cli_in_process(capsys, "list", "modles")
    assert code == 2 and "modles" in err
