"""The `csv` source: a table of numeric features and one target column, from `.csv` or `.csv.gz`.

The notes' diabetes file is the model case: comma-separated floats, no header, the label last.
The header and the delimiter are detected unless `data.header` / `data.delimiter` say otherwise.
String class labels become class indices in sorted name order; the names are kept for `predict`.
Every problem in the file is a `DataError` naming `file:line:column` (1-based), like a compiler.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainlab.config import DataConfig
from trainlab.data.base import ArrayDataset, SourceData
from trainlab.errors import ConfigError, DataError, did_you_mean, warn
from trainlab.registry import DATASETS

MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}  # cells read as "no value" (case-insensitive)
DELIMITERS = ",;\t|"


@dataclass
class Table:
    """The cells of a CSV file as strings, with the file line of every data row."""

    path: str
    names: list[str]  # column names: the header's, or col0, col1, ... when there is none
    header: bool
    delimiter: str
    rows: list[list[str]]  # data rows only
    lines: list[int]  # 1-based file line of each data row
    header_line: int = 0  # 1-based line of the header (0: no header)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: cannot decompress this gzip file ({e}); is it truncated?") from None
    try:
        return raw.decode("utf-8-sig")  # drops a byte-order mark that Excel writes
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} is not UTF-8 (an encoding problem: the file is "
            f"probably latin-1 / Windows-1252); save it as UTF-8 (e.g. Excel's 'CSV UTF-8')"
        ) from None


FLOAT32_MAX = float(np.finfo(np.float32).max)  # a larger feature becomes inf in the (N, F) float32 tensor


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _detect_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","  # one column, or nothing to tell: the comma of Comma-Separated Values


def _detect_header(rows: list[list[str]], sample: str) -> bool:
    """A header is a first row with text where the rows below hold numbers; else ask csv.Sniffer."""
    first, rest = rows[0], rows[1:201]
    if not rest:
        return not all(_is_number(c) or c.strip().lower() in MISSING for c in first)
    for j, cell in enumerate(first):
        below = [r[j] for r in rest if r[j].strip().lower() not in MISSING]
        if cell.strip() and not _is_number(cell) and below and all(_is_number(c) for c in below):
            return True
    if all(_is_number(c) for c in first if c.strip()):
        return False
    try:
        return csv.Sniffer().has_header(sample)
    except csv.Error:
        return False


def read_table(path: str | Path, header: bool | None = None, delimiter: str | None = None) -> Table:
    """Read a CSV into a `Table`: detects delimiter and header (unless given), checks row lengths."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    text = _read_text(path)
    sample = text[:65536]
    delimiter = delimiter or _detect_delimiter(sample)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, lines = [], []
    try:
        for row in reader:
            if row and any(c.strip() for c in row):  # blank lines are skipped
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not readable as CSV: {e}") from None
    if not rows:
        raise DataError(
            f"{path}:1:1: the file is empty (no rows); data.path must name a CSV with one sample per row"
        )
    # "1,2,3," on every row: a trailing delimiter, not an empty last column.
    if len(rows[0]) > 1 and all(len(r) == len(rows[0]) and not r[-1].strip() for r in rows):
        rows = [r[:-1] for r in rows]
    width = len(rows[0])
    for row, line in zip(rows[1:], lines[1:]):
        if len(row) != width:
            col = min(len(row), width) + 1
            raise DataError(
                f"{path}:{line}:{col}: ragged row: {len(row)} fields where line {lines[0]} has {width} "
                f"(delimiter {delimiter!r}); every row needs the same columns"
            )
    if header is None:
        header = _detect_header(rows, sample)
    header_line = 0
    if header:
        names = [c.strip() or f"col{j}" for j, c in enumerate(rows[0])]
        header_line = lines[0]
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise DataError(
                f"{path}:{header_line + 1}:1: the file has a header (line {header_line}) but no data rows"
            )
    else:
        names = [f"col{j}" for j in range(width)]
    return Table(str(path), names, bool(header), delimiter, rows, lines, header_line)


