"""Optimizers, parameter groups and LR schedules: every schedule's LR sequence against its closed
form (the math, written out here), resume via state_dict, and the config errors users can cause."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from trainlab.config import OptimizerConfig, SchedulerConfig
from trainlab.engine.monitor import resolve_mode as infer_mode
from trainlab.engine.optim import build_optimizer, build_scheduler
from trainlab.errors import ConfigError
from trainlab.registry import OPTIMIZERS, SCHEDULERS

LR = 0.1


def small_model() -> nn.Sequential:
    # names: 0.weight 0.bias | 1.weight 1.bias (BatchNorm) | 3.weight 3.bias
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def sgd(lr: float = LR, **kw) -> torch.optim.Optimizer:
    return build_optimizer(OptimizerConfig(name="SGD", lr=lr, **kw), small_model())


def schedule(optimizer=None, steps_per_epoch: int = 4, epochs: int = 10, **cfg):
    return build_scheduler(SchedulerConfig(**cfg), optimizer or sgd(), steps_per_epoch, epochs)


def run_epochs(sched, n: int, logs=None) -> list[float]:
    """LRs at the start of epochs 0..n-1 (the loop steps after each epoch)."""
    seen = []
    for _ in range(n):
        seen.append(sched.lr())
        sched.optimizer.step()  # no grads: a no-op that keeps torch's order check quiet
        sched.step_epoch(logs or {})
    return seen


def run_steps(sched, n: int) -> list[float]:
    seen = []
    for _ in range(n):
        seen.append(sched.lr())
        sched.optimizer.step()
        sched.step_batch()
    return seen


# ----------------------------------------------------------------------------- closed forms

CLOSED_FORMS = {
    "step": ({"step_size": 3, "gamma": 0.5}, lambda t: LR * 0.5 ** (t // 3)),
    "multistep": ({"milestones": [2, 5], "gamma": 0.1}, lambda t: LR * 0.1 ** ((t >= 2) + (t >= 5))),
    "exponential": ({"gamma": 0.8}, lambda t: LR * 0.8**t),
    # T_max defaults to the run: 10 epochs
    "cosine": ({}, lambda t: LR * (1 + math.cos(math.pi * t / 10)) / 2),
    "linear": ({}, lambda t: LR * (1 - t / 10)),
    "polynomial": ({"power": 2.0}, lambda t: LR * (1 - t / 10) ** 2),
    "ConstantLR": ({"factor": 0.5, "total_iters": 3}, lambda t: LR * (0.5 if t < 3 else 1.0)),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_epoch_schedules_follow_their_closed_form(name):
    kwargs, formula = CLOSED_FORMS[name]
    sched = schedule(name=name, **kwargs)
    assert sched.interval == "epoch"
    # per-epoch schedules ignore batches
    sched.optimizer.step()
    sched.step_batch()
    assert sched.lr() == pytest.approx(formula(0))
    torch.testing.assert_close(run_epochs(sched, 10), [formula(t) for t in range(10)])


def test_onecycle_steps_per_batch_and_follows_its_phases():
    total, peak, div, final_div = 20, 0.5, 25.0, 1e4
    sched = schedule(sgd(lr=peak), steps_per_epoch=5, epochs=4, name="onecycle")
    assert sched.interval == "step"
    start, end, up = peak / div, peak / div / final_div, 0.3 * total - 1  # phase ends at step 5

    def cos(a, b, pct):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    expected = [
        cos(start, peak, t / up) if t <= up else cos(peak, end, (t - up) / (total - 1 - up))
        for t in range(total)
    ]
    torch.testing.assert_close(run_steps(sched, total), expected)
    sched.step_epoch({})  # per-step schedules ignore epochs
    assert sched.lr() == pytest.approx(expected[-1])
    run_steps(sched, 3)  # past the planned run the LR stays final instead of torch raising
    assert sched.lr() == pytest.approx(expected[-1])
    # plain SGD stays plain: momentum is not cycled in
    assert sched.optimizer.param_groups[0]["momentum"] == 0


def test_onecycle_peaks_at_each_groups_own_lr():
    opt = sgd(lr=0.1, param_groups=[{"params": "0.*", "lr": 1.0}])
    sched = schedule(opt, steps_per_epoch=5, epochs=2, name="onecycle", pct_start=0.5)
    seen = []
    for _ in range(10):
        seen.append(sched.lrs())
        opt.step()
        sched.step_batch()
    assert max(s[0] for s in seen) == pytest.approx(1.0)
    assert max(s[1] for s in seen) == pytest.approx(0.1)


def test_warmup_steps_then_cosine():
    # 3 warmup steps from 0.1*lr, then cosine over the remaining 12 - 3 steps; cosine turns per step
    sched = schedule(steps_per_epoch=4, epochs=3, name="cosine", warmup_steps=3, warmup_start_factor=0.1)
    assert sched.interval == "step"
    warm = [LR * (0.1 + 0.9 * t / 3) for t in range(3)]
    cos = [LR * (1 + math.cos(math.pi * t / 9)) / 2 for t in range(9)]
    torch.testing.assert_close(run_steps(sched, 12), warm + cos)


def test_warmup_epochs_are_converted_to_steps_for_a_per_step_schedule():
    sched = schedule(
        steps_per_epoch=2, epochs=3, name="linear", interval="step", warmup_epochs=1, warmup_start_factor=0.5
    )
    # 2 warmup steps (0.5, 0.75 x lr), then linear decay over 4 steps
    torch.testing.assert_close(run_steps(sched, 6), [LR * f for f in (0.5, 0.75, 1.0, 0.75, 0.5, 0.25)])


def test_warmup_epochs_in_front_of_step_lr_and_none():
    sched = schedule(name="step", step_size=2, gamma=0.1, warmup_epochs=2, warmup_start_factor=0.2)
    torch.testing.assert_close(run_epochs(sched, 6), [LR * f for f in (0.2, 0.6, 1, 1, 0.1, 0.1)])
    flat = schedule(name="none", warmup_epochs=2, warmup_start_factor=0.5)
    torch.testing.assert_close(run_epochs(flat, 5), [LR * f for f in (0.5, 0.75, 1, 1, 1)])
    assert run_steps(schedule(name="none"), 3) == [LR] * 3


# ----------------------------------------------------------------------------- plateau


def test_plateau_reduces_after_patience_and_infers_mode():
    sched = schedule(name="plateau", patience=1, factor=0.5)
    # improving, then flat: the 2nd epoch without improvement (> patience) halves the LR
    seen = [run_epochs(sched, 1, {"val_loss": v})[0] for v in (1.0, 0.5, 0.5, 0.5, 0.5, 0.5)]
    assert seen[:4] == [LR] * 4 and seen[4] == pytest.approx(LR / 2)
    assert sched.lr() == pytest.approx(LR / 4)

    acc = schedule(name="plateau", monitor="val_accuracy", patience=0, factor=0.5)
    for v in (0.5, 0.6, 0.7):  # rising accuracy is improvement (mode max): LR kept
        run_epochs(acc, 1, {"val_accuracy": v})
    assert acc.lr() == pytest.approx(LR)
    run_epochs(acc, 2, {"val_accuracy": 0.7})  # flat: halved twice
    assert acc.lr() == pytest.approx(LR / 4)
    assert (infer_mode("val_loss"), infer_mode("val_mae"), infer_mode("val_accuracy")) == (
        "min",
        "min",
        "max",
    )


def test_plateau_reads_nested_logs_and_names_the_missing_monitor():
    sched = schedule(name="plateau", patience=0, factor=0.5)
    sched.step_epoch({"train": {"loss": 1.0}, "val": {"loss": 1.0}, "epoch": 0})
    sched.step_epoch({"train": {"loss": 1.0}, "val": {"loss": 1.0}, "epoch": 1})
    assert sched.lr() == pytest.approx(LR / 2)
    with pytest.raises(ConfigError, match=r"scheduler\.monitor.*train_loss"):
        sched.step_epoch({"train": {"loss": 1.0}})


def test_plateau_after_warmup_epochs():
    sched = schedule(name="plateau", patience=0, factor=0.5, warmup_epochs=2, warmup_start_factor=0.5)
    seen = run_epochs(sched, 4, {"val_loss": 1.0})
    # warmup 0.5, 0.75, then full lr; the first plateau epoch sets `best`, the next one halves
    torch.testing.assert_close(seen, [LR * 0.5, LR * 0.75, LR, LR])
    assert sched.lr() == pytest.approx(LR / 2)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "cfg, by",
    [
        ({"name": "cosine", "warmup_steps": 5}, "step"),
        ({"name": "onecycle"}, "step"),
        ({"name": "multistep", "milestones": [3, 6], "warmup_epochs": 2}, "epoch"),
        ({"name": "plateau", "patience": 1, "warmup_epochs": 1}, "epoch"),
    ],
)
def test_state_dict_round_trip_continues_the_same_sequence(cfg, by):
    def advance(sched, n):
        losses = iter([1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8] * 3)
        out = []
        for _ in range(n):
            if by == "step":
                out += run_steps(sched, 1)
            else:
                out += run_epochs(sched, 1, {"val_loss": next(losses)})
        return out, losses

    whole = schedule(**cfg)
    expected, _ = advance(whole, 20)

    first = schedule(**cfg)
    advance(first, 8)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # plain types: loads with weights_only
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = schedule(**cfg)  # a fresh optimizer too: the schedule restores the group LRs itself
    resumed.load_state_dict(state)
    if by == "step":
        rest = run_steps(resumed, 12)
    else:  # replay the same monitored values from epoch 8 on
        losses = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8] * 3
        rest = [run_epochs(resumed, 1, {"val_loss": v})[0] for v in losses[8:20]]
    torch.testing.assert_close(rest, expected[8:])


def test_load_state_dict_refuses_another_schedule():
    with pytest.raises(ConfigError, match="scheduler"):
        schedule(name="cosine").load_state_dict(schedule(name="step", step_size=2).state_dict())


# ----------------------------------------------------------------------------- optimizers and groups


def test_param_groups_get_their_own_lr_and_weight_decay_first_match_wins():
    opt = sgd(
        lr=0.1,
        weight_decay=0.01,
        param_groups=[
            {"params": "0.*", "lr": 0.5},
            {"params": ["0.bias", "3.weight"], "weight_decay": 0.2},  # 0.bias was taken above
        ],
    )
    by_name = {g["name"]: g for g in opt.param_groups}
    assert list(by_name) == ["param_groups[0]", "param_groups[1]", "default"]
    assert (by_name["param_groups[0]"]["lr"], by_name["param_groups[0]"]["weight_decay"]) == (0.5, 0.01)
    assert (by_name["param_groups[1]"]["lr"], by_name["param_groups[1]"]["weight_decay"]) == (0.1, 0.2)
    assert [len(by_name[n]["params"]) for n in by_name] == [2, 1, 3]  # 3.weight | 1.weight 1.bias 3.bias
    model = small_model()
    opt = build_optimizer(OptimizerConfig(name="SGD", lr=0.1, param_groups=[{"params": "3"}]), model)
    assert opt.param_groups[0]["params"][0] is model[3].weight  # a bare module path matches below it


def test_no_decay_bias_norm_exempts_biases_and_norm_weights():
    model = small_model()
    cfg = OptimizerConfig(
        name="AdamW",
        lr=0.1,
        weight_decay=0.05,
        no_decay_bias_norm=True,
        param_groups=[{"params": "0.*", "lr": 0.5}],
    )
    opt = build_optimizer(cfg, model)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight), id(model[3].weight)}
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs == {
        "param_groups[0]": (0.5, 0.05),
        "param_groups[0].no_decay": (0.5, 0.0),
        "default": (0.1, 0.05),
        "default.no_decay": (0.1, 0.0),
    }


def test_param_group_matching_nothing_names_the_key_and_lists_parameters():
    with pytest.raises(ConfigError, match=r"optimizer\.param_groups\[1\]\.params.*0\.weight"):
        sgd(param_groups=[{"params": "0.*"}, {"params": "features.*"}])
    with pytest.raises(ConfigError, match=r"param_groups\[1\].*already taken"):
        sgd(param_groups=[{"params": "0.*"}, {"params": "0.weight"}])


def test_optimizer_names_are_case_insensitive_and_cover_torch_optim():
    opt = build_optimizer(OptimizerConfig(name="adamw", lr=0.01, betas=[0.8, 0.9]), small_model())
    assert type(opt) is torch.optim.AdamW and tuple(opt.param_groups[0]["betas"]) == (0.8, 0.9)
    assert type(build_optimizer(OptimizerConfig(name="adafactor"), small_model())) is torch.optim.Adafactor
    for name in OPTIMIZERS.names():  # every registered optimizer builds and steps
        model = small_model()
        opt = build_optimizer(OptimizerConfig(name=name, lr=0.01), model)
        model.train()
        model(torch.randn(4, 4)).sum().backward()
        before = model[0].weight.detach().clone()
        opt.step()
        assert not torch.equal(before, model[0].weight), name


def test_user_optimizer_by_module_attr(tmp_path, monkeypatch):
    (tmp_path / "my_opt.py").write_text(
        "import torch\nclass Plain(torch.optim.SGD):\n    def __init__(self, params, lr, gain=1.0):\n"
        "        super().__init__(params, lr=lr * gain)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    opt = build_optimizer(OptimizerConfig(name="my_opt:Plain", lr=0.1, gain=2.0), small_model())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match=r"optimizer\.gian.*'gain'"):
        build_optimizer(OptimizerConfig(name="my_opt:Plain", lr=0.1, gian=2.0), small_model())


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"name": "Adamm"}, r"optimizer\.name.*'Adam'"),
        ({"name": "sgdd"}, r"optimizer\.name.*'SGD'"),
        ({"name": "SGD", "momentom": 0.9}, r"optimizer\.momentom.*'momentum'"),
        ({"name": "SGD", "momentum": -1.0}, r"optimizer: SGD rejected"),
        ({"name": "Rprop", "no_decay_bias_norm": True}, r"optimizer\.no_decay_bias_norm"),
        ({"name": "LBFGS"}, r"optimizer\.name.*closure"),
    ],
)
def test_optimizer_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_optimizer(OptimizerConfig(**cfg), small_model())


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"name": "cosin"}, r"scheduler\.name.*'cosine'"),
        ({"name": "CosineAnnealing"}, r"scheduler\.name.*'CosineAnnealingLR'"),
        ({"name": "step", "step_sise": 2}, r"scheduler\.step_sise.*'step_size'"),
        ({"name": "step"}, r"scheduler\.step_size.*needs"),
        ({"name": "none", "gamma": 0.1}, r"scheduler\.gamma"),
        ({"name": "step", "step_size": 2, "warmup_steps": 3}, r"scheduler\.warmup_steps.*warmup_epochs"),
        ({"name": "cosine", "warmup_steps": 3, "warmup_epochs": 1}, r"not both"),
        ({"name": "onecycle", "interval": "epoch"}, r"scheduler\.interval"),
        ({"name": "onecycle", "warmup_steps": 2}, r"own warmup"),
        ({"name": "plateau", "interval": "step"}, r"scheduler\.interval"),
        ({"name": "linear", "start_factor": 2.0}, r"scheduler: linear rejected.*factor"),
    ],
)
def test_scheduler_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        schedule(**cfg)


def test_every_registered_scheduler_and_torch_class_names_build():
    required = {"step": {"step_size": 2}, "multistep": {"milestones": [2]}, "exponential": {"gamma": 0.9}}
    for name in SCHEDULERS.names():
        sched = schedule(name=name, **required.get(name, {}))
        assert sched.name == name and sched.lr() > 0
    cyclic = schedule(name="cycliclr", base_lr=0.01, max_lr=0.1, step_size_up=2)
    assert cyclic.name == "CyclicLR" and cyclic.interval == "step"
    torch.testing.assert_close(run_steps(cyclic, 5), [0.01, 0.055, 0.1, 0.055, 0.01])


def test_a_warmup_longer_than_the_run_is_clipped_with_a_warning(capsys):
    # A smoke run of a real config (train.max_steps=3) must not fail on the config's warmup.
    sched = build_scheduler(
        SchedulerConfig(name="cosine", warmup_steps=5), sgd(), steps_per_epoch=10, epochs=5, max_steps=3
    )
    err = capsys.readouterr().err
    assert "scheduler.warmup_steps" in err and "5 steps" in err and "3 steps" in err and "clipped to 2" in err
    lrs = []
    for _ in range(3):
        lrs.append(sched.lr())
        sched.step_batch()
    assert lrs[0] < lrs[1] <= 0.1 + 1e-9  # still a warmup, then the main schedule within the 3 steps


def test_milestones_past_the_end_of_the_run_are_a_warning(capsys):
    build_scheduler(SchedulerConfig(name="multistep", milestones=[2, 50]), sgd(), steps_per_epoch=4, epochs=5)
    assert "scheduler.milestones: [50]" in capsys.readouterr().err


def test_plateau_follows_the_runs_monitor_and_its_direction():
    from trainlab.engine.monitor import Monitor

    sched = build_scheduler(
        SchedulerConfig(name="plateau", patience=0, factor=0.5),
        sgd(),
        4,
        5,
        monitor=Monitor("val_perplexity"),
    )
    assert sched.scheduler.mode == "min"  # perplexity: lower is better, as for best.pt (one rule)
    sched = build_scheduler(
        SchedulerConfig(name="plateau", patience=0, factor=0.5), sgd(), 4, 5, monitor=Monitor("val_accuracy")
    )
    assert sched.scheduler.mode == "max"
    sched.step_epoch({"val_accuracy": 0.5})
    sched.step_epoch({"val_accuracy": 0.4})  # worse: halve
    assert sched.lr() == pytest.approx(0.05)
