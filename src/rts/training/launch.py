"""``python -m rts.training.launch``: torchrun with one line instead of its failure report.

The train stage runs ``python -m rts.training.launch --standalone --nproc-per-node=N -m stages.train``
(``dvc.yaml``). It takes torchrun's arguments and launches through torchrun's own code
(``torch.distributed.run``: the same rendezvous, ``--max-restarts``, multi-node options), so a
run behaves as under ``torchrun`` until a rank fails. Then torchrun prints a ~50-line
``ChildFailedError`` report around the rank's message; this launcher prints the message once:

- a rank that stops on an :class:`rts.errors.RtsError` (bad data found after ``--check`` passed)
  hands its one line to the launcher through torchelastic's per-rank error file
  (:func:`rank_exit_on_error`); the launcher prints the line of the lowest failed rank and exits
  with that error's code, whichever rank or how many ranks failed;
- any other failure (a bug's traceback, already on stderr; a rank killed by a signal, e.g. the OOM
  killer) gets one line naming the rank and its exit status, and exit code 1 (``128 + signal``
  for a killed rank); a launcher stopped by a signal (Ctrl-C, ``dvc queue kill``) says so, exit
  ``128 + signal``.

Under a plain ``torchrun`` the ranks behave as before: rank 0 prints its error, the others are quiet.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from rts.errors import RtsError, one_line

LAUNCHER_ENV = "RTS_LAUNCHER"  # set by the launcher for its ranks: they leave printing to it
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # set by torchelastic for each rank


def rank_exit_on_error(main: Callable[[], int]) -> int:
    """Run a rank's ``main``; an :class:`RtsError` becomes its exit code and its one line.

    The line goes to torchelastic's error file of the rank (when there is one) for the launcher to
    print, and to stderr on rank 0 unless the launcher prints it (every rank hits the same bad
    input, and one line is enough).
    """
    rank = int(os.environ.get("RANK", "0"))
    try:
        return int(main() or 0)
    except RtsError as e:
        line = one_line(e)
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            tmp = f"{error_file}.tmp"
            with open(tmp, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time()), "exitcode": e.exit_code}, f)
            os.replace(tmp, error_file)
        if rank == 0 and not os.environ.get(LAUNCHER_ENV):
            print(line, file=sys.stderr, flush=True)
        return e.exit_code


class _DropFailureReport(logging.Filter):
    """torchelastic logs "failed (exitcode: ...)" before raising, and "Sending process ... closing
    signal SIGTERM" for each rank it stops after the first failure; the launcher's line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("failed (exitcode") or (msg.startswith("Sending process") and "closing signal" in msg))


def failure_line(failures: dict) -> tuple[str, int]:
    """The one line and exit code of a failed launch, from ``ChildFailedError.failures``
    ({global rank: ProcessFailure})."""
    reported = []
    for rank, f in sorted(failures.items()):
        data = f.error_file_data if isinstance(f.error_file_data, dict) else {}
        if isinstance(data.get("message"), str) and isinstance(data.get("exitcode"), int):
            reported.append((rank, data["message"], data["exitcode"]))
    if reported:
        _, message, code = reported[0]
        return message, code
    rank, f = min(failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    if f.exitcode < 0:
        try:
            name = signal.Signals(-f.exitcode).name
        except ValueError:
            name = f"signal {-f.exitcode}"
        hint = " (SIGKILL is often the out-of-memory killer: see `dmesg`)" if -f.exitcode == signal.SIGKILL else ""
        return f"error: training rank {rank} (pid {f.pid}) was killed by {name}{hint}", 128 - f.exitcode
    return f"error: training rank {rank} (pid {f.pid}) exited with code {f.exitcode}; its output above says why", 1


def main(argv: list[str] | None = None) -> int:
    """Launch like ``torchrun ARGS``; a failed rank is one line on stderr and a non-zero exit."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if "OMP_NUM_THREADS" not in os.environ and str(args.nproc_per_node).isdigit() and int(args.nproc_per_node) > 1:
        # what torchrun does, without its four-line banner before every run
        os.environ["OMP_NUM_THREADS"] = "1"
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_DropFailureReport())
    os.environ[LAUNCHER_ENV] = "1"
    try:
        run(args)
    except ChildFailedError as e:
        line, code = failure_line(e.failures)
        print(line, file=sys.stderr, flush=True)
        return code
    except SignalException as e:  # the launcher itself was stopped (Ctrl-C, `dvc queue kill`); the agent stopped the ranks
        print(f"error: training stopped by {e.sigval.name}; a re-run resumes from the last checkpoint written", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
