"""Shard assignment (``rts predict --shard``): engine environments, balance and pass coverage.

The property tests draw random scene sizes, random tile lists (a random subset of a grid of cells,
random cell size, tile size and stride) and random shard counts, and check that every pass is run
by exactly one shard or by the shards sharing its border, and that the shards' pass counts differ
by at most one scene's or tile row's worth.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rts.errors import ConfigError
from rts.inference.scene import box_passes, grid_positions
from rts.inference.shard import Unit, assign, balanced_cuts, parse_shard, tile_row_units


@pytest.mark.parametrize(
    "text, count, env, expected",
    [
        ("3/8", None, {}, (3, 8, "manual", None)),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"}, (2, 4, "slurm", None)),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4, "slurm", None)),
        # a resubmission of some tasks (--array=3,7): the count comes from --shard-count or the job manifest
        ("auto", 8, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "7",
                     "SLURM_ARRAY_TASK_COUNT": "2"}, (7, 8, "slurm", None)),
        ("auto", None, {"BATCH_TASK_INDEX": "5", "BATCH_TASK_COUNT": "6"}, (5, 6, "gcp-batch", None)),
        ("auto", 4, {"JOB_COMPLETION_INDEX": "1"}, (1, 4, "kubernetes", None)),
        ("auto", None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, (3, 8, "torchrun", 3)),
        # torchrun inside an array task: the task's ranks split it further
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MAX": "1", "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"},
         (6, 8, "slurm+torchrun", 2)),
    ],
)
def test_shard_from_flag_and_engine_environment(text, count, env, expected):
    spec = parse_shard(text, count=count, env=env)
    assert (spec.index, spec.count, spec.engine, spec.local_rank) == expected


@pytest.mark.parametrize(
    "text, count, env, message",
    [
        ("8/8", None, {}, "0 <= I < N"),
        ("x", None, {}, "expected I/N"),
        ("auto", None, {}, "no engine task index"),
        ("auto", None, {"JOB_COMPLETION_INDEX": "1"}, "--shard-count N"),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"}, "0-based"),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "a"}, "SLURM_ARRAY_TASK_ID"),
        (None, 4, {}, "--shard auto"),
    ],
)
def test_bad_shard_arguments_are_one_line_errors(text, count, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(text, count=count, env=env)


def test_no_shard_flag_is_one_process():
    assert parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "1"}) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=30), st.integers(1, 12))
def test_balanced_cuts_differ_by_at_most_the_heaviest_unit(weights, count):
    cuts = balanced_cuts(weights, count)
    assert len(cuts) == count + 1 and cuts[0] == 0 and cuts[-1] == len(weights)
    assert all(a <= b for a, b in zip(cuts, cuts[1:]))
    loads = [sum(weights[cuts[k] : cuts[k + 1]]) for k in range(count)]
    assert max(loads) - min(loads) <= max(weights, default=0)


def test_balanced_cuts_match_a_brute_force_search_bound():
    rng = random.Random(0)
    for _ in range(300):
        w = [rng.randint(0, 9) for _ in range(rng.randint(1, 7))]
        n = rng.randint(1, 4)
        best = min(max(ls) - min(ls) for cs in itertools.combinations_with_replacement(range(len(w) + 1), n - 1)
                   for ls in [[sum(w[a:b]) for a, b in zip((0, *cs), (*cs, len(w)))]])
        loads = [sum(w[a:b]) for a, b in zip(balanced_cuts(w, n), balanced_cuts(w, n)[1:])]
        assert max(loads) - min(loads) <= max(max(w), best)


def test_a_large_job_is_cut_quickly():
    rng = random.Random(1)
    weights = [rng.randint(500, 1500) for _ in range(20000)]  # ~tile rows of a pan-Arctic list
    cuts = balanced_cuts(weights, 1000)
    loads = [sum(weights[a:b]) for a, b in zip(cuts, cuts[1:])]
    assert max(loads) - min(loads) <= max(weights)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 700), st.integers(1, 700)), min_size=1, max_size=25), st.integers(1, 10),
       st.sampled_from([(64, 32), (64, 64), (128, 32), (512, 256)]), st.randoms(use_true_random=False))
def test_scenes_run_once_each_balanced_by_passes(sizes, count, tile_stride, rnd):
    tile, stride = tile_stride
    units = [Unit("scene", f"s{i}.tif", (0, -float(rnd.randint(0, 5)), float(i), f"s{i}.tif"),
                  len(grid_positions(h, tile, stride)) * len(grid_positions(w, tile, stride)), (i,))
             for i, (h, w) in enumerate(sizes)]
    shuffled = units[:]
    rnd.shuffle(shuffled)
    shards = assign(units, count)
    assert shards == assign(shuffled, count)  # deterministic: the input order does not matter
    run = [u.items[0] for s in shards for u in s]
    assert sorted(run) == list(range(len(sizes)))  # every scene (so every pass) by exactly one shard
    loads = [sum(u.passes for u in s) for s in shards]
    assert max(loads) - min(loads) <= max(u.passes for u in units)
    order = sorted(units, key=lambda u: u.order)  # contiguous in the north-to-south order
    flat = [u for s in shards for u in s]
    assert flat == order


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 12), st.sampled_from([(64, 32), (64, 64), (64, 16), (128, 32)]),
       st.sampled_from([48, 64, 100]), st.randoms(use_true_random=False))
def test_tile_list_passes_run_by_one_shard_or_the_shards_sharing_its_border(rows, cols, count, tile_stride, cell, rnd):
    tile, stride = tile_stride
    cells = [(r, c) for r in range(rows) for c in range(cols) if rnd.random() < 0.7] or [(0, 0)]
    rnd.shuffle(cells)
    boxes = [(f"t{r}_{c}", r * cell, c * cell, (r + 1) * cell, (c + 1) * cell) for r, c in cells]
    units = tile_row_units("list.csv", boxes, tile_size=tile, stride=stride)
    shards = assign(units, count)
    per_box = [box_passes(*b[1:], tile_size=tile, stride=stride) for b in boxes]
    single = set().union(*per_box)
    runs = [set().union(set(), *(per_box[i] for u in s for i in u.items)) for s in shards]
    assert set().union(*runs) == single  # every pass of a single run is run
    assert sorted(i for s in shards for u in s for i in u.items) == list(range(len(boxes)))  # each tile in one shard
    for p in single:
        # run by one shard, or by each shard that holds a tile it touches (the passes of their shared border)
        by = {k for k, r in enumerate(runs) if p in r}
        assert by == {k for k, s in enumerate(shards) if any(p in per_box[i] for u in s for i in u.items)}
    owned = [sum(u.passes for u in s) for s in shards]
    assert sum(owned) == len(single)
    heaviest = max(u.passes for u in units)
    assert max(owned) - min(owned) <= heaviest  # balanced by passes, to one tile row's worth
    # beyond what it owns, a shard runs the passes of its border: those of its rows a pass of an earlier row reaches
    reach = -(-tile // cell)  # rows a pass spans
    row_passes = max(len(set().union(*(per_box[i] for i in u.items))) for u in units)
    for s, r, o in zip(shards, runs, owned):
        assert len(r) - o <= reach * row_passes
