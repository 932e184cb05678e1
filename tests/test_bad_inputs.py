"""Bad and hostile inputs (issue 21): every case is one row of CASES — the command it runs, the exit code
and a word the message must contain — run in-process through the CLI. Each must end with that code, the
message naming the culprit, no traceback, and nothing previously written changed. Bomb configs are
refused by the loader before anything expands them: the message says so, no timing is needed."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli_in_process
from trainlab.engine import checkpoint as ckpt

FAST = ["train.epochs=1", "train.max_steps=2", "train.device=cpu"]
TINY = ["model.name=mlp", "model.hidden=[8]", *FAST]


# ----------------------------------------------------------------------------- inputs, written cheaply


def _write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _laughs(levels: int = 9) -> str:
    """A billion-laughs YAML body: anchor l0 = 9 strings, l(k) = 9 aliases of l(k-1) -> 9^levels values."""
    lines = ["x: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"x{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def _blank_png(path: Path, height: int, width: int) -> Path:
    """A grey PNG of zeros written without holding its pixels (12000x12000 compresses to ~140 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    row = b"\0" * (width + 1)  # filter byte + pixels
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


def _csv(path: Path, rows: int = 60, extra: bool = False, bad_row: str | None = None) -> str:
    rng = np.random.default_rng(0)
    header = "a,b,c,d,y" if extra else "a,b,c,y"
    lines = [header] + [
        ",".join(f"{v:.3f}" for v in rng.normal(size=4 if extra else 3)) + f",{i % 2}" for i in range(rows)
    ]
    if bad_row is not None:
        lines[5] = bad_row
    return _write(path, "\n".join(lines) + "\n")


def _mixed_sizes(root: Path) -> str:
    for c, size in (("cat", 8), ("dog", 10)):
        _image_folder(root, (c,), 2)
        Image.new("RGB", (size, size + 2)).save(root / c / "odd.png")
    return str(root)


def _latin1(path: Path) -> Path:
    path.write_bytes(path.read_bytes().replace(b"a,b,c,y", b"caf\xe9,b,c,y"))  # 'café' as latin-1
    return path


def _image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 8) -> str:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return str(root)


@dataclass
class Runs:
    """Runs trained once for the module (each a few steps), copied before a case changes one."""

    digits: Path
    csv: Path
    csv_data: Path
    images: Path
    image_data: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    import trainlab.report
    from trainlab.run import train

    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:  # no plots: the runs are inputs here
        mp.setattr(trainlab.report, "write_report", lambda d: _write(Path(d) / "report.html", "stub"))
        train(None, [*TINY], out=root / "digits", quiet=True)
        csv_data = Path(_csv(root / "data" / "train.csv"))
        train(None, ["data.source=csv", f"data.path={csv_data}", *TINY], out=root / "csv", quiet=True)
        image_data = Path(_image_folder(root / "images_data"))
        train(
            None,
            ["data.source=image_folder", f"data.root={image_data}", *TINY],
            out=root / "images",
            quiet=True,
        )
    return Runs(root / "digits", root / "csv", csv_data, root / "images", image_data)


def _copy(run: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(run, tmp / run.name))


def _user_module(tmp: Path, name: str, body: str) -> list[str]:
    _write(tmp / f"{name}.py", body)
    return [
        "train",
        _write(tmp / "cfg.yaml", f"model: {{name: '{name}:Net'}}\ntrain: {{epochs: 1, device: cpu}}\n"),
        "--out",
        str(tmp / "run"),
    ]


def _broken_checkpoint(runs: Runs, tmp: Path, state: object, command: str) -> list[str]:
    run = _copy(runs.digits, tmp)
    for name in ("last.pt", "best.pt"):
        ckpt.save_checkpoint(state, run / "checkpoints" / name)
    if command == "resume":
        return ["train", *TINY, "--out", str(run), "--resume", "--quiet"]
    return [command, str(run)]