def resolve_column(table: Table, spec: str | int, key: str) -> int:
    """The 0-based index of a column given by name or by index (negative counts from the end)."""
    n = len(table.names)
    if isinstance(spec, str) and spec not in table.names and re.fullmatch(r"\s*-?\d+\s*", spec):
        spec = int(spec)
    if isinstance(spec, int):
        if not -n <= spec < n:
            raise DataError(
                f"{key}: column {spec} is out of range: {table.path} has {n} columns "
                f"(indexes 0..{n - 1}, or -1..-{n} from the end)"
            )
        return spec % n
    if spec in table.names:
        return table.names.index(spec)
    if not table.header:
        raise DataError(
            f"{key}: no column named {spec!r}: {table.path} has no header row (detected), so its "
            f"columns are col0..col{n - 1}; give the column's index or set data.header: true"
        )
    raise DataError(
        f"{table.path}:{table.header_line}: {key}: column {spec!r} not found"
        f"{did_you_mean(spec, table.names)}; the columns are: {', '.join(table.names)}"
    )


def _cell_error(table: Table, i: int, j: int) -> DataError | None:
    """The problem with data cell (row i, column j) of a numeric column, or None when it is a number."""
    cell = table.rows[i][j]
    where = f"{table.path}:{table.lines[i]}:{j + 1}"
    if cell.strip().lower() in MISSING:
        return DataError(
            f"{where}: missing value in column {table.names[j]!r}; fill it in or drop the row "
            f"(trainlab does not guess missing values)"
        )
    try:
        value = float(cell)
    except ValueError:
        return DataError(
            f"{where}: text {cell.strip()!r} in numeric column {table.names[j]!r}; features must be "
            f"numbers (leave a text column out with data.features)"
        )
    if not math.isfinite(value):
        return DataError(f"{where}: {cell.strip()!r} in column {table.names[j]!r} is not a finite number")
    if abs(value) > FLOAT32_MAX:
        return DataError(
            f"{where}: {cell.strip()!r} in column {table.names[j]!r} is beyond the float32 range "
            f"(±3.4e38) that training computes in; rescale the column"
        )
    return None


def parse_numeric(table: Table, columns: list[int], label_column: int | None = None) -> np.ndarray:
    """(N, len(columns)) float64 values; the first bad cell in file order is a DataError.

    `label_column` (string class labels) is only checked for missing values.
    """
    try:
        values = np.array([[row[j] for j in columns] for row in table.rows], dtype=np.float64)
        ok = bool((np.abs(values) <= FLOAT32_MAX).all())  # False for NaN and Inf too
    except ValueError:
        ok = False
    if label_column is not None:
        ok = ok and all(row[label_column].strip().lower() not in MISSING for row in table.rows)
    if ok:
        return values.reshape(len(table.rows), len(columns))
    for i, row in enumerate(table.rows):  # slow path: find the first bad cell, row by row
        for j in sorted([*columns, *([label_column] if label_column is not None else [])]):
            if j == label_column:
                if row[j].strip().lower() in MISSING:
                    raise DataError(
                        f"{table.path}:{table.lines[i]}:{j + 1}: missing value in target column "
                        f"{table.names[j]!r}; every row needs a label"
                    )
            elif (error := _cell_error(table, i, j)) is not None:
                raise error
    raise AssertionError("unreachable: a bad cell was reported by numpy but not found")


