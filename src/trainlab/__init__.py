"""trainlab: a PyTorch training workbench.

    import trainlab
    run = trainlab.train("examples/mnist_mlp.yaml", {"optimizer.lr": 0.05})
    run.history, run.best, run.final, run.model, run.run_dir

    trainer = trainlab.Trainer(model, train_set, val_set, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, epochs=3)
    trainer.fit()
"""
from trainlab.config import Config, load_config
from trainlab.engine.callbacks import Callback
from trainlab.engine.loop import Trainer, evaluate
from trainlab.errors import CheckpointError, ConfigError, DataError, TrainlabError
from trainlab.run import Run, evaluate_run, load_run, train

__all__ = ["Callback", "CheckpointError", "Config", "ConfigError", "DataError", "Run", "Trainer", "TrainlabError",
           "evaluate", "evaluate_run", "load_config", "load_run", "train"]
__version__ = "0.1.0"
