"""``python audited.py EVENTS -m rts.experiments ARGS...``: run the experiments command line with an
audit hook that appends every file it opens and every command it starts to EVENTS (one JSON per
line, written at once, so a run killed with SIGKILL leaves its record)."""

import json
import os
import runpy
import sys

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def hook(event: str, args: tuple) -> None:
    if event == "open":  # args: path, mode (a str for open(), None for os.open), flags
        if not isinstance(args[0], (str, bytes, os.PathLike)):
            return  # an open file descriptor
        record = ["open", [os.fsdecode(args[0]), args[1]]]
    elif event == "subprocess.Popen":
        record = ["exec", [os.fspath(a) if isinstance(a, (str, os.PathLike)) else str(a) for a in (args[1] or [])]]
    else:
        return
    os.write(fd, (json.dumps(record, default=str) + "\n").encode())


sys.addaudithook(hook)
assert sys.argv[2] == "-m", sys.argv
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
