"""The README's snippets run as written: its Python blocks, its shell commands (on built-in data, in a
scratch folder with the repository's examples/), and its YAML config.

A block preceded by `<!-- readme-test: skip (why) -->` is not run (`make demo`, placeholders such as
CONFIG.yaml, other machines). In a shell block, `trainlab ARGS` runs as `python -m trainlab ARGS`
and `source .venv/bin/activate` is what this interpreter already is; any other command fails the test
until it is supported here or its block is marked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\s*\n)?```(\w*)\n(.*?)```", re.DOTALL)

pytestmark = pytest.mark.usefixtures("one_thread")


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of one language, in order, without the skipped ones."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [body for skip, lang, body in BLOCK.findall(text) if lang == language and not skip]


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working folder that sees the repository's examples/ (runs/ is written here, not in the repo)."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_runnable_blocks_and_marks_the_rest():
    assert len(blocks("python")) >= 2 and len(blocks("sh")) >= 1 and len(blocks("yaml")) >= 1
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "```sh\nmake demo" in text and "readme-test: skip" in text


def test_shell_commands_run_on_built_in_data(scratch):
    commands = []
    for body in blocks("sh"):
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[:2] == ["source", ".venv/bin/activate"]:
                continue  # this interpreter is the venv's
            assert words[0] in ("trainlab", ".venv/bin/trainlab"), (
                f"README command not run by this test: {line!r}"
            )
            commands.append(words[1:])
    assert ["train", "examples/digits_cnn.yaml", "train.epochs=3"] in commands
    for args in commands:
        proc = run_cli(*args, cwd=scratch, timeout=600)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        if args[0] == "lr-find":
            assert "suggested learning rate:" in proc.stdout
            assert (scratch / "runs" / "digits_cnn" / "lr_find.png").is_file()
    assert sorted(p.name for p in (scratch / "runs").iterdir()) == [
        "digits_cnn"
    ]  # lr-find added no run folder


def test_python_blocks_run_in_order(scratch):
    import torch

    namespace: dict = {}
    for body in blocks("python"):
        exec(compile(body, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert (
        isinstance(namespace["run"].model, torch.nn.Module)
        and (scratch / "runs" / "lr001" / "summary.json").is_file()
    )
    assert len(namespace["history"]) == 3  # three epochs of the Trainer example


def test_the_headline_config_is_the_offline_mnist1d_example():
    import yaml

    from trainlab.config import load_config

    (headline, *_) = blocks("yaml")
    assert (
        load_config(yaml.safe_load(headline)).to_dict()
        == load_config(ROOT / "examples" / "mnist1d.yaml").to_dict()
    )
    assert "root:" not in headline and "download" not in headline  # nothing to fetch
