"""`trainlab predict RUN INPUT --out FILE` round trips: a CSV run predicts on CSV rows (columns matched
by name), an image-folder run predicts on an image file and on a folder; missing columns and
unreadable images are exit-2 errors that name them. The CLI runs in-process (`trainlab.cli.main`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainlab.cli import main

FAST = ["model.name=mlp", "model.hidden=[8]", "train.epochs=2", "scheduler.name=none", "optimizer.lr=0.05"]


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, " ".join((out + err).split())  # messages wrap at 100 columns


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-class classifier on a tiny CSV with named columns (the class is a word)."""
    folder = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    data = folder / "tiny.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["width", "height", "weight", "kind"])
        for i in range(90):
            k = i % 3
            w.writerow(
                [*(np.round(rng.normal([10 + 3 * k, -3 * k, 100 + 6 * k], 0.5), 3)), ["ant", "bee", "cat"][k]]
            )
    run = folder / "run"
    assert (
        main(
            [
                "train",
                "data.source=csv",
                f"data.path={data}",
                "data.target=kind",
                "data.batch_size=16",
                "data.standardize=true",
                *FAST,
                "train.epochs=6",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    return run, data


def test_csv_predict_writes_prediction_and_class_probabilities(csv_run, tmp_path, capsys):
    run, data = csv_run
    out = tmp_path / "p.csv"
    code, text = run_cli(capsys, "predict", run, data, "--out", out)
    assert code == 0, text
    rows = read_rows(out)
    assert len(rows) == 90
    assert {"prediction", "prob_ant", "prob_bee", "prob_cat"} <= set(rows[0])
    for row in rows:
        probs = {c: float(row[f"prob_{c}"]) for c in ("ant", "bee", "cat")}
        assert abs(sum(probs.values()) - 1) < 1e-4
        assert row["prediction"] == max(probs, key=probs.get)
    truth = [r["kind"] for r in read_rows(data)]
    assert (
        np.mean([r["prediction"] == t for r, t in zip(rows, truth)]) > 0.9
    )  # the saved scaler statistics were applied

    # Columns are matched by name: reordered, with an extra column and without the target.
    src = read_rows(data)
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note", "weight", "width", "height"])
        for r in src:
            w.writerow(["x", r["weight"], r["width"], r["height"]])
    code, text = run_cli(capsys, "predict", run, shuffled, "--out", tmp_path / "q.csv")
    assert code == 0, text
    assert [r["prediction"] for r in read_rows(tmp_path / "q.csv")] == [r["prediction"] for r in rows]


def test_csv_predict_missing_column_names_it(csv_run, tmp_path, capsys):
    run, _ = csv_run
    bad = tmp_path / "bad.csv"
    bad.write_text("width,weight\n1.0,2.0\n")
    code, text = run_cli(capsys, "predict", run, bad)
    assert code == 2 and f"{bad}" in text and "'height' not found" in text


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, Path]:
    """Two classes of 8x8 grey PNGs: bright squares and dark squares."""
    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    root = folder / "images"
    for cls, level in (("dark", 40), ("light", 210)):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(level, 10, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / cls / f"{i}.png")
    run = folder / "run"
    assert (
        main(
            [
                "train",
                "data.source=image_folder",
                f"data.root={root}",
                "data.batch_size=8",
                "data.val_fraction=0.25",
                "data.test_fraction=0.25",
                *FAST,
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    return run, root


def test_image_predict_on_a_file_and_a_folder(image_run, tmp_path, capsys):
    run, root = image_run
    one = tmp_path / "one.csv"
    code, text = run_cli(capsys, "predict", run, root / "light" / "0.png", "--out", one)
    assert code == 0, text
    (row,) = read_rows(one)
    assert {"prediction", "prob_dark", "prob_light"} <= set(row)
    code, text = run_cli(capsys, "predict", run, root, "--out", tmp_path / "all.csv")
    assert code == 0, text
    rows = read_rows(tmp_path / "all.csv")
    assert len(rows) == 24
    assert {r["prediction"] for r in rows} <= {"dark", "light"}
    assert [r for r in rows if r["input"].endswith("light/0.png")][0]["prediction"] == row["prediction"]


def test_unreadable_image_names_the_file(image_run, tmp_path, capsys):
    run, root = image_run
    folder = tmp_path / "new"
    folder.mkdir()
    Image.open(root / "dark" / "0.png").save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    code, text = run_cli(capsys, "predict", run, folder)
    assert code == 2 and f"unreadable image: {folder / 'broken.png'}" in text
