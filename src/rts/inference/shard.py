"""Shards of one ``rts predict`` job: which inputs a shard runs, and which shard this process is.

A job is one input list (scenes, and/or a tile list over a mosaic) split over ``count`` shards,
each run by an engine task (a SLURM array task, a GCP Batch task, a Kubernetes Indexed Job pod, a
torchrun rank). Every shard computes the same assignment from the same inputs:

* the input list is cut into *units*: a whole scene (its outputs keep their names, so a scene is
  never split), or one row of a tile list (the listed tiles with the same top pixel row);
* units are ordered north to south, then west to east, so consecutive units lie side by side and a
  shard's units form a contiguous band;
* a unit weighs the passes it owns: a scene all of its passes; a tile row the passes touching its
  tiles that no earlier row touches (a pass touching two rows is counted once, in the first);
* the ordered units are cut into ``count`` contiguous runs whose weights differ by at most the
  heaviest unit (:func:`balanced_cuts`).

A shard of a tile list runs every pass touching its rows' tiles, as a chunk did before: the passes
along a shard border are run by both shards, so ``rts merge`` (a maximum) equals one run.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rts.errors import ConfigError

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class ShardSpec:
    """This process's shard: ``index`` of ``count`` (``count`` None: take it from the job manifest),
    the engine it came from, and the local rank that picks the GPU (torchrun), if any."""

    index: int
    count: int | None
    engine: str
    local_rank: int | None = None


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${key}={value!r}: not an integer; --shard auto reads the engine's task index from it") from None


def parse_shard(text: str | None, *, count: int | None = None, env: Mapping[str, str] | None = None) -> ShardSpec | None:
    """``--shard I/N`` or ``--shard auto`` (``count``: ``--shard-count``) into a :class:`ShardSpec`.

    ``auto`` reads, in this order: a SLURM array (``SLURM_ARRAY_TASK_ID``; count
    ``SLURM_ARRAY_TASK_MAX + 1``, else ``SLURM_ARRAY_TASK_COUNT``: arrays are 0-based,
    ``--array=0-(N-1)``), GCP Batch (``BATCH_TASK_INDEX``, ``BATCH_TASK_COUNT``), a Kubernetes
    Indexed Job (``JOB_COMPLETION_INDEX``; the count must be given, ``--shard-count``) and torchrun
    (``RANK``, ``WORLD_SIZE``; ``LOCAL_RANK`` picks the GPU). Under torchrun inside an array task,
    the task's ranks split its shard further: index ``task * WORLD_SIZE + RANK`` of
    ``tasks * WORLD_SIZE``. An explicit ``count`` overrides the engine's (a resubmission of some
    tasks, ``--array=3,7``, has a smaller engine count; the job manifest also keeps the count).

    Returns None for no ``--shard`` (one process runs everything).
    """
    env = os.environ if env is None else env
    if text is None:
        if count is not None:
            raise ConfigError("--shard-count without --shard: pass --shard auto (or --shard I/N)")
        return None
    if count is not None and count < 1:
        raise ConfigError(f"--shard-count {count}: must be >= 1")
    m = _SHARD_RE.match(text)
    if m:
        index, n = int(m.group(1)), int(m.group(2))
        if n < 1 or index >= n:
            raise ConfigError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. --shard 3/8")
        if count is not None and count != n:
            raise ConfigError(f"--shard {text} and --shard-count {count} disagree; give one of them")
        return ShardSpec(index, n, "manual")
    if text.strip() != "auto":
        raise ConfigError(f"--shard {text!r}: expected I/N (e.g. 3/8) or auto (the engine's task index)")
    outer: tuple[int, int | None, str] | None = None
    if _int(env, "SLURM_ARRAY_TASK_ID") is not None:
        task_max, task_count = _int(env, "SLURM_ARRAY_TASK_MAX"), _int(env, "SLURM_ARRAY_TASK_COUNT")
        outer = (_int(env, "SLURM_ARRAY_TASK_ID"), task_max + 1 if task_max is not None else task_count, "slurm")
    elif _int(env, "BATCH_TASK_INDEX") is not None:
        outer = (_int(env, "BATCH_TASK_INDEX"), _int(env, "BATCH_TASK_COUNT"), "gcp-batch")
    elif _int(env, "JOB_COMPLETION_INDEX") is not None:
        outer = (_int(env, "JOB_COMPLETION_INDEX"), None, "kubernetes")
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK")
    if outer is None and rank is None:
        raise ConfigError("--shard auto: no engine task index in the environment (SLURM_ARRAY_TASK_ID, BATCH_TASK_INDEX, "
                          "JOB_COMPLETION_INDEX, or torchrun's RANK/WORLD_SIZE); run it as an array task or pass --shard I/N")
    if rank is not None and world is None:
        raise ConfigError("--shard auto: RANK is set without WORLD_SIZE; start the ranks with torchrun")
    if outer is None:
        index, n, engine = rank, world, "torchrun"
        if count is not None and count != world:
            raise ConfigError(f"--shard-count {count}: torchrun runs WORLD_SIZE={world} ranks, one shard each; drop --shard-count")
    else:
        index, n, engine = outer
        if count is not None:
            n = count
        if engine == "kubernetes" and n is None:
            raise ConfigError("--shard auto under a Kubernetes Indexed Job: JOB_COMPLETION_INDEX has no count; pass "
                              "--shard-count N (the Job's .spec.completions)")
        if rank is not None and world and world > 1:
            index, n, engine = index * world + rank, (n * world if n is not None else None), f"{engine}+torchrun"
    if n is not None and not 0 <= index < n:
        raise ConfigError(f"--shard auto: task index {index} is not below the shard count {n} ({engine}); arrays are 0-based "
                          "(SLURM --array=0-(N-1)), or pass --shard-count N")
    return ShardSpec(index, n, engine, local_rank if rank is not None else None)


def balanced_cuts(weights: Sequence[int], count: int) -> list[int]:
    """Cut positions ``0 = c_0 <= c_1 <= ... <= c_count = len(weights)`` of the weights into
    ``count`` contiguous runs whose sums differ by at most ``max(weights)``.

    Such cuts exist for non-negative weights: with ``lo = floor(total / count)`` the sums can be
    kept within ``[a, a + max(weights)]`` for some ``a`` in ``[lo - max, lo]``. For a given ``a``
    the positions reachable after ``k`` runs form one interval (consecutive prefix sums are at most
    ``max`` apart, so the windows of neighbouring start positions overlap), which makes each
    candidate ``a`` a check of ``count`` bisections; ``a`` is tried from ``lo`` downwards.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    m = len(weights)
    prefix = [0]
    for w in weights:
        if w < 0:
            raise ValueError("weights must be non-negative")
        prefix.append(prefix[-1] + int(w))
    total, wmax = prefix[-1], max(weights, default=0)
    if count == 1 or m == 0:
        return [0] + [m] * count
    if wmax == 0:
        return [0] + [m] * count

    def first_at_least(x: float, lo: int = 0) -> int:
        return bisect.bisect_left(prefix, x, lo)

    def last_at_most(x: float, lo: int = 0) -> int:
        return bisect.bisect_right(prefix, x, lo) - 1

    def attempt(a: int) -> list[tuple[int, int]] | None:
        b = a + wmax
        reach = [(0, 0)]
        for _ in range(count):
            p, q = reach[-1]
            lo_j = first_at_least(prefix[p] + a, p)
            hi_j = last_at_most(prefix[q] + b, p)
            if lo_j > hi_j or lo_j > m:
                return None
            reach.append((lo_j, min(hi_j, m)))
        return reach if reach[-1][0] <= m <= reach[-1][1] else None

    lo = total // count
    for a in range(lo, max(lo - wmax, 0) - 1, -1):
        reach = attempt(a)
        if reach is None:
            continue
        cuts, j = [m], m  # walk back: the last start whose window holds j, inside the reachable interval
        for k in range(count - 1, -1, -1):
            p, q = reach[k]
            i = min(q, last_at_most(prefix[j] - a))
            while i >= p and prefix[j] - prefix[i] > a + wmax:  # cannot happen for reachable j; kept as a guard
                i += 1
            assert p <= i <= q and a <= prefix[j] - prefix[i] <= a + wmax
            cuts.append(i)
            j = i
        return cuts[::-1]
    raise AssertionError(f"no balanced cuts of {m} weights into {count}")  # excluded by the argument above


