"""Sharded ``rts predict`` jobs: the shards of one --out equal a single run; ``rts predict status``
and ``rts merge`` for complete, incomplete, failed, preempted and mixed jobs; SIGTERM is resumable.

The scenes and their single-process run come from the ``job_inputs`` fixture (conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from packages import write_package, write_scene  # noqa: E402

from rts.cli import main  # noqa: E402
from rts.errors import DataError, OutputError  # noqa: E402
from rts.inference.job import EXIT_RETRY, job_status, read_job  # noqa: E402
from rts.inference.merge import merge_chunks  # noqa: E402
from rts.inference.predict import DELAY_ENV, KILL_ENV, run_predict  # noqa: E402
from rts.inference.shard import ShardSpec  # noqa: E402

OUTPUTS = (".prob.tif", ".mask.tif", ".gpkg")
KW = dict(threshold=0.5, num_workers=0, batch_size=2)


@pytest.fixture(scope="module")
def setup(job_inputs):
    return job_inputs


def _shard(pkg, out, scenes, k, n, **kw):
    return run_predict(pkg, out, scenes=scenes, shard=ShardSpec(k, n, "manual"), **{**KW, **kw})


def _same_outputs(a: Path, b: Path, names: list[str]) -> None:
    for n in names:
        for suffix in OUTPUTS:
            assert (a / f"{n}{suffix}").read_bytes() == (b / f"{n}{suffix}").read_bytes(), f"{n}{suffix}"


def test_a_complete_job_equals_a_single_run_and_merges_to_the_same_bytes(setup, tmp_path, capsys):
    root, pkg, scenes = setup
    out = tmp_path / "job"
    for k in range(3):
        _shard(pkg, out, scenes, k, 3)
    job = read_job(out)
    assert job["count"] == 3 and sorted(r["input"] for s in job["shards"] for r in s) == [0, 1, 2, 3]
    loads = [sum(r["passes"] for r in s) for s in job["shards"]]
    assert sum(loads) == 30 and max(loads) - min(loads) <= 12  # balanced to one scene's worth
    _same_outputs(root / "single", out, [Path(s).stem for s in scenes])  # documented names, same bytes
    status = job_status(out)
    assert status["complete"] and status["resubmit"] == [] and status["counts"]["finished"] == 3
    assert main(["predict", "status", str(out)]) == 0
    assert "complete" in capsys.readouterr().out
    merged = merge_chunks(tmp_path / "merged", [out], blocksize=64)  # the job's shards are found by themselves
    assert merged["jobs"] == [job["job_id"]] and merged["tiles_processed"] == 30
    _same_outputs(root / "single_merged", tmp_path / "merged", ["merged"])
    # resumable: a merge whose outputs exist re-writes nothing
    before = (tmp_path / "merged" / "merged.prob.tif").stat().st_mtime_ns
    merge_chunks(tmp_path / "merged", [out], blocksize=64)
    assert (tmp_path / "merged" / "merged.prob.tif").stat().st_mtime_ns == before


def test_an_incomplete_job_lists_the_shards_to_resubmit_and_merge_refuses_it(setup, tmp_path, capsys):
    root, pkg, scenes = setup
    out = tmp_path / "job"
    _shard(pkg, out, scenes, 0, 4)
    _shard(pkg, out, scenes, 3, 4)
    status = job_status(out)
    assert not status["complete"] and status["resubmit"] == [1, 2]
    assert [s["state"] for s in status["shards"]] == ["finished", "never-started", "never-started", "finished"]
    assert all(r["state"] == "never-started" for r in status["shards"][1]["regions"])
    assert main(["predict", "status", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "--array=1-2" in printed and "shard 1: never-started" in printed
    with pytest.raises(DataError, match=r"job incomplete, 2 of 4 shard\(s\) not finished .*--array=1-2") as e:
        merge_chunks(tmp_path / "m", [out])
    assert "\n" not in str(e.value)
    assert main(["merge", "-o", str(tmp_path / "m"), str(out)]) == 3  # one line, a data error
    # a resubmission of the missing shards with the engine's smaller count: the manifest keeps 4
    for k in (1, 2):
        run_predict(pkg, out, scenes=scenes, shard=ShardSpec(k, 2 if k == 1 else 3, "slurm"), **KW)
    assert job_status(out)["complete"]
    merge_chunks(tmp_path / "m", [out], blocksize=64)
    _same_outputs(root / "single_merged", tmp_path / "m", ["merged"])


def test_a_failed_shard_is_named_with_its_error(setup, tmp_path, capsys):
    root, pkg, scenes = setup
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff" * 10)
    out = tmp_path / "job"
    inputs = [*scenes, str(broken)]
    for k in range(2):
        _shard(pkg, out, inputs, k, 2)
    status = job_status(out)
    failed = [s for s in status["shards"] if s["state"] == "failed"]
    assert len(failed) == 1 and status["resubmit"] == [failed[0]["index"]]
    (region,) = [r for r in failed[0]["regions"] if r["region"] == "broken"]
    assert region["state"] == "failed" and "broken.tif" in region["error"]
    assert main(["predict", "status", str(out)]) == 1
    assert "broken.tif" in capsys.readouterr().out
    with pytest.raises(DataError, match=rf"{failed[0]['index']}: failed .*broken.tif"):
        merge_chunks(tmp_path / "m", [out])


def test_mixed_jobs_are_refused(setup, tmp_path):
    root, pkg, scenes = setup
    out = tmp_path / "job"
    _shard(pkg, out, scenes, 0, 2)
    with pytest.raises(OutputError, match="holds a job of 2 shards, not 3"):
        _shard(pkg, out, scenes, 1, 3)
    with pytest.raises(OutputError, match="holds a job with other scenes"):
        _shard(pkg, out, scenes[:3], 1, 2)
    with pytest.raises(OutputError, match="holds a job with other threshold"):
        _shard(pkg, out, scenes, 1, 2, threshold=0.7)
    _shard(pkg, out, scenes, 1, 2)
    assert job_status(out)["complete"]
    # a shard status from another job's folder
    other = tmp_path / "other"
    _shard(pkg, other, scenes[:2], 0, 2)
    saved = (out / ".job" / "shard-0001.json").read_bytes()
    shutil.copy(other / ".job" / "shard-0000.json", out / ".job" / "shard-0001.json")
    status = job_status(out)
    assert status["mixed"] == [1] and not status["complete"]
    with pytest.raises(DataError, match="belong to another job"):
        merge_chunks(tmp_path / "m", [out])
    (out / ".job" / "shard-0001.json").write_bytes(saved)
    # outputs of a plain run in the job's folder
    run_predict(pkg, out, scenes=[str(write_scene(tmp_path / "extra.tif", np.full((3, 64, 64), 9, np.uint8)))], **KW)
    with pytest.raises(DataError, match="mixes a plain run with a job"):
        merge_chunks(tmp_path / "m", [out])
    (out / "run_log.json").unlink()
    with pytest.raises(DataError, match="extra.prob.tif: not a region of job"):
        merge_chunks(tmp_path / "m", [out])


def _cli(args: list[str], log: Path, env_extra: dict | None = None) -> subprocess.Popen:
    """``rts predict`` in a subprocess whose stderr goes to ``log``: a file, not a pipe, because the
    reader processes of a killed run may hold a pipe open after it is gone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RTS_HEARTBEAT_S": "0.5", **(env_extra or {})}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "rts", "predict", *args], stdout=subprocess.DEVNULL, stderr=f, env=env)


