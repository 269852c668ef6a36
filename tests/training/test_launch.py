"""``rts.training.launch``: the one line and exit code of a failed launch, from torchelastic's own
record of the failed ranks (``ProcessFailure`` reading each rank's error file)."""

from __future__ import annotations

import json

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from rts.training.launch import failure_line


def failure(tmp_path, rank: int, exitcode: int, message: str | None = None) -> ProcessFailure:
    error_file = tmp_path / f"error{rank}.json"
    if message is not None:  # what rank_exit_on_error writes
        error_file.write_text(json.dumps({"message": message, "timestamp": 100 + rank, "exitcode": exitcode}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


@pytest.mark.parametrize("ranks, line, code", [
    # the rank's own line, whichever rank failed: rank 1's error with rank 0 stopped by the agent
    ({0: (143, None), 1: (3, "error: prepared/x: bad")}, "error: prepared/x: bad", 3),
    # every rank hit it: the lowest rank's line, once
    ({0: (2, "error: a"), 1: (2, "error: a")}, "error: a", 2),
    ({1: (-9, None)}, "error: training rank 1 (pid 1001) was killed by SIGKILL (SIGKILL is often the out-of-memory killer", 137),
    ({0: (1, None)}, "error: training rank 0 (pid 1000) exited with code 1; its output above says why", 1),
])
def test_failure_line(tmp_path, ranks, line, code):
    failures = {r: failure(tmp_path, r, c, m) for r, (c, m) in ranks.items()}
    got_line, got_code = failure_line(failures)
    assert got_line.startswith(line) and got_code == code
