"""trainlab in a Jupyter notebook, executed for real with nbclient and an IPython kernel: a clean
display (the model summary as one collapsed block, a line per epoch, no tqdm fallback noise on stderr)
and the objects the cells return."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra (make test installs it)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra (make test installs it)")
pytest.importorskip("ipykernel", reason="ipykernel is in the test extra (make test installs it)")

CELLS = [
    'import trainlab\nrun = trainlab.train(None, {"train.epochs": 2}, out="runs/nb")\nrun',
    "import torch\nfrom sklearn.datasets import load_digits\nfrom torch.utils.data import TensorDataset\n"
    "d = load_digits()\nx = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16\n"
    "y = torch.tensor(d.target)\nmodel = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n"
    "trainer = trainlab.Trainer.from_datasets(model, TensorDataset(x, y), TensorDataset(x[:300], y[:300]),\n"
    "                                         epochs=2, device='cpu')\n"
    "history = trainer.fit()\nsorted(trainer.evaluate(TensorDataset(x[:300], y[:300])))",
]


def test_a_notebook_shows_a_clean_progress_display(tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the kernel inherits it: progress as a user gets it
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    train_cell, trainer_cell = nb.cells
    for cell in nb.cells:
        assert not [
            o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
        ]  # no bar frames
        assert not [o for o in cell.outputs if o.output_type == "error"]
    text = "".join(o.text for o in train_cell.outputs if o.output_type == "stream")
    assert text.count("epoch 1/2") == 1 and text.count("epoch 2/2") == 1  # one line per epoch, no frames
    assert "Total params" not in text  # the model summary is one collapsed HTML block, not 28 lines
    assert any(
        "text/html" in o.get("data", {}) for o in train_cell.outputs if o.output_type == "display_data"
    )
    assert "run directory: runs/nb" in text
    assert "Run(runs/nb, status=completed" in train_cell.outputs[-1]["data"]["text/plain"]
    lines = "".join(o.text for o in trainer_cell.outputs if o.output_type == "stream")
    assert lines.count("epoch 1/2") == 1 and lines.count("epoch 2/2") == 1
    assert trainer_cell.outputs[-1]["data"]["text/plain"] == "['accuracy', 'f1', 'loss']"
