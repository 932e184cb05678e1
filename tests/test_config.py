"""Config schema, overrides and the errors a user sees (exit 2, key named, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainlab.config import apply_overrides, load_config, parse_override
from trainlab.errors import ConfigError

TRAINLAB = [sys.executable, "-m", "trainlab"]


def test_overrides_are_parsed_as_yaml():
    assert parse_override("model.hidden=[64,32]") == (["model", "hidden"], [64, 32])
    assert parse_override("optimizer.lr=1e-3") == (["optimizer", "lr"], 1e-3)
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("data.shuffle=false") == (["data", "shuffle"], False)
    assert parse_override("name=my run") == (["name"], "my run")
    raw = apply_overrides({"optimizer": "SGD"}, ["optimizer.lr=0.1", "optimizer.momentum=0.5"])
    assert raw == {"optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.5}}


def test_defaults_live_in_one_place_and_components_keep_their_kwargs(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "data: {source: iris}\nmodel: {name: mlp, hidden: [6, 4]}\n"
        "optimizer: {name: SGD, lr: 0.01, momentum: 0.5}\n"
    )
    cfg = load_config(path, ["train.epochs=3"])
    assert cfg.name == "cfg"  # from the file name
    assert cfg.train.epochs == 3 and cfg.data.batch_size == 64
    assert cfg.model.kwargs() == {"hidden": [6, 4]}
    assert cfg.optimizer.kwargs() == {"lr": 0.01, "momentum": 0.5}
    assert load_config(None).data.source == "digits"  # the built-in default example


BAD = [
    # (overrides or YAML text, words the message must contain)
    (["train.epohcs=3"], ["train.epohcs", "did you mean", "epochs"]),
    (["trian.epochs=3"], ["trian", "did you mean", "train"]),
    (["data.batchsize=8"], ["data.batchsize", "batch_size"]),
    (["train.epochs=0"], ["train.epochs", "0"]),
    (["optimizer.lr=0"], ["optimizer.lr", "0"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr", "-0.1"]),
    (["data.batch_size=0"], ["data.batch_size", "0"]),
    (["data.val_fraction=1.0"], ["data.val_fraction", "1.0"]),
    (["data.test_fraction=-0.2"], ["data.test_fraction", "-0.2"]),
    (["train.epochs=abc"], ["train.epochs", "abc"]),
    (["train.device=gpu"], ["train.device", "gpu"]),
    (["train.precision=fp8"], ["train.precision", "fp8"]),
    (["model.name=mlpp"], ["model.name", "mlpp", "mlp"]),
    (["optimizer.name=Adamm"], ["optimizer", "Adamm", "Adam"]),
    (["scheduler.name=cosin"], ["scheduler", "cosin", "cosine"]),
    (["loss.name=CrossEntropyLos"], ["loss", "CrossEntropyLos", "CrossEntropyLoss"]),
    (["data.source=digitz"], ["data.source", "digitz", "digits"]),
    (["model.hiden=[3]", "model.name=mlp"], ["model", "hiden", "hidden"]),
    (["optimizer.momentun=0.9", "optimizer.name=SGD"], ["optimizer", "momentun", "momentum"]),
    (["metrics=[acuracy]"], ["metrics", "acuracy", "accuracy"]),
    (["train.monitor=val_acc"], ["train.monitor", "val_acc", "val_accuracy"]),
    (["epochs"], ["epochs", "KEY=VALUE"]),
]


@pytest.mark.parametrize("overrides, words", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_overrides_exit_2_naming_the_key(overrides, words, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: iris}\nmodel: {name: mlp, hidden: [8]}\ntrain: {epochs: 1}\n")
    r = subprocess.run(
        [*TRAINLAB, "train", str(cfg), *overrides, "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    message = r.stderr.replace("\n", " ")
    for w in words:
        assert w in message, (w, message)


BAD_FILES = [
    ("model: {name: mlp\n", ["c.yaml:", "YAML syntax error"]),
    ("data:\n  source: iris\n   batch_size: 3\n", ["c.yaml:3", "YAML"]),
    ("- just\n- a list\n", ["c.yaml", "mapping"]),
    ("name: !!python/object/apply:os.system ['touch /tmp/trainlab-pwned']\n", ["c.yaml:1", "tag"]),
]


@pytest.mark.parametrize("text, words", BAD_FILES)
def test_bad_yaml_files(text, words, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    for w in words:
        assert w in str(e.value)
    assert not Path("/tmp/trainlab-pwned").exists()


def test_missing_config_file_names_its_path(tmp_path):
    r = subprocess.run(
        [*TRAINLAB, "train", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert str(tmp_path / "nope.yaml") in r.stderr and "Traceback" not in r.stderr


def test_unknown_cli_option_is_a_usage_error():
    r = subprocess.run([*TRAINLAB, "train", "--epochs", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_a_value_that_fits_no_type_of_a_union_is_one_error_naming_the_key():
    from trainlab.config import load_config
    from trainlab.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.channels_last=maybe"])
    text = str(info.value)
    assert "train.channels_last: bad value 'maybe'" in text and "or input should be 'auto'" in text
    assert "channels_last.bool" not in text and "literal" not in text


def test_yaml_off_means_cache_off(tmp_path):
    # YAML 1.1 reads a bare `off` as false; `cache: off` in a file and `data.cache=off` on the
    # command line both mean "decode every epoch", not "bad value False"
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: image_folder, root: x, cache: off}\n")
    assert load_config(path).data.cache == "off"
    assert load_config(path, ["data.cache=off"]).data.cache == "off"
    assert load_config(path, ["data.cache=on"]).data.cache == "auto"
