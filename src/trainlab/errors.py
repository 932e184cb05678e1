"""Errors a user can cause. The CLI turns every `TrainlabError` into a one-paragraph message and
exit code 2; a `RunFailed` (the run itself failed: it diverged, or ran out of device memory) into a
message and exit code 1; anything else is a bug and exits 1 with its traceback."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any


class TrainlabError(Exception):
    """Bad usage, config, data or checkpoint: the message names the key, file or row at fault."""

    exit_code = 2


class ConfigError(TrainlabError):
    """A config key or value is wrong."""


class DataError(TrainlabError):
    """A data file or dataset is wrong (names the file, line or sample)."""


class CheckpointError(TrainlabError):
    """A checkpoint is missing, corrupt or unsafe."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the current step finished and last.pt was written (exit 130/143)."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


class RunFailed(Exception):
    """The run failed for a reason that is neither bad input nor a bug (exit 1, a message, no traceback)."""


class TrainingDiverged(RunFailed):
    """The loss or a gradient became NaN/Inf (exit 1, not a user error)."""


class OutOfMemory(RunFailed):
    """The device ran out of memory in a training or evaluation step (exit 1): a resource failure,
    not bad input; the message names the batch size and what to change. Raised from the step, so
    no checkpoint is written from the failed step (see `engine.device.out_of_memory`)."""


def divergence_advice(train_cfg: Any, checkpoint_dir: Any = None, bad: Iterable[str] = ()) -> str:
    """The end of a TrainingDiverged message, true to this run: which checkpoints keep the last finite
    weights (only those that exist), what `bad` tensors are (BatchNorm running statistics are named as
    such), and only the remedies not already in use (`train_cfg`: the config's `train` section)."""
    from pathlib import Path

    kept = [
        n
        for n in ("last.pt", "best.pt")
        if checkpoint_dir is not None and (Path(checkpoint_dir) / n).is_file()
    ]
    parts = [
        f"{' and '.join(kept)} keep{'s' if len(kept) == 1 else ''} the last finite weights"
        if kept
        else "no checkpoint was written before it"
    ]
    stats = [b for b in bad if b.endswith(("running_mean", "running_var"))]
    if stats:
        parts.append(
            f"the NaN/Inf is in BatchNorm running statistics ({', '.join(stats[:3])}): a batch of "
            f"non-finite or huge activations updated them; check the inputs' scale or add grad_clip"
        )
    remedies = ["a lower optimizer.lr"]
    if getattr(train_cfg, "grad_clip", None) is None:
        remedies.append("train.grad_clip")
    if getattr(train_cfg, "nan_policy", "stop") != "skip":
        remedies.append("train.nan_policy=skip")
    return (
        "; ".join(parts)
        + ". Try "
        + (", ".join(remedies[:-1]) + " or " + remedies[-1] if len(remedies) > 1 else remedies[0])
        + "."
    )


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean 'a', 'b'?)' or '' when nothing is close."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"


def warn(message: str) -> None:
    """A one-line warning for the user on stderr (a setting was adjusted, a result looks wrong)."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 80, 40, 80


def short(value: Any) -> str:
    """A repr for messages, cut to a few dozen characters however big the value (a config may be hostile)."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        return (
            f"<a {value.bit_length()}-bit integer>"
            if isinstance(value, int)
            else f"<a {type(value).__name__}>"
        )
