"""trainlab: a PyTorch training workbench.

    import trainlab
    run = trainlab.train("examples/mnist_mlp.yaml", {"optimizer.lr": 0.05})
    run.history, run.best, run.final, run.model, run.run_dir

    trainer = trainlab.Trainer.from_datasets(model, train_set, val_set, loss_fn=nn.CrossEntropyLoss(),
                                             optimizer=opt, epochs=3)
    trainer.fit()

Attributes are imported on first use, so that `trainlab --help` and config errors answer quickly.
"""

import importlib as _importlib

_EXPORTS = {
    "Config": "trainlab.config",
    "load_config": "trainlab.config",
    "TrainConfig": "trainlab.config",
    "Callback": "trainlab.engine.callbacks",
    "Trainer": "trainlab.engine.loop",
    "evaluate": "trainlab.engine.evaluate",
    "CheckpointError": "trainlab.errors",
    "ConfigError": "trainlab.errors",
    "DataError": "trainlab.errors",
    "TrainlabError": "trainlab.errors",
    "export_run": "trainlab.export",
    "Run": "trainlab.run",
    "train": "trainlab.run",
    "evaluate_run": "trainlab.finished",
    "load_run": "trainlab.finished",
    "run_sweep": "trainlab.sweep",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
