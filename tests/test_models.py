"""The model zoo, the YAML `sequential` builder, torchvision and user models, init and shape checks."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from trainlab.config import LossConfig, ModelConfig, load_config
from trainlab.errors import ConfigError
from trainlab.losses import build_loss
from trainlab.models import apply_init, build_model, check_shapes, model_summary
from trainlab.models.build import adapt_classifier
from trainlab.models.zoo import InceptionA, Layers, ResidualBlock
from trainlab.registry import MODELS, add_user_path

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention

# A suitable (tiny) sample shape, task and keyword arguments for every zoo model; a new model must be
# added here.
ZOO_CASES = {
    "linear": ((5,), "regression"),
    "logistic": ((5,), "binary"),
    "sigmoid_net": ((3,), "regression"),
    "mlp": ((1, 4, 4), "classification"),
    "small_cnn": ((1, 8, 8), "classification"),
    "lenet": ((1, 16, 16), "classification"),
    "cnn_classifier": ((3, 16, 16), "classification", {"channels": [8, 16, 32], "fc": [32, 8]}),
    "inception": ((1, 16, 16), "classification"),
    "resnet_small": ((1, 16, 16), "classification"),
    "rnn": ((6, 3), "classification"),
    "lstm": ((6, 3), "classification"),
    "gru": ((1, 12), "classification"),
}
OUTPUT_DIM = {"classification": 3, "binary": 1, "regression": 1}

CIFAR_LAYERS = [
    {"Conv2d": [3, 20, 5]},
    {"MaxPool2d": [2]},
    {"Conv2d": [20, 50, 5]},
    {"MaxPool2d": [2]},
    "Flatten",
    {"Linear": [800, 500]},
    {"Linear": [500, 10]},
]


def tiny_batch(shape, task, n=16):
    x = torch.randn(n, *shape)
    if task == "classification":
        y = torch.arange(n) % 3
    elif task == "binary":
        y = (x.flatten(1).sum(1) > 0).long()
    else:
        y = x.flatten(1).sum(1, keepdim=True) * 0.5
    return x, y


def test_every_registered_model_has_a_case():
    assert set(MODELS.names()) == set(ZOO_CASES)


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_model_trains_and_its_loss_drops(name):
    shape, task, *kwargs = ZOO_CASES[name]
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name=name, **(kwargs[0] if kwargs else {})), shape, OUTPUT_DIM[task], task
    )
    loss_fn = build_loss(LossConfig(), task)
    x, y = tiny_batch(shape, task)
    assert check_shapes(model, x) == (16, OUTPUT_DIM[task])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_fc_sizes_come_from_the_input_shape():
    assert (
        build_model(ModelConfig(name="lenet"), (1, 28, 28), 10).head.in_features == 320
    )  # 20x4x4, the notes' 320
    assert build_model(ModelConfig(name="inception"), (1, 28, 28), 10).head.in_features == 1408  # 88x4x4
    assert build_model(ModelConfig(name="resnet_small"), (1, 28, 28), 10).head.in_features == 512  # 32x4x4
    # Three blocks halve 32x32 three times: 512x4x4, not the notes' printed (five-block) size on 128x128.
    food = build_model(ModelConfig(name="cnn_classifier"), (3, 32, 32), 11)
    assert food.head[0].in_features == 512 * 4 * 4 and food.head[-1].out_features == 11
    pooled = build_model(
        ModelConfig(name="cnn_classifier", adaptive_pool=2, channels=[4, 8, 16], fc=[8]), (3, 64, 64), 11
    )
    assert pooled.head[0].in_features == 16 * 2 * 2


def test_too_small_input_for_lenet_is_a_config_error():
    with pytest.raises(ConfigError, match=r"lenet cannot take samples of shape \(1, 8, 8\).*small_cnn"):
        build_model(ModelConfig(name="lenet"), (1, 8, 8), 10)


def test_inception_block_concatenates_88_channels_and_keeps_the_size():
    block = InceptionA(10, Layers(2))
    assert block(torch.randn(2, 10, 7, 7)).shape == (2, 88, 7, 7)


def test_residual_block_is_relu_of_x_plus_two_convs():
    block = ResidualBlock(4, Layers(2))
    x = torch.randn(2, 4, 5, 5)
    expected = torch.relu(x + block.conv2(torch.relu(block.conv1(x))))
    torch.testing.assert_close(block(x), expected)


def test_sigmoid_net_is_a_constant_plus_a_sum_of_sigmoids():
    model = build_model(ModelConfig(name="sigmoid_net", units=3), (1,), 1, "regression")
    x = torch.linspace(-2, 2, 5).reshape(5, 1)
    w, b = model.hidden.weight, model.hidden.bias
    c, b0 = model.out.weight, model.out.bias
    torch.testing.assert_close(model(x), b0 + torch.sigmoid(x @ w.T + b) @ c.T)
    assert isinstance(build_model(ModelConfig(name="sigmoid_net", activation="relu"), (1,), 1).act, nn.ReLU)


def test_mlp_options():
    model = build_model(
        ModelConfig(name="mlp", hidden=[6, 4], activation="sigmoid", dropout=0.1, batch_norm=True), (8,), 1
    )
    kinds = [type(m).__name__ for m in model]
    assert kinds == [
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Dropout",
        "Linear",
    ]
    with pytest.raises(
        ConfigError, match=r"model.activation: unknown activation 'rellu' \(did you mean 'relu'"
    ):
        build_model(ModelConfig(name="mlp", activation="rellu"), (8,), 1)


def test_recurrent_models_read_one_channel_signals_as_steps_of_one_feature():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="gru", hidden_size=5), (1, 40), 10)  # mnist1d: (B, 1, 40)
    assert model.rnn.input_size == 1
    x = torch.randn(2, 1, 40)
    out, _ = model.rnn(x.transpose(1, 2))  # 40 steps of 1 feature
    torch.testing.assert_close(model(x), model.fc(out[:, -1]))
    rows = build_model(ModelConfig(name="lstm", bidirectional=True, num_layers=2), (1, 28, 28), 10)
    assert rows.rnn.input_size == 28 and rows(torch.randn(2, 1, 28, 28)).shape == (
        2,
        10,
    )  # 28 rows of 28 pixels


@pytest.mark.parametrize("shape", [(1, 40), (40,), (784,)])
@pytest.mark.parametrize("name", ["mlp", "small_cnn", "lenet", "lstm"])
def test_one_channel_and_flat_inputs_fit_every_kind_of_model(name, shape):
    model = build_model(ModelConfig(name=name), shape, 10)
    assert check_shapes(model, torch.randn(3, *shape)) == (3, 10)
    if name == "lenet":  # a square number of features is an image, others a 1-d signal
        assert isinstance(model.features[0], nn.Conv2d if shape == (784,) else nn.Conv1d)


def test_build_model_accepts_a_data_bundle():
    from trainlab.data.base import DataBundle

    bundle = DataBundle(train=None, val=None, test=None, task="binary", input_shape=(6,), output_dim=1)
    model = build_model(ModelConfig(name="mlp", hidden=[4]), bundle)
    assert model(torch.zeros(2, 6)).shape == (2, 1)


def test_auto_picks_by_the_rank_of_a_sample():
    assert type(build_model(ModelConfig(), (1, 8, 8), 10)).__name__ == "SmallCNN"
    assert isinstance(build_model(ModelConfig(), (20, 3), 10).rnn, nn.LSTM)
    assert isinstance(build_model(ModelConfig(), (4,), 1), nn.Sequential)


def test_sequential_yaml_equals_the_hand_built_model():
    cfg = load_config(
        {
            "model": {
                "name": "sequential",
                "layers": [
                    {"Conv2d": [1, 4, 3]},
                    "ReLU",
                    {"MaxPool2d": [2]},
                    {"Flatten": {"start_dim": 1}},
                    {"Linear": [36, 8]},
                    {"Dropout": {"p": 0.5}},
                    {"Linear": [8, 3]},
                ],
            }
        }
    )
    torch.manual_seed(0)
    built = build_model(cfg.model, (1, 8, 8), 3)
    torch.manual_seed(0)
    hand = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(start_dim=1),
        nn.Linear(36, 8),
        nn.Dropout(p=0.5),
        nn.Linear(8, 3),
    )
    assert [p.shape for p in built.parameters()] == [p.shape for p in hand.parameters()]
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(built.eval()(x), hand.eval()(x))


def test_sequential_lazy_layers_are_materialised_from_the_data():
    model = build_model(
        ModelConfig(name="sequential", layers=["Flatten", {"LazyLinear": [7]}, "ReLU", {"LazyLinear": [3]}]),
        (2, 4, 4),
        3,
    )
    assert model[1].weight.shape == (7, 32) and model[3].weight.shape == (3, 7)
    assert model.training


def test_sequential_refuses_stray_keywords_and_empty_layers():
    with pytest.raises(ConfigError, match="model.hidden: `sequential` takes only"):
        build_model(ModelConfig(name="sequential", layers=["Flatten"], hidden=[3]), (4,), 1)
    with pytest.raises(ConfigError, match="model.layers: `model.name: sequential` needs a list"):
        build_model(ModelConfig(name="sequential"), (4,), 1)


def test_the_notes_cifar_sequential_on_32x32_names_the_layer_and_both_shapes():
    model = build_model(ModelConfig(name="sequential", layers=CIFAR_LAYERS), (3, 32, 32), 10)
    with pytest.raises(ConfigError) as err:
        check_shapes(model, torch.zeros(4, 3, 32, 32))
    msg = str(err.value)
    assert (
        "model.layers.5 (Linear) expects 800 input features, "
        "got 1250 from input of shape (4, 50, 5, 5) flattened" in msg
    )
    assert "\n" not in msg
    assert model.training  # the mode is restored after the dry run
    assert check_shapes(model, torch.zeros(4, 3, 28, 28), output_dim=10) == (
        4,
        10,
    )  # the notes' 28x28 crops fit


def test_check_shapes_explains_channels_and_output_size():
    lenet = build_model(ModelConfig(name="lenet"), (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"model.features.0 \(Conv2d\) expects 1 input channels, got 3"):
        check_shapes(lenet, torch.zeros(2, 3, 28, 28))
    with pytest.raises(ConfigError, match=r"output has shape \(2, 10\) but the data needs 5 outputs"):
        check_shapes(lenet, torch.zeros(2, 1, 28, 28), output_dim=5)


def test_bad_model_keyword_and_name_suggest_the_right_one():
    with pytest.raises(ConfigError, match=r"model.hiden: .*\(did you mean 'hidden'\?\)"):
        build_model(ModelConfig(name="mlp", hiden=[4]), (4,), 1)
    with pytest.raises(ConfigError, match=r"unknown model 'mpl' \(did you mean 'mlp'"):
        build_model(ModelConfig(name="mpl"), (4,), 1)


def test_init_schemes_by_layer_type():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.Tanh(), nn.Conv2d(64, 64, 3), nn.BatchNorm2d(4))
    apply_init(
        model,
        {
            "Linear": {"scheme": "xavier_uniform", "nonlinearity": "tanh"},
            "Conv2d": {"scheme": "kaiming_normal", "nonlinearity": "relu"},
            "bias": "zeros",
        },
    )
    linear, conv = model[0], model[2]
    assert linear.bias.abs().sum() == 0 and conv.bias.abs().sum() == 0
    bound = 5 / 3 * math.sqrt(6 / (400 + 300))  # calculate_gain("tanh") = 5/3
    assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.95 * bound
    assert abs(linear.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    assert abs(conv.weight.std().item() - math.sqrt(2 / (64 * 9))) < 0.005  # kaiming: sqrt(2 / fan_in)
    assert torch.equal(model[3].weight, torch.ones(4))  # norm layers untouched


def test_init_string_from_the_config_touches_only_weight_matrices():
    model = build_model(
        ModelConfig(name="mlp", hidden=[200], batch_norm=True, init="xavier_normal"), (300,), 1
    )
    std = model[1].weight.std().item()
    assert abs(std - math.sqrt(2 / 500)) < 0.005
    assert torch.equal(model[2].weight, torch.ones(200))  # BatchNorm1d weight is 1-d: left alone


def test_bad_init_names_are_config_errors():
    model = nn.Linear(3, 2)
    with pytest.raises(
        ConfigError, match=r"model.init: unknown init scheme 'xavier_unifrom' \(did you mean 'xavier_uniform'"
    ):
        apply_init(model, "xavier_unifrom")
    with pytest.raises(ConfigError, match=r"model.init.Lineer: unknown layer type .*did you mean 'Linear'"):
        apply_init(model, {"Lineer": "zeros"})
    with pytest.raises(ConfigError, match=r"model.init.bias: xavier_uniform cannot initialise"):
        apply_init(model, {"bias": "xavier_uniform"})
    with pytest.raises(
        ConfigError,
        match=r"model.init.Linear.nonlinearity: unknown nonlinearity 'relux' \(did you mean 'relu'",
    ):
        apply_init(model, {"Linear": {"scheme": "xavier_normal", "nonlinearity": "relux"}})
    with pytest.raises(ConfigError, match=r"model.init.Linear.mod: .*\(did you mean 'mode'"):
        apply_init(model, {"Linear": {"scheme": "kaiming_normal", "mod": "fan_out"}})


def test_torchvision_model_adapts_channels_and_classes():
    model = build_model(ModelConfig(name="torchvision:resnet18"), (1, 32, 32), 3)
    assert model.conv1.weight.shape == (64, 1, 7, 7) and model.fc.out_features == 3
    assert check_shapes(model, torch.zeros(2, 1, 32, 32)) == (2, 3)
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet181' \(did you mean 'resnet18'"):
        build_model(ModelConfig(name="torchvision:resnet181"), (3, 32, 32), 3)
    with pytest.raises(ConfigError, match=r"model.zero_init_residul: .*\(did you mean 'zero_init_residual'"):
        build_model(ModelConfig(name="torchvision:resnet18", zero_init_residul=True), (3, 32, 32), 3)
    pretrained_shape = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 1000)
    )  # a head built for ImageNet's 1000 classes
    adapt_classifier(pretrained_shape, 7)
    assert pretrained_shape[1].out_features == 7 and pretrained_shape[1].in_features == 4


def test_user_module_gets_sizes_from_the_data(tmp_path):
    (tmp_path / "tl_user_models.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, in_features, num_classes, width=8):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), "
        "nn.Linear(width, num_classes))\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n"
    )
    add_user_path(tmp_path)
    try:
        model = build_model(ModelConfig(name="tl_user_models:Net", width=5), (2, 3, 3), 4)
        assert model.body[1].weight.shape == (5, 18) and model.body[3].out_features == 4
        with pytest.raises(ConfigError, match=r"model.widht: .*\(did you mean 'width'"):
            build_model(ModelConfig(name="tl_user_models:Net", widht=5), (2, 3, 3), 4)
    finally:
        sys.modules.pop("tl_user_models", None)


def test_model_summary_lists_layers_shapes_and_parameters():
    model = build_model(ModelConfig(name="lenet"), (1, 28, 28), 10)
    text = model_summary(model, (1, 28, 28))
    assert "Conv2d" in text and "[1, 20, 4, 4]" in text and "Total params: 8,490" in text
    assert "Units." not in text and "Total mult-adds (M): " in text  # torchinfo's enum, written as its value
    assert model.training


def test_small_cnn_reaches_97_percent_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="small_cnn"), (1, 8, 8), 10)
    loss_fn = build_loss(LossConfig(), "classification")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for index in torch.randperm(len(x_train)).split(32):
            optimizer.zero_grad()
            loss_fn(model(x_train[index]), y_train[index]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.97