@dataclass(frozen=True)
class Unit:
    """A piece of the input list that one shard runs whole: a scene, or a row of a tile list."""

    kind: str  # "scene" or "tiles"
    source: str  # the scene path, or the tile list path
    order: tuple  # sort key: north to south, west to east
    passes: int  # passes it owns (its weight)
    items: tuple[int, ...] = field(default=())  # a scene: its index in the scene list; a tile row: its tiles' indices


def assign(units: Sequence[Unit], count: int) -> list[list[Unit]]:
    """The units of each of ``count`` shards: ordered spatially, cut by :func:`balanced_cuts`."""
    ordered = sorted(units, key=lambda u: u.order)
    cuts = balanced_cuts([u.passes for u in ordered], count)
    return [ordered[cuts[k] : cuts[k + 1]] for k in range(count)]


def tile_row_units(tile_list: str, boxes: Sequence[tuple[str, int, int, int, int]], *, tile_size: int, stride: int) -> list[Unit]:
    """One unit per row of listed tiles (same top pixel row), weighted by the passes it owns."""
    from rts.inference.scene import box_passes

    by_row: dict[int, list[int]] = {}
    for i, (_, r0, _, _, _) in enumerate(boxes):
        by_row.setdefault(r0, []).append(i)
    seen: set[tuple[int, int]] = set()
    units = []
    for r0 in sorted(by_row):
        idx = sorted(by_row[r0], key=lambda i: (boxes[i][2], i))
        cells = set()
        for i in idx:
            cells |= box_passes(*boxes[i][1:], tile_size=tile_size, stride=stride)
        owned = cells - seen
        seen |= cells
        units.append(Unit("tiles", str(tile_list), (1, r0, boxes[idx[0]][2]), len(owned), tuple(idx)))
    return units
