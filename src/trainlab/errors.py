"""Errors a user can cause. The CLI turns every `TrainlabError` into a one-paragraph message and
exit code 2; anything else is a bug or a failure of the run and exits 1."""
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


class TrainingDiverged(Exception):
    """The loss or a gradient became NaN/Inf (exit 1, not a user error)."""


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


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 80, 40, 80


def short(value: Any) -> str:
    """A repr for messages, cut to a few dozen characters however big the value (a config may be hostile)."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        return f"<a {value.bit_length()}-bit integer>" if isinstance(value, int) else f"<a {type(value).__name__}>"