def _poll(check, what: str, bound_s: float = 60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound_s:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {bound_s} s: {what}")


def _manifest_lines(out: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in (out / ".work").glob("*/manifest.jsonl")) if (out / ".work").exists() else 0


def test_sigterm_finishes_the_batch_exits_75_and_the_shard_resumes_to_the_same_bytes(setup, tmp_path):
    root, pkg, scenes = setup
    out = tmp_path / "job"
    common = [*scenes, "--model", str(pkg), "--threshold", "0.5", "--workers", "1", "--batch-size", "2", "--device", "cpu",
              "-o", str(out), "--shard", "1/2"]
    log = tmp_path / "stderr.txt"
    proc = _cli(common, log, {DELAY_ENV: "0.3"})
    try:
        _poll(lambda: _manifest_lines(out) >= 1, "a first batch recorded")
        status = job_status(out)
        assert status["shards"][1]["state"] == "running" and status["shards"][0]["state"] == "never-started"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    err = log.read_text()
    assert proc.returncode == EXIT_RETRY, err
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    status = job_status(out)
    shard = status["shards"][1]
    assert shard["state"] == "preempted" and status["resubmit"] == [0, 1]
    stopped = [r for r in shard["regions"] if r["state"] == "preempted"]
    assert len(stopped) == 1 and 0 < stopped[0]["passes_done"] < stopped[0]["passes"]
    # SIGKILL (no chance to say anything): the status sees the process is gone
    common[common.index("--workers") + 1] = "0"  # the readers were exercised above; the rest is quicker without
    killed = _cli(common, log, {KILL_ENV: "2"})
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    shard = job_status(out)["shards"][1]
    assert shard["state"] == "failed" and "is gone" in shard["error"]
    resumed = _cli(common, log)
    resumed.wait(timeout=120)
    assert resumed.returncode == 0, log.read_text()
    assert job_status(out)["shards"][1]["state"] == "finished"
    names = [r["region"] for r in read_job(out)["shards"][1]]
    _same_outputs(root / "single", out, names)


def test_a_tile_list_job_merges_to_a_single_run_of_the_list(tmp_path):
    """Shards of one tile list over a mosaic: each runs every pass touching its rows' tiles, so the
    passes along shard borders are run by both sides and the merge equals one run (batch size 1:
    CPU convolutions differ by ~1e-5 with the batch composition)."""
    import csv

    import rasterio

    from packages import ORIGIN

    T = 64
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 120, (3, 4 * T + 16, 3 * T + 16), dtype=np.uint8)
    rgb[0, 50:140, 20:40] = 255  # crosses tile rows, so shard borders
    mosaic = write_scene(tmp_path / "mosaic.tif", rgb)
    tiles = tmp_path / "arctic.csv"
    with open(tiles, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tile_id", "minx", "miny", "maxx", "maxy"])
        for r in range(4):
            for c in range(3):
                if (r, c) != (3, 0):
                    w.writerow([f"cell_{r}_{c}", ORIGIN[0] + c * T * 3.0, ORIGIN[1] - (r + 1) * T * 3.0,
                                ORIGIN[0] + (c + 1) * T * 3.0, ORIGIN[1] - r * T * 3.0])
    pkg = write_package(tmp_path / "pkg")
    kw = dict(tiles=str(tiles), mosaic=str(mosaic), threshold=0.5, num_workers=0, batch_size=1)
    run_predict(pkg, tmp_path / "single", **kw)
    for k in range(3):
        run_predict(pkg, tmp_path / "job", shard=ShardSpec(k, 3, "manual"), **kw)
    job = read_job(tmp_path / "job")
    assert [len(s) for s in job["shards"]] == [1, 1, 1]  # one part of the list each
    assert sorted(i for s in job["shards"] for i in s[0]["tiles"]) == list(range(11))
    assert (tmp_path / "job" / "arctic.shard-0001-of-0003.prob.tif").exists()
    merged = merge_chunks(tmp_path / "merged", [tmp_path / "job"], blocksize=128)
    assert merged["outputs"]["prob"].endswith("arctic.prob.tif")  # a job of one tile list keeps its stem
    merge_chunks(tmp_path / "single_merged", [tmp_path / "single"], name="arctic", blocksize=128)
    with rasterio.open(tmp_path / "single" / "arctic.prob.tif") as a, rasterio.open(tmp_path / "merged" / "arctic.prob.tif") as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(1), b.read(1))
    for suffix in (".prob.tif", ".mask.tif"):
        assert (tmp_path / "merged" / f"arctic{suffix}").read_bytes() == (tmp_path / "single_merged" / f"arctic{suffix}").read_bytes()
    # polygons cut by shard borders are dissolved: the same shapes and attributes, mean_prob summed in
    # another order (as for chunks, test_merge.py)
    import pyogrio.raw
    import shapely

    (_, _, g1, a1), (m2, _, g2, a2) = (pyogrio.raw.read(str(p)) for p in (tmp_path / "single" / "arctic.gpkg", tmp_path / "merged" / "arctic.gpkg"))
    assert len(g1) == len(g2) > 0 and all(shapely.equals(shapely.from_wkb(g1), shapely.from_wkb(g2)))
    cols1, cols2 = dict(zip(m2["fields"], a1)), dict(zip(m2["fields"], a2))
    for key in ("rts_id", "area_m2", "perimeter_m", "max_prob", "detection_scale", "tile_ids"):
        assert cols1[key].tolist() == cols2[key].tolist(), key
    np.testing.assert_allclose(cols2["mean_prob"], cols1["mean_prob"], rtol=1e-9)
    assert merged["polygon_parts_dissolved"] > 0
