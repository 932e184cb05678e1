"""The csv source through the real reading code: formats, detection, and one test per bad-file case."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from trainlab.config import load_config
from trainlab.data import apply_scaler, build_data
from trainlab.data.csv_source import read_features, read_table
from trainlab.errors import ConfigError, DataError

# The notes' diabetes layout: 8 float features, 0/1 label last, no header.
ROWS = [
    "-0.29,0.49,0.18,-0.29,0,0.00,-0.53,-0.03,0",
    "-0.88,-0.15,0.08,-0.41,0,-0.21,-0.77,-0.67,1",
    "-0.06,0.84,0.05,0,0,-0.31,-0.49,-0.63,0",
    "-0.88,-0.11,0.08,-0.54,-0.78,-0.16,-0.92,0,1",
    "0,0.38,-0.34,-0.29,-0.60,0.28,0.89,-0.6,0",
    "-0.41,0.17,0.21,0,0,-0.24,-0.89,-0.7,1",
    "-0.65,-0.22,-0.18,-0.35,-0.79,-0.08,-0.85,-0.83,0",
    "0.18,0.16,0.08,0,0,0.05,-0.95,-0.73,1",
    "-0.76,0.98,0.15,-0.09,0.28,-0.09,-0.93,0.07,0",
    "-0.05,0.26,0.11,0,0,-0.18,-0.81,-0.8,1",
]


def write(path, lines, gz=False):
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def bundle(path, **data):
    return build_data(
        load_config(
            {"data": {"source": "csv", "path": str(path), "val_fraction": 0.2, "test_fraction": 0.2, **data}}
        )
    )


def test_no_header_label_last_is_binary(tmp_path):
    b = bundle(write(tmp_path / "diabetes.csv", ROWS))
    assert b.task == "binary" and b.output_dim == 1 and b.input_shape == (8,)
    assert b.preprocessing["feature_names"] == [f"col{i}" for i in range(8)]
    assert b.preprocessing["csv"]["header"] is False and b.preprocessing["csv"]["target"] == "col8"
    assert sum(b.info["sizes"].values()) == 10
    x, y = b.train[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_gzip_gives_the_same_data(tmp_path):
    plain = read_table(write(tmp_path / "d.csv", ROWS))
    packed = read_table(write(tmp_path / "d.csv.gz", ROWS, gz=True))
    assert packed.rows == plain.rows and packed.header is False


def test_header_semicolon_and_string_labels(tmp_path):
    lines = ["petal;width;species"] + [
        f"{i};{i % 3}.5;{['virginica', 'setosa', 'versicolor'][i % 3]}" for i in range(12)
    ]
    b = bundle(write(tmp_path / "flowers.csv", lines))
    assert b.task == "classification" and b.output_dim == 3
    assert b.class_names == ["setosa", "versicolor", "virginica"]  # sorted names -> indices 0, 1, 2
    assert b.preprocessing["feature_names"] == ["petal", "width"]
    assert b.preprocessing["csv"]["delimiter"] == ";"
    # every sample's label index matches its name: virginica rows have petal % 3 == 0
    for ds in (b.train, b.val, b.test):
        for x, y in zip(ds.x, ds.y):
            assert b.class_names[int(y)] == ["virginica", "setosa", "versicolor"][int(x[0]) % 3]


def test_target_by_name_index_and_negative_index_and_features(tmp_path):
    path = write(tmp_path / "t.csv", ["a,b,c,d"] + [f"{i},{i * 2}.5,{i % 2},{i}.25" for i in range(10)])
    assert bundle(path, target="c").preprocessing["feature_names"] == ["a", "b", "d"]
    assert bundle(path, target=2).preprocessing["csv"]["target"] == "c"
    assert bundle(path, target=-2).task == "binary"
    b = bundle(path, target="d", features=["b", 0])
    assert b.task == "regression" and b.preprocessing["feature_names"] == ["b", "a"]
    assert b.train.y.dtype == torch.float32


def test_header_and_delimiter_can_be_given(tmp_path):
    path = write(tmp_path / "t.csv", ["1|2|0"] + [f"{i}|{i}|{i % 2}" for i in range(9)])
    table = read_table(path, header=True, delimiter="|")
    assert table.names == ["1", "2", "0"] and len(table.rows) == 9
    assert read_table(path).header is False


def test_standardize_is_fitted_on_train_only(tmp_path):
    path = write(tmp_path / "s.csv", ["x,y"] + [f"{i * i},{i % 2}" for i in range(20)])
    b = bundle(path, standardize=True)
    scaler = b.preprocessing["scaler"]
    train_x = b.train.x
    torch.testing.assert_close(train_x.mean(0), torch.zeros(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(train_x.std(0, unbiased=False), torch.ones(1), atol=1e-5, rtol=0)
    raw = read_features(path, b.preprocessing["csv"])
    all_mean = raw.mean(0).item()
    assert abs(scaler["mean"][0] - all_mean) > 1e-3  # the test/val rows did not take part in the fit
    # val/test were scaled with the training statistics: undoing the scaling gives raw squares back
    restored = b.test.x * torch.tensor(scaler["std"]) + torch.tensor(scaler["mean"])
    assert all(float(np.sqrt(v)).is_integer() for v in restored.round().flatten().tolist())
    torch.testing.assert_close(
        apply_scaler(raw, scaler)[:3], (raw[:3] - scaler["mean"][0]) / scaler["std"][0]
    )


def test_read_features_for_predict_matches_by_name(tmp_path):
    path = write(tmp_path / "t.csv", ["a,b,label"] + [f"{i},{i + 1},{i % 2}" for i in range(10)])
    info = bundle(path).preprocessing["csv"]
    x = read_features(write(tmp_path / "new.csv", ["b,a", "5,4", "7,6"]), info)
    assert x.tolist() == [[4.0, 5.0], [6.0, 7.0]]


# ------------------------------------------------------------------ one test per bad file


def error_of(path, **data):
    with pytest.raises(DataError) as info:
        bundle(path, **data)
    return str(info.value)


def test_missing_value_names_line_and_column(tmp_path):
    rows = ROWS.copy()
    rows[3] = rows[3].replace("-0.11", "")  # line 4, column 2
    msg = error_of(write(tmp_path / "m.csv", rows))
    assert "m.csv:4:2:" in msg and "missing value" in msg


def test_text_in_numeric_column_names_line_and_column(tmp_path):
    msg = error_of(write(tmp_path / "t.csv", ["a,b,y", "1,2,0", "3,four,1", "5,6,0", "7,8,1"]))
    assert "t.csv:3:2:" in msg and "'four'" in msg and "'b'" in msg


def test_ragged_row_names_line_and_column(tmp_path):
    rows = ROWS.copy()
    rows[6] = rows[6].rsplit(",", 2)[0]  # line 7 has 7 fields instead of 9
    msg = error_of(write(tmp_path / "r.csv", rows))
    assert "r.csv:7:8:" in msg and "ragged" in msg


def test_empty_file(tmp_path):
    msg = error_of(write(tmp_path / "e.csv", ["", "  "]))
    assert "e.csv:1:1:" in msg and "empty" in msg


def test_header_without_rows(tmp_path):
    msg = error_of(write(tmp_path / "h.csv", ["a,b,label"]), header=True)
    assert "h.csv:2:1:" in msg and "no data rows" in msg


def test_target_column_not_found_suggests(tmp_path):
    path = write(tmp_path / "n.csv", ["glucose,Outcome"] + [f"{i},{i % 2}" for i in range(6)])
    msg = error_of(path, target="outcome")
    assert "n.csv:1:" in msg and "'outcome' not found" in msg and "did you mean 'Outcome'" in msg


def test_target_index_out_of_range(tmp_path):
    msg = error_of(write(tmp_path / "o.csv", ROWS), target=9)
    assert "data.target" in msg and "9 columns" in msg


def test_target_with_a_single_class(tmp_path):
    path = write(tmp_path / "one.csv", ["x,label"] + [f"{i},yes" for i in range(6)])
    msg = error_of(path)
    assert "one.csv" in msg and "'label'" in msg and "single value 'yes'" in msg


def test_missing_file_names_its_path(tmp_path):
    msg = error_of(tmp_path / "nowhere.csv")
    assert "nowhere.csv" in msg and "not found" in msg


def test_truncated_gzip(tmp_path):
    path = write(tmp_path / "d.csv.gz", ROWS, gz=True)
    path.write_bytes(path.read_bytes()[:30])
    assert "d.csv.gz" in error_of(path)


def test_missing_path_key_is_a_config_error():
    with pytest.raises(ConfigError, match="data.path"):
        build_data(load_config({"data": {"source": "csv"}}))


def test_binary_labels_outside_0_1_name_the_value(tmp_path):
    path = write(tmp_path / "b.csv", [f"{i},{1 + i % 2}" for i in range(10)])  # labels 1 and 2
    msg = error_of(path)
    assert "label 2" in msg and "[0, 2)" in msg and "b.csv" in msg


def test_a_header_without_data_target_warns_and_the_target_name_is_in_the_info(tmp_path, capsys):
    """A header and the target in the middle: unset data.target trains on the last column; say which,
    and warn."""
    lines = ["age,outcome,weight"] + [f"{20 + i},{i % 2},{60.5 + 3.1 * i}" for i in range(12)]
    path = write(tmp_path / "people.csv", lines)
    b = bundle(path)
    assert "data.target is not set, so the last column 'weight' is the target" in capsys.readouterr().err
    assert b.info["target"] == "weight" and b.task == "regression"
    b = bundle(path, target="outcome")  # named: no warning
    assert bundle(write(tmp_path / "diabetes.csv", ROWS)).info["target"] == "col8"  # no header: no warning
    assert "data.target is not set" not in capsys.readouterr().err
    assert b.info["target"] == "outcome" and b.task == "binary"


def test_cli_prints_the_csv_warning_as_one_line(tmp_path, capsys):
    from conftest import cli_in_process

    lines = ["age,outcome,weight"] + [f"{20 + i},{i % 2},{60 + 3 * i}" for i in range(40)]
    path = write(tmp_path / "people.csv", lines)
    code, _, err = cli_in_process(
        capsys,
        "train",
        f"data.path={path}",
        "data.source=csv",
        "model.name=linear",
        "train.epochs=1",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    warning = [line for line in err.splitlines() if "data.target is not set" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
