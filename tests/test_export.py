"""`trainlab export`: every zoo model (and a `sequential`, a `torchvision:` model) trained for two steps
exports to ONNX and torch.export and verifies against the PyTorch model; the files run without
trainlab; preprocessing.json carries what a consumer needs (CSV features and scaler statistics);
`predict --backend onnx` writes the default backend's CSV; a model that cannot be exported is an exit-2
error naming it and the exporter's reason, and the other format still succeeds when it can."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import trainlab
from trainlab.cli import main
from trainlab.export import export_run, file_sha256
from trainlab.registry import MODELS, add_user_path, load_builtins

pytestmark = pytest.mark.usefixtures("no_report", "one_thread")

SIZE16 = {"transforms": [{"Resize": {"size": [16, 16]}}]}  # digits at 16x16 for the models that pool 4 times
# model config, extra data keys: one case per zoo model that classifies images (the others below)
ZOO_CASES = {
    "mlp": ({"name": "mlp", "hidden": [16]}, {}),
    "small_cnn": ({"name": "small_cnn"}, {}),
    "lenet": ({"name": "lenet"}, SIZE16),
    "cnn_classifier": ({"name": "cnn_classifier", "channels": [4, 8, 8], "fc": [16, 8]}, SIZE16),
    "inception": ({"name": "inception"}, SIZE16),
    "resnet_small": ({"name": "resnet_small"}, SIZE16),
    "rnn": ({"name": "rnn", "hidden_size": 8}, {}),  # 8 rows of 8 pixels: 8 steps of 8 features
    "lstm": ({"name": "lstm", "hidden_size": 8}, {}),
    "gru": ({"name": "gru", "hidden_size": 8, "bidirectional": True}, {}),
    "sequential": (
        {"name": "sequential", "layers": ["Flatten", {"Linear": [64, 16]}, "ReLU", {"LazyLinear": [10]}]},
        {},
    ),
    "torchvision:resnet18": ({"name": "torchvision:resnet18"}, SIZE16),
}
# the zoo's regression and binary models are exported by the CSV and binary tests below
OTHER_CASES = {"linear", "sigmoid_net", "logistic"}


def tiny(model: dict, **data) -> dict:
    """Digits, two SGD steps (no optimizer state: small checkpoints), a 10% test split."""
    return {
        "name": "export",
        "seed": 0,
        "data": {"source": "digits", "batch_size": 32, "val_fraction": 0.1, "test_fraction": 0.1, **data},
        "model": model,
        "optimizer": {"name": "SGD", "lr": 0.05},
        "scheduler": {"name": "none"},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu"},
    }


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # messages wrap at 100 columns


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def assert_same_csv(a: str, b: str, tol: float = 1e-5) -> None:
    """Same rows, columns and predicted classes; numbers equal to `tol` (relative for regression values)."""
    rows_a, rows_b = read_rows(a), read_rows(b)
    assert len(rows_a) == len(rows_b) > 0 and list(rows_a[0]) == list(rows_b[0])
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            try:
                va, vb = float(ra[key]), float(rb[key])
            except ValueError:
                assert ra[key] == rb[key], (key, ra, rb)
            else:
                assert abs(va - vb) <= tol * max(1.0, abs(vb)), (key, ra, rb)


def test_every_registered_model_is_exported_by_a_test():
    load_builtins()
    assert set(MODELS.names()) == {n for n in ZOO_CASES if n in MODELS.names()} | OTHER_CASES


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_model_exports_and_verifies(name, tmp_path):
    model, data = ZOO_CASES[name]
    run = trainlab.train(tiny(model, **data), out=tmp_path / "run", quiet=True)
    result = export_run(run.run_dir, samples=64, quiet=True)
    assert result.passed and set(result.files) == {"onnx", "exported"}
    check = json.loads((run.run_dir / "export" / "verification.json").read_text())
    assert check["passed"] and check["split"] == "test" and check["samples"] == 64
    for fmt in ("onnx", "exported"):
        v = check["formats"][fmt]
        assert v["max_abs_diff"] <= v["tolerance"] and v["classes_differ"] == 0, (fmt, v)


# ----------------------------------------------------------------------------- one shared digits run


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    """small_cnn on digits, two steps, exported with `trainlab export` (both formats)."""
    import trainlab.report

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainlab.report, "write_report", lambda d: Path(d) / "report.html")
        run = trainlab.train(
            tiny({"name": "small_cnn"}), out=tmp_path_factory.mktemp("cnn") / "run", quiet=True
        )
    assert main(["export", str(run.run_dir)]) == 0
    return run.run_dir


def test_export_writes_both_formats_and_a_preprocessing_file(cnn_run):
    folder = cnn_run / "export"
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx",
        "model.pt2",
        "preprocessing.json",
        "verification.json",
    }
    prep = json.loads((folder / "preprocessing.json").read_text())
    assert prep["task"] == "classification" and prep["class_names"] == [str(i) for i in range(10)]
    assert prep["input"] == {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    assert prep["output"]["name"] == "logits" and prep["image_mode"] == "L" and prep["image_size"] == [8, 8]
    assert prep["checkpoint"] == {
        "file": "best.pt",
        "sha256": file_sha256(cnn_run / "checkpoints" / "best.pt"),
    }
    assert "train_transforms" not in prep


def test_exported_files_run_without_trainlab_with_any_batch_size(cnn_run, tmp_path):
    """A fresh interpreter in which `import trainlab` fails loads both files and runs batches of 1 and 5."""
    x = torch.rand(5, 1, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import sys; sys.modules["trainlab"] = None  # any import of trainlab now raises
        import numpy as np, onnxruntime as ort, torch
        x = np.load({str(tmp_path / "x.npy")!r})
        session = ort.InferenceSession({str(cnn_run / "export" / "model.onnx")!r},
                                       providers=["CPUExecutionProvider"])
        program = torch.export.load({str(cnn_run / "export" / "model.pt2")!r}).module()
        for n in (1, 5):
            a = session.run(["logits"], {{"input": x[:n]}})[0]
            b = program(torch.from_numpy(x[:n])).detach().numpy()
            assert a.shape == b.shape == (n, 10), (a.shape, b.shape)
            np.save({str(tmp_path)!r} + f"/onnx{{n}}.npy", a)
            np.save({str(tmp_path)!r} + f"/pt2{{n}}.npy", b)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = trainlab.load_run(cnn_run, with_data=False)
    with torch.no_grad():
        want = loaded.model.cpu()(x).numpy()
    for n in (1, 5):
        np.testing.assert_allclose(np.load(tmp_path / f"onnx{n}.npy"), want[:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.load(tmp_path / f"pt2{n}.npy"), want[:n], rtol=1e-4, atol=1e-5)


def test_predict_with_the_onnx_backend_writes_the_default_csv(cnn_run, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    images = tmp_path / "digits"
    images.mkdir()
    for i, img in enumerate(load_digits().images[:12]):
        Image.fromarray((img * 16).clip(0, 255).astype(np.uint8), mode="L").save(images / f"{i}.png")
    code, default, err = cli(capsys, "predict", cnn_run, images)
    assert code == 0, err
    code, onnx, err = cli(capsys, "predict", cnn_run, images, "--backend", "onnx")
    assert code == 0, err
    assert_same_csv(onnx, default)


def test_out_and_format_write_one_file_where_asked(cnn_run, tmp_path, capsys):
    code, out, err = cli(
        capsys,
        "export",
        cnn_run,
        "--format",
        "exported",
        "--checkpoint",
        "last",
        "--out",
        tmp_path / "ship" / "digits.pt2",
    )
    assert code == 0, err
    assert {p.name for p in (tmp_path / "ship").iterdir()} == {
        "digits.pt2",
        "preprocessing.json",
        "verification.json",
    }
    check = json.loads((tmp_path / "ship" / "verification.json").read_text())
    assert list(check["formats"]) == ["exported"] and check["checkpoint"]["file"] == "last.pt"
    assert "exported  max abs diff" in out and "passed" in out


def test_an_opset_the_exporter_cannot_write_is_exit_2(cnn_run, tmp_path, capsys):
    code, _, err = cli(
        capsys, "export", cnn_run, "--format", "onnx", "--opset", "7", "--out", tmp_path / "m.onnx"
    )
    assert code == 2 and "--opset 7: the exporter could not convert the model to ONNX opset 7" in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_verification_exits_1(cnn_run, tmp_path, capsys):
    # rtol 0 with max|torch| >= 1: any rounding difference of ONNX Runtime fails
    code, out, err = cli(
        capsys, "export", cnn_run, "--format", "onnx", "--out", tmp_path / "m.onnx", "--rtol", "0"
    )
    check = json.loads((tmp_path / "verification.json").read_text())
    if check["formats"]["onnx"]["max_abs_diff"] == 0:
        pytest.skip("ONNX Runtime reproduced PyTorch bit for bit")
    assert code == 1 and "FAILED" in out and "verification failed" in err and not check["passed"]


# ----------------------------------------------------------------------------- CSV regression, binary


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    """y = 2 a - b + 0.5 c + noise, features on very different scales (the scaler matters)."""
    path = tmp_path_factory.mktemp("csv") / "houses.csv"
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rooms", "area", "age", "price"])
        for _ in range(120):
            a, b, c = rng.normal(3, 1), rng.normal(100, 30), rng.normal(20, 5)
            w.writerow(
                [
                    round(a, 3),
                    round(b, 2),
                    round(c, 2),
                    round(2 * a - b / 30 + 0.5 * c + rng.normal(0, 0.1), 3),
                ]
            )
    return path


@pytest.mark.parametrize("model", ["linear", "sigmoid_net"])
def test_csv_regression_exports_features_scaler_and_predicts_alike(model, csv_file, tmp_path, capsys):
    config = {
        "name": "houses",
        "seed": 0,
        "data": {
            "source": "csv",
            "path": str(csv_file),
            "target": "price",
            "standardize": True,
            "batch_size": 16,
            "test_fraction": 0.2,
        },
        "model": {"name": model},
        "optimizer": {"name": "SGD", "lr": 0.01},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu"},
    }
    run = trainlab.train(config, out=tmp_path / "run", quiet=True)
    code, _, err = cli(capsys, "export", run.run_dir)
    assert code == 0, err
    prep = json.loads((run.run_dir / "export" / "preprocessing.json").read_text())
    saved = trainlab.load_run(run.run_dir, with_data=False).state["preprocessing"]
    assert prep["task"] == "regression" and prep["output"]["name"] == "prediction"
    assert prep["feature_names"] == ["rooms", "area", "age"] and prep["scaler"] == saved["scaler"]
    assert prep["scaler"]["mean"][1] == pytest.approx(100, abs=10)  # the statistics of the raw area column
    assert (
        "class_agreement"
        not in json.loads((run.run_dir / "export" / "verification.json").read_text())["formats"]["onnx"]
    )
    code, default, err = cli(capsys, "predict", run.run_dir, csv_file)
    assert code == 0, err
    code, onnx, err = cli(capsys, "predict", run.run_dir, csv_file, "--backend", "onnx")
    assert code == 0, err
    assert_same_csv(onnx, default)


@pytest.fixture
def binary_run(tmp_path) -> Path:
    config = {
        "name": "cancer",
        "seed": 0,
        "data": {"source": "breast_cancer", "standardize": True, "batch_size": 32, "test_fraction": 0.2},
        "model": {"name": "logistic"},
        "optimizer": {"name": "SGD", "lr": 0.05},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu"},
    }
    return trainlab.train(config, out=tmp_path / "run", quiet=True).run_dir


def test_binary_run_exports_the_logit_and_predict_onnx_exports_when_missing(binary_run, tmp_path, capsys):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(data.feature_names))
        w.writerows(data.data[:40].tolist())
    code, default, err = cli(capsys, "predict", binary_run, rows)
    assert code == 0, err
    assert not (binary_run / "export").exists()
    code, onnx, err = cli(capsys, "predict", binary_run, rows, "--backend", "onnx")
    assert code == 0, err
    assert "model.onnx is missing; exporting it" in err and (binary_run / "export" / "model.onnx").is_file()
    assert_same_csv(onnx, default)
    prep = json.loads((binary_run / "export" / "preprocessing.json").read_text())
    assert (
        prep["task"] == "binary"
        and prep["output"]["name"] == "logits"
        and "sigmoid(logit)" in prep["output"]["meaning"]
    )
    result = export_run(binary_run, ["onnx"], samples=64, quiet=True)
    assert result.passed and result.verification["formats"]["onnx"]["classes_differ"] == 0
    (binary_run / "export" / "preprocessing.json").unlink()
    code, _, err = cli(capsys, "predict", binary_run, rows, "--backend", "onnx")
    assert code == 2 and "preprocessing.json is missing" in err


def test_predict_onnx_refuses_a_model_exported_from_another_checkpoint(binary_run, cnn_run, tmp_path, capsys):
    (binary_run / "export").mkdir()
    (binary_run / "export" / "model.onnx").write_bytes((cnn_run / "export" / "model.onnx").read_bytes())
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n1\n")
    code, _, err = cli(capsys, "predict", binary_run, rows, "--backend", "onnx")
    assert code == 2 and "was exported from another checkpoint" in err and "trainlab export" in err


# ----------------------------------------------------------------------------- models that cannot be exported

USER_MODELS = '''
import torch
from torch import nn


class BranchyNet(nn.Module):
    """Takes a branch on the value of its input: torch.export cannot trace that."""

    def __init__(self, input_shape, output_dim):
        super().__init__()
        self.fc = nn.Linear(64, output_dim)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class BesselNet(nn.Module):
    """torch.special.bessel_j0 has no ONNX function: torch.export works, ONNX does not."""

    def __init__(self, input_shape, output_dim):
        super().__init__()
        self.fc = nn.Linear(64, output_dim)

    def forward(self, x):
        return self.fc(torch.special.bessel_j0(x.flatten(1)))
'''


@pytest.fixture
def user_models(tmp_path):
    (tmp_path / "tl_export_models.py").write_text(USER_MODELS)
    add_user_path(tmp_path)
    yield "tl_export_models"
    sys.modules.pop("tl_export_models", None)


def test_data_dependent_control_flow_is_exit_2_naming_the_model_and_the_line(user_models, tmp_path, capsys):
    run = trainlab.train(tiny({"name": f"{user_models}:BranchyNet"}), out=tmp_path / "run", quiet=True)
    code, _, err = cli(capsys, "export", run.run_dir)
    assert code == 2, err
    assert f"cannot export model '{user_models}:BranchyNet'" in err
    assert "ONNX, torch.onnx.export failed" in err and "torch.export program failed" in err
    assert "data-dependent" in err and "if x.sum() > 0:" in err and "torch.cond" in err
    assert "Traceback" not in err and not (run.run_dir / "export" / "model.onnx").exists()


def test_format_all_keeps_the_format_that_works(user_models, tmp_path, capsys):
    run = trainlab.train(tiny({"name": f"{user_models}:BesselNet"}), out=tmp_path / "run", quiet=True)
    code, out, err = cli(capsys, "export", run.run_dir, "--format", "all")
    assert code == 2, err
    assert "ONNX, torch.onnx.export failed" in err and "bessel_j0" in err
    assert "torch.export program succeeded" in err and "exported  max abs diff" in out
    check = json.loads((run.run_dir / "export" / "verification.json").read_text())
    assert check["formats"]["exported"]["passed"] and "onnx" in check["errors"] and not check["passed"]
    assert (run.run_dir / "export" / "model.pt2").is_file() and not (
        run.run_dir / "export" / "model.onnx"
    ).exists()


def test_missing_onnx_packages_name_the_extra(cnn_run, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    code, _, err = cli(capsys, "export", cnn_run, "--format", "onnx")
    assert code == 2 and "onnxruntime" in err and "pip install 'trainlab[export]'" in err
