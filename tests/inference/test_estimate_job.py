"""``rts estimate --shards``: wall time and cost of a sharded inference job from measured rates."""

from __future__ import annotations

import json

import pytest

from rts.cli import main
from rts.estimate import EstimateError, inference_job, inference_projection, rates_from_run_log


def _inference():
    # 1,000 km² at 3 m: 111.1 M px; 512 px tiles of 2.36 km² -> 424 locations x 4 passes = 1,696 passes
    return inference_projection(area_km2=1000.0, tile_size=512, stride=256, n_scales=1, tta_views=1, infer_tiles_per_s=100.0,
                                gpus_per_node=8)


@pytest.mark.parametrize(
    "passes_per_s, mpx_per_s, workers, shards, bound, wall_h",
    [
        (1.0, 1000.0, 1, 4, "passes", 1696 / 4 / 3600),  # writes are instant: 424 passes per shard at 1/s
        (1000.0, 0.01, 1, 4, "writes", 1000e6 / 9 / 1e6 / 4 / 0.01 / 3600),  # 27.8 Mpx per shard at 0.01 Mpx/s
        (1000.0, 0.01, 2, 4, "writes", 1000e6 / 9 / 1e6 / 4 / 0.02 / 3600),  # 2 workers: half the time
    ],
)
def test_wall_time_is_the_slower_of_passes_and_writes_by_hand(passes_per_s, mpx_per_s, workers, shards, bound, wall_h):
    inf = _inference()
    assert inf["tile_passes"] == 1696
    job = inference_job(inf, passes_per_s=passes_per_s, write_mpx_per_s=mpx_per_s, write_workers=workers, shards=shards,
                        price_per_gpu_hour=10.0)
    assert job["bound"] == bound
    assert job["wall_hours"] == pytest.approx(wall_h)
    assert job["gpu_hours"] == pytest.approx(wall_h * shards) and job["cost"] == pytest.approx(wall_h * shards * 10.0)


def test_bad_rates_are_an_error():
    with pytest.raises(EstimateError, match="rates > 0"):
        inference_job(_inference(), passes_per_s=0, write_mpx_per_s=1, write_workers=1, shards=1, price_per_gpu_hour=1)


def test_rates_are_read_from_a_predict_run_log_and_the_cli_prints_the_job(job_inputs, tmp_path, capsys):
    root, _, _ = job_inputs
    run_log = root / "single" / "run_log.json"
    passes, mpx = rates_from_run_log(run_log)
    saved = json.loads(run_log.read_text())
    assert passes == pytest.approx(sum(r["tiles_run"] for r in saved["regions"]) / sum(r["timing"]["passes_s"] for r in saved["regions"]))
    assert mpx > 0
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--train-images-per-s", "100", "--shards", "64", "--predict-log", str(run_log), "--write-workers", "4",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Sharded job: 64 shards" in printed and "wall time" in printed
    job = json.loads(out.read_text())["inference_job"]
    assert job["shards"] == 64 and job["passes_per_s_per_shard"] == pytest.approx(passes) and job["write_workers"] == 4
    assert main(["estimate", "--train-images-per-s", "100", "--shards", "8"]) == 2  # no rates: one line
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(EstimateError, match="no region with timed passes"):
        rates_from_run_log(bad)
