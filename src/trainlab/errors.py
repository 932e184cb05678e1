"""Errors a user can cause. The CLI turns every `TrainlabError` into a one-paragraph message and
exit code 2; a `RunFailed` (the run itself failed: it diverged, or ran out of device memory) into a
message and exit code 1; anything else is a bug and exits 1 with its traceback."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


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