@DATASETS.register(
    "csv",
    "a CSV file (data.path, .csv or .csv.gz): numeric features, target column data.target "
    "(default the last); task from the target",
)
def csv_source(cfg: DataConfig) -> SourceData:
    """Features (N, F) float32; target int64 class indices (string labels) or float32 values (numbers)."""
    if not cfg.path:
        raise ConfigError("data.path: the csv source needs data.path, the CSV file to read (.csv or .csv.gz)")
    table = read_table(cfg.path, cfg.header, cfg.delimiter)
    target = resolve_column(table, cfg.target if cfg.target is not None else -1, "data.target")
    if cfg.target is None and table.header:
        # a header names the columns: the last one is a guess worth saying out loud
        warn(
            f"{table.path}: data.target is not set, so the last column {table.names[target]!r} is the "
            f"target; the header names the columns {', '.join(table.names)}: set data.target to the one to "
            "predict (this warning then goes away)"
        )
    if cfg.features is not None:
        features = [resolve_column(table, f, "data.features") for f in cfg.features]
        if target in features:
            raise ConfigError(f"data.features: lists the target column {table.names[target]!r}")
        if len(set(features)) != len(features):
            raise ConfigError(f"data.features: a column is listed twice: {cfg.features}")
    else:
        features = [j for j in range(len(table.names)) if j != target]
    if not features:
        raise DataError(
            f"{table.path}: only the target column {table.names[target]!r}; there are no feature columns"
        )

    labels = [row[target].strip() for row in table.rows]
    present = [c for c in labels if c.lower() not in MISSING]
    numeric_target = sum(_is_number(c) for c in present) * 2 > len(
        present
    )  # mostly numbers: a numeric column
    values = parse_numeric(
        table, features + [target] if numeric_target else features, None if numeric_target else target
    )
    x = torch.as_tensor(values[:, : len(features)], dtype=torch.float32)  # (N, F)
    distinct = sorted(set(labels))
    if len(distinct) == 1:
        raise DataError(
            f"{table.path}: target column {table.names[target]!r} (column {target + 1}) holds the single "
            f"value {distinct[0]!r} in all {len(labels)} rows, so there is nothing to learn; check "
            f"data.target (the columns are: {', '.join(table.names)})"
        )
    class_names = None
    if numeric_target:
        y = torch.as_tensor(values[:, -1], dtype=torch.float32)  # (N,); build_data decides class or value
    else:
        class_names = distinct
        lookup = {name: i for i, name in enumerate(class_names)}
        y = torch.as_tensor([lookup[c] for c in labels], dtype=torch.int64)
    feature_names = [table.names[j] for j in features]
    csv_info = {
        "columns": table.names,
        "header": table.header,
        "delimiter": table.delimiter,
        "target": table.names[target],
        "features": feature_names,
    }
    # info["target"]: the target column's name, for the console's data line and summary.json's data_info
    return SourceData(
        train=ArrayDataset(x, y),
        class_names=class_names,
        feature_names=feature_names,
        info={
            "path": table.path,
            "rows": len(table.rows),
            "target": table.names[target],
            "preprocessing": {"csv": csv_info},
        },
    )


def read_features(path: str | Path, csv_info: dict) -> torch.Tensor:
    """(N, F) float32 features of a CSV for `predict`, picked like the training file's
    (`preprocessing["csv"]`).

    A file with a header is matched by column names (the target column may be absent); one without a
    header must have either the training file's columns or just the feature columns, in order.
    """
    table = read_table(path, None, csv_info.get("delimiter"))
    wanted = csv_info["features"]
    if table.header and all(name in table.names for name in wanted):
        columns = [table.names.index(name) for name in wanted]
    elif table.header and csv_info.get("header"):
        missing = next(name for name in wanted if name not in table.names)
        raise DataError(
            f"{table.path}:{table.header_line}: feature column {missing!r} not found"
            f"{did_you_mean(missing, table.names)}; the model was trained on: {', '.join(wanted)}"
        )
    elif len(table.names) == len(wanted):
        columns = list(range(len(wanted)))
    elif len(table.names) == len(csv_info["columns"]):
        columns = [csv_info["columns"].index(name) for name in wanted]
    else:
        raise DataError(
            f"{table.path}: {len(table.names)} columns, but the model takes {len(wanted)} features "
            f"({', '.join(wanted)}) from a file of {len(csv_info['columns'])} columns"
        )
    return torch.as_tensor(parse_numeric(table, columns), dtype=torch.float32)
