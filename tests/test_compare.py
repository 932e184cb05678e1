"""`compare_runs`: config differences, best/final metrics, overlaid loss curves, bad run directories."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from test_report import assert_png_not_blank, make_regression_run
from trainlab.errors import TrainlabError
from trainlab.report import compare_runs


def test_compare_shows_the_differing_config_keys_and_metrics(tmp_path, capsys):
    a = make_regression_run(tmp_path / "lr_small")
    b = make_regression_run(tmp_path / "lr_big")
    (b / "config.yaml").write_text((b / "config.yaml").read_text().replace("lr: 0.01", "lr: 0.1"))
    result = compare_runs([a, b], out_dir=tmp_path / "cmp", echo=True)

    assert result["config_diff"] == {"optimizer.lr": [0.01, 0.1]}  # same name in both; nothing else differs
    lines = result["text"].splitlines()
    assert lines[0].split() == ["lr_small", "lr_big"]
    lr_row = next(line for line in lines if line.startswith("optimizer.lr"))
    assert lr_row.split() == ["optimizer.lr", "0.01", "0.1"]
    assert any(line.startswith("final.val.mse") for line in lines)
    assert any(line.startswith("best.value") for line in lines)
    assert "optimizer.lr" in capsys.readouterr().out  # printed, not only returned

    assert result["png"] == tmp_path / "cmp" / "compare.png"
    assert_png_not_blank(result["png"])
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "optimizer.lr" in page and "lr_big" in page
    srcs: list[str] = []

    class Imgs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            srcs.extend(v for k, v in attrs if k in ("src", "href"))

    Imgs().feed(page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")


def test_compare_defaults_to_a_folder_under_runs_and_labels_same_named_runs_by_path(tmp_path, monkeypatch):
    a = make_regression_run(tmp_path / "a" / "run")
    b = make_regression_run(tmp_path / "b" / "run")
    monkeypatch.chdir(tmp_path)
    result = compare_runs([a, b], echo=False)
    assert not (tmp_path / "compare.html").exists()  # never into the current folder (a project's root)
    assert (tmp_path / "runs" / "compare" / "compare.png").is_file()
    assert (tmp_path / "runs" / "compare" / "compare.html").is_file()
    compare_runs([a, b], echo=False)  # a second comparison keeps the first
    assert (tmp_path / "runs" / "compare-2" / "compare.html").is_file()
    assert result["header"][1:] == [str(a), str(b)]
    assert "no config differences" in result["text"]


def test_compare_names_a_missing_or_foreign_run_directory(tmp_path):
    a = make_regression_run(tmp_path / "a")
    with pytest.raises(TrainlabError, match="nope"):
        compare_runs([a, tmp_path / "nope"], out_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainlabError, match="empty.*not a trainlab run directory"):
        compare_runs([a, tmp_path / "empty"], out_dir=tmp_path)
    assert not (tmp_path / "compare.png").exists()  # nothing written before the check
