"""The errors a user can fix, and the exit code of each.

Every error the project raises on purpose derives from :class:`RtsError` and carries a message that
names the file or key, the problem and the fix. The ``rts`` command line and the DVC stages print
that message as one line and exit with the class's code, so scripts and queued experiments can
tell a bad parameter from bad data without parsing text. Anything else is a bug and keeps its
traceback.

| code | class | meaning |
|---|---|---|
| 2 | :class:`ConfigError` | a parameter or argument is unknown or impossible |
| 3 | :class:`DataError` | an input file or dataset is missing, unreadable or inconsistent |
| 4 | :class:`WeightsError` | requested model weights cannot be loaded |
| 5 | :class:`OutputError` | a result cannot be written (typically a full disk) |
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class RtsError(Exception):
    """An error the user can fix; ``exit_code`` is what the command line and the stages return."""

    exit_code = 1


class ConfigError(RtsError, ValueError):
    """A parameter is unknown or has an impossible value."""

    exit_code = 2


class DataError(RtsError, ValueError):
    """An input file or dataset is missing, unreadable or inconsistent; the message names it."""

    exit_code = 3


class WeightsError(RtsError, RuntimeError):
    """Encoder or model weights were requested but could not be loaded."""

    exit_code = 4


class OutputError(RtsError, RuntimeError):
    """A result could not be written; whatever was there before is untouched."""

    exit_code = 5


def one_line(err: RtsError) -> str:
    """The error as the one line a command prints (a multi-line report keeps its lines).

    An error raised in a DataLoader worker reaches the training process re-raised by PyTorch, as
    the same class with the worker's whole traceback as its message ("Caught OutputError in
    DataLoader worker process 0. Original Traceback ... rts.errors.OutputError: <message>"): the
    line printed is then the original message, with the worker named."""
    text = str(err)
    head, sep, rest = text.partition("\nOriginal Traceback (most recent call last):\n")
    if sep and head.startswith("Caught ") and " in DataLoader worker process " in head:
        last = next((line for line in reversed(rest.splitlines()) if line.strip()), "")
        prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
        if last.startswith(prefix):
            where = head[head.index(" in DataLoader worker process ") + 4:].rstrip(".")
            return f"error: {last[len(prefix):]} (in {where})"
    return f"error: {text}"


def exit_on_error(main: Callable[[], int], *, quiet: bool = False) -> int:
    """Run ``main``; an :class:`RtsError` prints one line to stderr (unless ``quiet``: the ranks
    other than 0 of a distributed stage) and becomes its exit code."""
    try:
        return int(main() or 0)
    except RtsError as e:
        if not quiet:
            print(one_line(e), file=sys.stderr, flush=True)
        return e.exit_code
