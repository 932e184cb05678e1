"""Losses: `auto` by task, any torch.nn loss by name, target adaptation, and the refused losses."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import LossConfig
from trainlab.errors import ConfigError
from trainlab.losses import ADAPT, REFUSED, _loss_classes, build_loss
from trainlab.registry import LOSSES, add_user_path


def loss(name, task="classification", **kwargs):
    return build_loss(LossConfig(name=name, **kwargs), task)


def test_the_notes_l1_and_mse_values():
    prediction, truth = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0])
    assert loss("L1Loss", "regression")(prediction, truth).item() == pytest.approx(0.6667, abs=1e-4)
    assert loss("MSELoss", "regression")(prediction, truth).item() == pytest.approx(1.3333, abs=1e-4)


@pytest.mark.parametrize(
    ("task", "cls"),
    [("classification", nn.CrossEntropyLoss), ("binary", nn.BCEWithLogitsLoss), ("regression", nn.MSELoss)],
)
def test_auto_picks_the_loss_of_the_task(task, cls):
    assert isinstance(loss("auto", task).criterion, cls)


def test_names_aliases_and_suggestions():
    assert isinstance(loss("mse", "regression").criterion, nn.MSELoss)
    assert isinstance(loss("cross_entropy").criterion, nn.CrossEntropyLoss)
    assert isinstance(loss("bce_with_logits", "binary").criterion, nn.BCEWithLogitsLoss)
    with pytest.raises(ConfigError, match=r"unknown loss 'MSELos' \(did you mean 'MSELoss'"):
        loss("MSELos", "regression")
    with pytest.raises(ConfigError, match=r"loss.label_smoothin: .*\(did you mean 'label_smoothing'"):
        loss("CrossEntropyLoss", label_smoothin=0.1)
    with pytest.raises(ConfigError, match=r"loss.reduction: 'meen' is not a reduction \(did you mean 'mean'"):
        loss("CrossEntropyLoss", reduction="meen")


def test_every_torch_loss_is_either_adapted_or_refused():
    assert set(_loss_classes()) == set(ADAPT) | set(REFUSED)
    assert set(ADAPT) <= set(LOSSES.names())


def test_cross_entropy_takes_class_indices_in_any_dtype_and_shape():
    output, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    expected = F.cross_entropy(output, target)
    ce = loss("CrossEntropyLoss")
    torch.testing.assert_close(ce(output, target.float().reshape(4, 1)), expected)
    probabilities = F.one_hot(target, 3).float()  # class probabilities pass through
    torch.testing.assert_close(ce(output, probabilities), expected)
    weighted = loss("CrossEntropyLoss", weight=[1.0, 2.0, 3.0])
    assert isinstance(weighted.criterion.weight, torch.Tensor)
    torch.testing.assert_close(
        weighted(output, target), F.cross_entropy(output, target, weight=torch.tensor([1.0, 2.0, 3.0]))
    )


def test_nll_and_multi_margin_take_long_indices():
    output, target = torch.randn(4, 3), torch.tensor([[0.0], [2.0], [1.0], [2.0]])
    log_probs = F.log_softmax(output, 1)
    torch.testing.assert_close(
        loss("NLLLoss")(log_probs, target), F.nll_loss(log_probs, target.long().squeeze(1))
    )
    torch.testing.assert_close(
        loss("MultiMarginLoss")(output, target), F.multi_margin_loss(output, target.long().squeeze(1))
    )


def test_multi_label_margin_gets_the_class_then_minus_ones():
    output, target = torch.randn(2, 4), torch.tensor([3, 1])
    rows = torch.tensor([[3, -1, -1, -1], [1, -1, -1, -1]])
    torch.testing.assert_close(
        loss("MultiLabelMarginLoss")(output, target), F.multilabel_margin_loss(output, rows)
    )


def test_bce_targets_become_floats_of_the_output_shape():
    output, target = torch.randn(5, 1), torch.tensor([0, 1, 1, 0, 1])
    expected = F.binary_cross_entropy_with_logits(output, target.float().reshape(5, 1))
    torch.testing.assert_close(loss("BCEWithLogitsLoss", "binary")(output, target), expected)
    torch.testing.assert_close(loss("BCELoss", "binary")(torch.sigmoid(output), target), expected)
    pos = loss("BCEWithLogitsLoss", "binary", pos_weight=3.0)
    torch.testing.assert_close(
        pos(output, target),
        F.binary_cross_entropy_with_logits(
            output, target.float().reshape(5, 1), pos_weight=torch.tensor([3.0])
        ),
    )
    flat = torch.randn(5)  # a (B,) output from a user's model works too
    torch.testing.assert_close(
        loss("BCEWithLogitsLoss", "binary")(flat, target),
        F.binary_cross_entropy_with_logits(flat, target.float()),
    )


def test_bce_on_classes_uses_one_hot_rows():
    output, target = torch.randn(3, 4), torch.tensor([0, 3, 1])
    one_hot = F.one_hot(target, 4).float()
    torch.testing.assert_close(
        loss("BCEWithLogitsLoss")(output, target), F.binary_cross_entropy_with_logits(output, one_hot)
    )
    torch.testing.assert_close(
        loss("MultiLabelSoftMarginLoss")(output, target), F.multilabel_soft_margin_loss(output, one_hot)
    )


def test_soft_margin_turns_zero_labels_into_minus_one():
    output, target = torch.randn(4, 1), torch.tensor([0, 1, 0, 1])
    signs = torch.tensor([[-1.0], [1.0], [-1.0], [1.0]])
    torch.testing.assert_close(
        loss("SoftMarginLoss", "binary")(output, target), F.soft_margin_loss(output, signs)
    )


@pytest.mark.parametrize("name", ["MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "PoissonNLLLoss"])
def test_regression_losses_reshape_the_output_instead_of_broadcasting(name):
    output, target = torch.randn(6, 1), torch.randn(6).abs()
    fn = getattr(nn, name)()
    adapted = loss(name, "regression")(output, target)
    torch.testing.assert_close(adapted, fn(output.reshape(6), target))
    if name == "MSELoss":  # torch alone would broadcast (6, 1) against (6,) into (6, 6)
        with pytest.warns(UserWarning):
            assert not torch.allclose(fn(output, target), adapted)


def test_regression_loss_on_classes_uses_one_hot_and_a_wrong_width_is_an_error():
    output, target = torch.randn(3, 4), torch.tensor([0, 3, 1])
    torch.testing.assert_close(
        loss("MSELoss")(output, target), F.mse_loss(output, F.one_hot(target, 4).float())
    )
    with pytest.raises(ConfigError, match=r"output has shape \(3, 2\) but the target has shape \(3, 3\)"):
        loss("MSELoss", "regression")(torch.randn(3, 2), torch.randn(3, 3))


def test_kl_divergence_reads_logits_and_equals_cross_entropy_on_hard_labels():
    output, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    kl = loss("KLDivLoss")
    assert kl.criterion.reduction == "batchmean"
    torch.testing.assert_close(kl(output, target), F.cross_entropy(output, target))  # entropy of one-hot is 0
    soft = torch.softmax(torch.randn(4, 3), 1)
    expected = F.kl_div(F.log_softmax(output, 1), soft, reduction="batchmean")
    torch.testing.assert_close(kl(output, soft), expected)
    logit, label = torch.randn(5, 1), torch.tensor([1, 0, 0, 1, 1])
    torch.testing.assert_close(
        loss("KLDivLoss", "binary")(logit, label),
        F.binary_cross_entropy_with_logits(logit.reshape(5), label.float()),
    )


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_losses_without_a_prediction_target_pair_are_refused_with_the_way_out(name):
    with pytest.raises(ConfigError) as err:
        loss(name)
    msg = str(err.value)
    assert name in msg and "module:attr" in msg and REFUSED[name] in msg


def test_losses_that_do_not_fit_the_task_say_what_to_use():
    with pytest.raises(
        ConfigError, match=r"CrossEntropyLoss needs classification targets.*BCEWithLogitsLoss"
    ):
        loss("CrossEntropyLoss", "binary")
    with pytest.raises(ConfigError, match=r"NLLLoss needs classification targets.*MSELoss"):
        loss("NLLLoss", "regression")


@pytest.mark.parametrize("name", sorted(ADAPT))
def test_every_adapted_loss_trains_a_tiny_model(name):
    task = {
        "class_index": "classification",
        "label_list": "classification",
        "distribution": "classification",
        "value": "regression",
    }.get(ADAPT[name], "binary")
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    if task == "classification":
        target, width = x[:, :3].argmax(1), 3
    elif task == "binary":
        target, width = (x[:, 0] > 0).long(), 1
    else:
        target, width = x[:, 0].abs() + 0.5, 1
    model = nn.Sequential(
        nn.Linear(4, width),
        nn.LogSoftmax(1) if name == "NLLLoss" else nn.Sigmoid() if name == "BCELoss" else nn.Identity(),
    )
    fn = loss(name, task)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = fn(model(x), target).item()
    for _ in range(20):
        optimizer.zero_grad()
        fn(model(x), target).backward()
        optimizer.step()
    assert fn(model(x), target).item() < first


def test_user_loss_function_gets_raw_inputs_and_its_keywords(tmp_path):
    (tmp_path / "tl_user_losses.py").write_text(
        "def scaled_l1(output, target, scale=1.0):\n    return scale * (output - target).abs().mean()\n"
    )
    add_user_path(tmp_path)
    try:
        fn = loss("tl_user_losses:scaled_l1", "regression", scale=2.0)
        assert isinstance(fn, nn.Module)
        assert fn(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0])).item() == pytest.approx(4 / 3)
        with pytest.raises(ConfigError, match=r"loss.scal: .*\(did you mean 'scale'"):
            loss("tl_user_losses:scaled_l1", "regression", scal=2.0)
    finally:
        sys.modules.pop("tl_user_losses", None)