def _metrics(runs: Runs, tmp: Path, keep_bytes: int) -> list[str]:
    run = _copy(runs.digits, tmp)
    text = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(text[:keep_bytes])
    return ["doctor", str(run)]


def _csv_gained_a_column(runs: Runs, tmp: Path) -> list[str]:
    run = _copy(runs.csv, tmp)
    shutil.copy(runs.csv_data, tmp / "saved.csv")
    _csv(runs.csv_data, extra=True)
    return ["eval", str(run)]


def _class_folder_vanished(runs: Runs, tmp: Path) -> list[str]:
    run = _copy(runs.images, tmp)
    shutil.move(runs.image_data / "dog", tmp / "dog")
    _image_folder(runs.image_data, ("eel",))
    return ["eval", str(run)]


@dataclass
class Case:
    name: str
    make: Callable[[Runs, Path], list[str]]  # (runs, a fresh folder) -> the trainlab arguments
    code: int
    word: str  # the message must contain it (whitespace-normalised)


CASES = [
    # hostile configs: refused by the loader before anything is expanded or allocated
    Case(
        "alias bomb in train.epochs",
        lambda r, t: [
            "train",
            _write(
                t / "c.yaml",
                "anchors:\n"
                + "".join("  " + line + "\n" for line in _laughs().splitlines())
                + "train:\n  epochs: *l8\n",
            ),
            "--out",
            str(t / "run"),
        ],
        2,
        "alias bomb",
    ),
    Case(
        "alias bomb in metrics",
        lambda r, t: [
            "train",
            _write(t / "c.yaml", _laughs().replace("x8: &l8", "metrics: &l8")),
            "--out",
            str(t / "run"),
        ],
        2,
        "alias bomb",
    ),
    Case(
        "alias bomb in an override",
        lambda r, t: [
            "train",
            "model.init=" + "{" + _laughs(7).strip().replace("\n", ", ") + "}",
            "--out",
            str(t / "run"),
        ],
        2,
        "alias bomb",
    ),
    Case(
        "5000-deep list",
        lambda r, t: [
            "train",
            _write(t / "c.yaml", "model:\n  hidden: " + "[" * 5000 + "]" * 5000 + "\n"),
            "--out",
            str(t / "run"),
        ],
        2,
        "nested more than",
    ),
    Case(
        "5000-deep block list",
        lambda r, t: [
            "train",
            _write(t / "c.yaml", "metrics:\n" + "- " * 5000 + "x\n"),
            "--out",
            str(t / "run"),
        ],
        2,
        "c.yaml:2: values nested",
    ),
    Case(
        "2 MB config",
        lambda r, t: [
            "train",
            _write(t / "c.yaml", "name: " + "x" * 2_000_000 + "\n"),
            "--out",
            str(t / "run"),
        ],
        2,
        "a config has at most",
    ),
    Case(
        "duplicate key",
        lambda r, t: ["train", _write(t / "c.yaml", "seed: 1\nname: x\nseed: 2\n"), "--out", str(t / "run")],
        2,
        "lines 1 and 3",
    ),
    Case(
        "latin-1 byte in a config",
        lambda r, t: ["train", _write(t / "c.yaml", b"name: caf\xe9\n"), "--out", str(t / "run")],
        2,
        "c.yaml:1: byte 0xe9 is not UTF-8",
    ),
    Case(
        "non-UTF-8 override",
        lambda r, t: ["train", "name=caf\udce9", "--out", str(t / "run")],
        2,
        "not UTF-8",
    ),
    Case(
        "300-character name",
        lambda r, t: ["train", "name=" + "n" * 300, "--out", str(t / "run")],
        2,
        "name: bad value",
    ),
    Case(
        "seed beyond 64 bits",
        lambda r, t: ["train", f"seed={2**70}", "--out", str(t / "run")],
        2,
        "seed: bad value",
    ),
    Case(
        "5000-digit integer",
        lambda r, t: ["train", _write(t / "c.yaml", "seed: " + "9" * 5000 + "\n"), "--out", str(t / "run")],
        2,
        "5000 digits",
    ),
    Case(
        "infinite learning rate",
        lambda r, t: ["train", *TINY, "optimizer.lr=.inf", "--out", str(t / "run")],
        2,
        "optimizer.lr",
    ),
    # component keyword arguments, checked against the signature before step 1
    Case(
        "scheduler.step_size=abc",
        lambda r, t: [
            "train",
            *TINY,
            "scheduler.name=step",
            "scheduler.step_size=abc",
            "--out",
            str(t / "run"),
        ],
        2,
        "scheduler.step_size: 'abc' does not fit int",
    ),
    Case(
        "scheduler.gamma=abc",
        lambda r, t: [
            "train",
            *TINY,
            "scheduler.name=step",
            "scheduler.step_size=2",
            "scheduler.gamma=abc",
            "--out",
            str(t / "run"),
        ],
        2,
        "scheduler.gamma",
    ),
    Case(
        "NaN label_smoothing",
        lambda r, t: ["train", *TINY, "loss.label_smoothing=.nan", "--out", str(t / "run")],
        2,
        "loss.label_smoothing: nan is not a finite number",
    ),
    Case(
        "negative layer width",
        lambda r, t: ["train", *TINY, "model.hidden=[-5]", "--out", str(t / "run")],
        2,
        "hidden=[-5]",
    ),
    Case(
        "trillion-wide layer",
        lambda r, t: ["train", *TINY, "model.hidden=[1000000000000]", "--out", str(t / "run")],
        2,
        "parameters; training it needs about",
    ),
    Case(
        "trillion-wide sequential layer",
        lambda r, t: [
            "train",
            *FAST,
            "model.name=sequential",
            "model.layers=[Flatten, {Linear: [64, 1000000000000]}]",
            "--out",
            str(t / "run"),
        ],
        2,
        "sequential (model.layers) has 65,000,000,000,000 parameters",
    ),
    Case(
        "negative sequential layer",
        lambda r, t: [
            "train",
            *FAST,
            "model.name=sequential",
            "model.layers=[Flatten, {Linear: [64, -5]}]",
            "--out",
            str(t / "run"),
        ],
        2,
        "model.layers[1]: Linear(64, -5) failed",
    ),
    Case(
        "a list where an int goes",
        lambda r, t: ["train", *FAST, "model.name=small_cnn", "model.hidden=[8]", "--out", str(t / "run")],
        2,
        "model.hidden: [8] does not fit int",
    ),
    Case(
        "shifted transform index",
        lambda r, t: [
            "train",
            *TINY,
            "data.transforms=[ToTensor, {RandomRotation: {degrees: abc}}]",
            "--out",
            str(t / "run"),
        ],
        2,
        "data.transforms[1]: RandomRotation",
    ),
    Case(
        "transform failing on the data",
        lambda r, t: ["train", *TINY, "data.transforms=[{RandomCrop: 100}]", "--out", str(t / "run")],
        2,
        "first training sample",
    ),
    # user modules
    Case(
        "user module raises at import",
        lambda r, t: _user_module(t, "raises", "x = 1\nraise RuntimeError('boom')\n"),
        2,
        "raises.py:2) failed: RuntimeError: boom",
    ),
    Case(
        "user module syntax error",
        lambda r, t: _user_module(t, "syn", "def f(:\n    pass\n"),
        2,
        "syn.py:1) failed: SyntaxError",
    ),
    Case(
        "user module imports a missing package",
        lambda r, t: _user_module(t, "miss", "import not_a_package_xyz\n"),
        2,
        "'not_a_package_xyz', which is not installed",
    ),
    # checkpoints, checked structurally when loaded
    Case("checkpoint {'a': 1}", lambda r, t: _broken_checkpoint(r, t, {"a": 1}, "resume"), 2, "has no model"),
    Case(
        "checkpoint holding a tensor",
        lambda r, t: _broken_checkpoint(r, t, torch.ones(3), "eval"),
        2,
        "holds a Tensor",
    ),
    Case(
        "last.pt with only its config",
        lambda r, t: _broken_checkpoint(r, t, {"config": {"name": "x"}}, "resume"),
        2,
        "has no model, optimizer",
    ),
    Case(
        "model that is not a state dict",
        lambda r, t: _broken_checkpoint(
            r,
            t,
            {**ckpt.load_checkpoint(r.digits / "checkpoints" / "best.pt"), "model": torch.ones(2)},
            "doctor",
        ),
        2,
        "'model' is a Tensor",
    ),
    # run directories and outputs
    Case("doctor on an empty metrics.jsonl", lambda r, t: _metrics(r, t, 0), 2, "metrics.jsonl"),
    Case("doctor on a cut metrics.jsonl", lambda r, t: _metrics(r, t, 100), 2, "cut short"),
    Case(
        "compare --out below a file",
        lambda r, t: ["compare", str(r.digits), "--out", _write(t / "f", "x") + "/sub"],
        2,
        "is a file, not a folder",
    ),
    Case(
        "compare --out onto a file",
        lambda r, t: ["compare", str(r.digits), "--out", _write(t / "f", "x")],
        2,
        "is a file, not a folder",
    ),
    Case(
        "predict --out onto a folder",
        lambda r, t: ["predict", str(r.csv), str(r.csv_data), "--out", str(t)],
        2,
        "is a folder; give a file name",
    ),
    Case(
        "predict --out below a file",
        lambda r, t: ["predict", str(r.csv), str(r.csv_data), "--out", _write(t / "f", "x") + "/p.csv"],
        2,
        "is a file, not a folder",
    ),
    # data
    Case("eval after the CSV gained a column", _csv_gained_a_column, 2, "columns changed (new 'd')"),
    Case("eval after a class folder vanished", _class_folder_vanished, 2, "gone 'dog', new 'eel'"),
    Case(
        "image folder with one class",
        lambda r, t: [
            "train",
            *TINY,
            "data.source=image_folder",
            f"data.root={_image_folder(t / 'one', ('cat',), 2)}",
            "--out",
            str(t / "run"),
        ],
        2,
        "at least 2",
    ),
    Case(
        "predict on a decompression bomb",
        lambda r, t: ["predict", str(r.images), str(_blank_png(t / "bomb.png", 14000, 14000))],
        2,
        "bomb.png",
    ),
    Case(
        "12000x12000 images",
        lambda r, t: [
            "train",
            *TINY,
            "data.source=image_folder",
            f"data.root={[_blank_png(t / 'huge' / c / '0.png', 12000, 12000) for c in 'ab'][0].parents[1]}",
            "--out",
            str(t / "run"),
        ],
        2,
        "data.image_size",
    ),
    Case(
        "transforms that leave image sizes varying",
        lambda r, t: [
            "train",
            *TINY,
            "data.source=image_folder",
            f"data.root={_mixed_sizes(t / 'mixed')}",
            "data.transforms=[RandomHorizontalFlip]",
            "--out",
            str(t / "run"),
        ],
        2,
        "Resize: {size: [224, 224]}",
    ),
    Case(
        "CSV cell 1e308",
        lambda r, t: [
            "train",
            *TINY,
            "data.source=csv",
            f"data.path={_csv(t / 'big.csv', bad_row='1e308,0.1,0.2,1')}",
            "data.standardize=true",
            "--out",
            str(t / "run"),
        ],
        2,
        "big.csv:6:1: '1e308' in column 'a'",
    ),
    Case(
        "latin-1 byte in a CSV",
        lambda r, t: [
            "train",
            *TINY,
            "data.source=csv",
            f"data.path={_latin1(Path(_csv(t / 'lat.csv')))}",
            "--out",
            str(t / "run"),
        ],
        2,
        "lat.csv:1: byte 0xe9 is not UTF-8",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = case.make(runs, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 2**20}
    try:
        code, out, err = cli_in_process(capsys, *argv)
        after = {p: p.read_bytes() if p.exists() else None for p in before}
    finally:  # cases that changed a shared input put it back
        if (tmp_path / "saved.csv").exists():
            shutil.copy(tmp_path / "saved.csv", runs.csv_data)
        if (tmp_path / "dog").exists():
            shutil.rmtree(runs.image_data / "eel")
            shutil.move(tmp_path / "dog", runs.image_data / "dog")
    text = " ".join((out + err).split())
    assert code == case.code, text
    assert case.word in text
    assert "Traceback" not in text
    assert after == before  # nothing written before was changed or removed


# ----------------------------------------------------------------------------- what must still work


def test_yaml_1_1_numbers_written_as_strings_reach_every_component_as_floats() -> None:
    from trainlab.registry import check_kwargs

    optimizer = check_kwargs(
        torch.optim.SGD, {"lr": 0.1, "weight_decay": "1e-4"}, "optimizer", skip=("params",)
    )
    assert optimizer["weight_decay"] == 1e-4 and isinstance(optimizer["weight_decay"], float)
    scheduler = check_kwargs(
        torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 5, "eta_min": "1e-6"}, "scheduler"
    )
    assert scheduler["eta_min"] == 1e-6
    adam = check_kwargs(torch.optim.Adam, {"betas": ["0.9", "1e-3"]}, "optimizer", skip=("params",))
    assert adam["betas"] == [0.9, 1e-3]  # the list stays a list, its numbers become numbers
    loss = check_kwargs(torch.nn.CrossEntropyLoss, {"weight": [1, 2], "reduction": "sum"}, "loss")
    assert loss == {"weight": [1, 2], "reduction": "sum"}  # a tensor argument may be written as a list


def test_aliases_that_share_a_value_are_still_allowed(tmp_path) -> None:
    from trainlab.config import load_config

    cfg = load_config(
        _write(
            tmp_path / "c.yaml",
            "model: {name: mlp, hidden: &w [16, 16]}\nloss: {name: CrossEntropyLoss, weight: *w}\n",
        )
    )
    assert cfg.loss.kwargs()["weight"] == cfg.model.kwargs()["hidden"] == [16, 16]


def test_a_csv_byte_order_mark_is_simply_dropped(tmp_path) -> None:
    from trainlab.data.csv_source import read_table

    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,y\n1,2,0\n3,4,1\n")
    assert read_table(path).names == ["a", "b", "y"]


def test_ctrl_c_before_training_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch) -> None:
    import trainlab.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainlab.run, "build_pipeline", interrupted)
    code, _, err = cli_in_process(capsys, "train", *TINY, "--out", str(tmp_path / "run"))
    assert code == 130 and "interrupted" in err and "Traceback" not in err and "Aborted" not in err
    assert not (tmp_path / "run" / ".trainlab.lock").exists()  # the run's folder is free again


def test_divergence_advice_is_true_to_the_run(tmp_path) -> None:
    from types import SimpleNamespace

    from trainlab.errors import divergence_advice

    skip_clip = SimpleNamespace(nan_policy="skip", grad_clip=1.0)
    assert (
        divergence_advice(skip_clip, tmp_path)
        == "no checkpoint was written before it. Try a lower optimizer.lr."
    )
    (tmp_path / "last.pt").write_bytes(b"x")
    text = divergence_advice(
        SimpleNamespace(nan_policy="stop", grad_clip=None), tmp_path, ["0.running_var", "1.weight"]
    )
    assert text.startswith("last.pt keeps the last finite weights")  # best.pt does not exist
    assert "BatchNorm running statistics (0.running_var)" in text
    assert text.endswith("Try a lower optimizer.lr, train.grad_clip or train.nan_policy=skip.")
