"""A lock held by a thread of the parent, and a child that tries to take it: what a forked process
inherits (the lock, held by a thread that does not exist in the child) against what a
forkserver process starts with (this module imported afresh, the lock free)."""

from __future__ import annotations

import threading

LOCK = threading.Lock()


def try_lock(result) -> None:
    """Put into ``result`` (a queue) whether this process could take :data:`LOCK` within 2 s."""
    result.put(LOCK.acquire(timeout=2.0))
