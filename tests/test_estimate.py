"""``rts estimate``: hand-computed projections for a small configuration, the table, budget flags,
reading a profile JSON.

The worked configuration (``small_params``): batch 8 (4 positives + 4 negatives), train ratio 1:10,
10 max epochs, 2 GPUs on one node, 100 positive tiles, 10 training images/s and 20 forwards/s per
GPU, 320 validation tiles, scaling efficiency 1.

- steps per epoch = ceil(10 * 100 / (4 * 2)) = 125; images per epoch = 125 * 8 * 2 = 2,000
- one epoch: 2,000 / (10 * 2) = 100 s training + 320 / (20 * 2) = 8 s validation = 108 s
- one run: 10 epochs = 1,080 s = 0.3 h wall = 0.6 GPU-hours = 0.3 node-hours (2-GPU node);
  expected (0.5 x 10 = 5 epochs) = 0.15 node-hours
- ratio 1:20 run: 250 steps, 4,000 images = 208 s per epoch: 2,080 s = 0.5778 h (expected 1,040 s)
- curriculum 1 -> 8 over 4 epochs: ratios 1, 2, 4, 8, 8, ... -> steps 13, 25, 50, 100 x 7 = 788
  (12,608 images, 630.4 s + 10 x 8 s) = 710.4 s; expected 5 epochs: 288 steps, 4,608 images,
  230.4 + 40 = 270.4 s
"""

from __future__ import annotations

import json

import pytest

from rts.cli import main
from rts.config import load_params
from rts.data.sampler import BalancedBatchSampler
from rts.estimate import (
    DEFAULT_AREA_KM2,
    EstimateError,
    Throughput,
    estimate,
    expected_epochs,
    format_table,
    inference_projection,
    read_profile,
    steps_per_epoch,
    training_run,
)

SMALL_YAML = """
data: {tile_size: 512}
train: {batch_size: 8, max_epochs: 10, val_every: 1, val_unit: epoch, steps_per_epoch: 0}
sampler: {balanced: true, pos_fraction_per_batch: 0.5, train_ratio: 10, curriculum: false,
          curriculum_start_ratio: 1, curriculum_end_ratio: 8, curriculum_epochs: 4}
evaluate: {scales: [1.0, 0.5], tta: minimal}
"""
TILE_KM2 = (512 * 3 / 1000) ** 2  # 2.359296 km^2
SPEED = Throughput(train_images_per_s=10, infer_tiles_per_s=20, scaling_efficiency=1.0)
MATRIX = dict(runs={"baseline": 1, "losses": 2, "loss_tuning": 0, "architectures": 1, "auxiliary": 1, "fusion": 1},
              ratio_runs=("20", "curriculum"), seeds=2)


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(SMALL_YAML)
    return path


@pytest.fixture
def small_params(params_file):
    return load_params(params_file)


def small_estimate(params, **kw):
    base = dict(throughput=SPEED, price_per_gpu_hour=100.0, gpus_per_node=2, nodes=1, n_pos=100, n_neg=1000, val_tiles=320,
                expected_epoch_fraction=0.5, area_km2=TILE_KM2 * 1000, **MATRIX)
    base.update(kw)
    return estimate(params, **base)


@pytest.mark.parametrize(
    "n_pos, batch, world, ratio, pos_fraction, balanced, fixed, expected",
    [
        (100, 8, 2, 10, 0.5, True, 0, 125),     # 1000 negatives / (4 per batch x 2 GPUs)
        (100, 8, 1, 10, 0.25, True, 0, 167),    # 6 negatives per batch: ceil(1000 / 6)
        (100, 8, 2, 10, 0.5, False, 0, 63),     # unbalanced: every slot is a negative slot, ceil(1000 / 16)
        (100, 8, 2, 10, 0.5, True, 7, 7),       # train.steps_per_epoch wins
        (1, 32, 8, 1, 0.5, True, 0, 1),         # never fewer than one step
        (2000, 32, 8, 10, 0.5, True, 0, 157),   # guide baseline: ceil(20000 / 128)
    ],
)
def test_steps_per_epoch_by_hand(n_pos, batch, world, ratio, pos_fraction, balanced, fixed, expected):
    assert steps_per_epoch(n_pos=n_pos, batch_size=batch, world_size=world, ratio=ratio, pos_fraction=pos_fraction,
                           balanced=balanced, fixed_steps=fixed) == expected


@pytest.mark.parametrize("n_pos, batch, world, ratio, pos_fraction", [(100, 8, 2, 10, 0.5), (37, 12, 3, 7, 0.25), (5, 4, 1, 50, 0.5)])
def test_steps_per_epoch_matches_the_real_sampler(n_pos, batch, world, ratio, pos_fraction):
    sampler = BalancedBatchSampler(list(range(n_pos)), list(range(n_pos, n_pos + 500)), batch_size=batch,
                                   pos_fraction=pos_fraction, ratio=ratio, rank=0, world_size=world)
    assert steps_per_epoch(n_pos=n_pos, batch_size=batch, world_size=world, ratio=ratio, pos_fraction=pos_fraction) == len(sampler)


@pytest.mark.parametrize("max_epochs, fraction, expected", [(300, 0.5, 150), (10, 0.33, 4), (10, 1.0, 10), (1, 0.1, 1)])
def test_expected_epochs(max_epochs, fraction, expected):
    assert expected_epochs(max_epochs, fraction) == expected


def test_expected_epoch_fraction_out_of_range_is_an_error():
    with pytest.raises(EstimateError, match="expected-epoch-fraction"):
        expected_epochs(10, 0)


def test_one_training_run_by_hand(small_params):
    run = training_run(small_params, n_pos=100, world_size=2, gpus_per_node=2, throughput=SPEED, val_tiles=320, expected_epoch_fraction=0.5)
    assert run["steps_per_epoch"] == 125 and run["images_per_epoch"] == 2000
    assert run["max"]["epochs"] == 10 and run["max"]["images"] == 20000 and run["max"]["validations"] == 10
    assert run["max"]["train_hours"] == pytest.approx(1000 / 3600)
    assert run["max"]["val_hours"] == pytest.approx(80 / 3600)
    assert run["max"]["wall_hours"] == pytest.approx(0.3)
    assert run["max"]["gpu_hours"] == pytest.approx(0.6)
    assert run["max"]["node_hours"] == pytest.approx(0.3)
    assert run["expected"]["epochs"] == 5 and run["expected"]["node_hours"] == pytest.approx(0.15)


def test_curriculum_run_sums_the_ramp(small_params):
    import dataclasses

    params = dataclasses.replace(small_params, sampler=dataclasses.replace(small_params.sampler, curriculum=True))
    run = training_run(params, n_pos=100, world_size=2, gpus_per_node=2, throughput=SPEED, val_tiles=320, expected_epoch_fraction=0.5)
    assert run["steps_per_epoch"] == [13, 25, 50] + [100] * 7
    assert run["max"]["images"] == 12608 and run["expected"]["images"] == 4608
    assert run["max"]["wall_hours"] == pytest.approx(710.4 / 3600)
    assert run["expected"]["wall_hours"] == pytest.approx(270.4 / 3600)


def test_matrix_rows_totals_and_costs_by_hand(small_params):
    r = small_estimate(small_params)
    rows = {row["stage"]: row for row in r["rows"]}
    assert list(rows) == ["Baseline + ablations", "Architecture experiments", "Auxiliary data experiments", "Final model (2 seeds)"]
    # baseline 1 + losses 2 at 0.3, ratio 1:20 at 2080 s, curriculum at 710.4 s (max); 0.15, 1040 s, 270.4 s (expected)
    assert rows["Baseline + ablations"]["runs"] == 5
    assert rows["Baseline + ablations"]["node_hours"]["max"] == pytest.approx(0.9 + 2080 / 3600 + 710.4 / 3600)
    assert rows["Baseline + ablations"]["node_hours"]["expected"] == pytest.approx(0.45 + 1040 / 3600 + 270.4 / 3600)
    assert rows["Architecture experiments"]["node_hours"] == pytest.approx({"expected": 0.15, "max": 0.3})
    assert rows["Auxiliary data experiments"]["node_hours"] == pytest.approx({"expected": 0.3, "max": 0.6})
    assert rows["Final model (2 seeds)"]["cost"] == pytest.approx({"expected": 60.0, "max": 120.0})  # node-hour = 2 GPUs x $100
    assert r["training_total"]["node_hours"] == pytest.approx({"expected": 1.564, "max": 3.175111111})
    assert r["training_total"]["cost"] == pytest.approx({"expected": 312.8, "max": 635.0222222})
    # inference: 1000 locations x 4 passes x 2 scales x 2 views = 16000 forwards at 20/s = 800 s
    inf = r["inference"]
    assert (inf["tile_locations"], inf["tile_passes"], inf["forwards"]) == (1000, 4000, 16000)
    assert inf["gpu_hours"] == pytest.approx(800 / 3600) and inf["cost"] == pytest.approx(800 / 36)
    assert r["total"]["cost"] == pytest.approx({"expected": 312.8 + 800 / 36, "max": 635.0222222 + 800 / 36})


@pytest.mark.parametrize(
    "stride, scales, views, passes, forwards",
    [
        (256, 1, 1, 4000, 4000),       # 50% overlap: 4 passes per location
        (512, 1, 1, 1000, 1000),       # no overlap
        (128, 1, 1, 16000, 16000),
        (256, 3, 4, 4000, 48000),      # scales 1.0/0.5/0.25 cost one forward each; standard TTA 4 views
        (256, 3, 8, 4000, 96000),
    ],
)
def test_inference_tile_arithmetic(stride, scales, views, passes, forwards):
    inf = inference_projection(area_km2=TILE_KM2 * 1000, tile_size=512, stride=stride, n_scales=scales, tta_views=views,
                               infer_tiles_per_s=10.0, gpus_per_node=8)
    assert inf["tile_km2"] == pytest.approx(2.359296)
    assert (inf["tile_locations"], inf["tile_passes"], inf["forwards"]) == (1000, passes, forwards)
    assert inf["gpu_hours"] == pytest.approx(forwards / 10 / 3600)
    assert inf["node_hours"] == pytest.approx(inf["gpu_hours"] / 8)


def test_default_area_gives_the_plans_8_to_10_million_locations():
    inf = inference_projection(area_km2=DEFAULT_AREA_KM2, tile_size=512, stride=256, n_scales=1, tta_views=1,
                               infer_tiles_per_s=1.0, gpus_per_node=8)
    assert 8e6 <= inf["tile_locations"] <= 10e6
    assert 32e6 <= inf["tile_passes"] <= 40e6


def test_table_in_the_guide_format(small_params):
    lines = format_table(small_estimate(small_params)).splitlines()
    assert lines[0] == "| Stage | GPU Hours (2×H100) | Estimated Cost |"
    assert lines[1] == "|-------|-------------------|----------------|"
    assert "| Baseline + ablations | 0.8–1.7 | $163–335 |" in lines
    assert "| Auxiliary data experiments | 0.3–0.6 | $60–120 |" in lines
    assert "| Final model (2 seeds) | 0.3–0.6 | $60–120 |" in lines
    assert "| **Training Total** | ~1.6–3.2 | ~$313–635 |" in lines
    assert "| Pan-Arctic inference | 0.1 | $22 |" in lines
    assert "| **Total** | 1.7–3.3 | $335–657 |" in lines
    assert "| Training experiments | $25,000 | $313–635 | OK |" in lines
    assert "| Buffer / reruns | $10,000 | $69,343–69,665 left | |" in lines
    assert not any(line.startswith("WARNING") for line in lines)


@pytest.mark.parametrize(
    "training, inference, budget, expected",
    [
        (1000, 1000, 5000, ("OK", "OK", "OK")),
        (500, 1000, 5000, ("AT RISK", "OK", "OK")),    # expected $312.8 fits, max $635.0 does not
        (300, 1000, 5000, ("OVER", "OK", "OK")),       # even the expected cost is over
        (1000, 20, 5000, ("OK", "OVER", "OK")),        # inference $22.2
        (400, 25, 500, ("AT RISK", "OK", "AT RISK")),  # total $335.0-657.2 against $500
        (100, 10, 200, ("OVER", "OVER", "OVER")),
    ],
)
def test_budget_flags(small_params, training, inference, budget, expected):
    r = small_estimate(small_params, training_allocation=training, inference_allocation=inference, budget=budget)
    b = r["budget"]
    assert (b["training"]["status"], b["inference"]["status"], b["total"]["status"]) == expected
    assert b["buffer"]["allocation"] == budget - training - inference
    flagged = [name for name, status in zip(("training", "inference", "total"), expected) if status != "OK"]
    assert [w.split(":")[0] for w in r["warnings"]] == flagged
    table = format_table(r)
    assert all(f"WARNING: {name}" in table for name in flagged)


def test_budget_below_allocations_is_an_error(small_params):
    with pytest.raises(EstimateError, match="--budget"):
        small_estimate(small_params, budget=1000, training_allocation=800, inference_allocation=800)


def test_unknown_phase_is_an_error_listing_phases(small_params):
    with pytest.raises(EstimateError, match="valid phases: baseline"):
        small_estimate(small_params, runs={"transformers": 2})


def _profile_json(path, images_per_s=40.0, batch=16, tile=512, device="cuda"):
    trials = [{"batch_size": 4, "fits": True, "oom": False, "images_per_s": 30.0},
              {"batch_size": batch, "fits": True, "oom": False, "images_per_s": images_per_s},
              {"batch_size": 32, "fits": False, "oom": True, "images_per_s": None}]
    path.write_text(json.dumps({"device": device, "device_name": "NVIDIA H100", "batch_size": batch, "trials": trials,
                                "config": {"tile_size": tile, "amp_dtype": "bfloat16"}}))
    return path


def test_read_profile_takes_the_chosen_batch(tmp_path):
    prof = read_profile(_profile_json(tmp_path / "profile.json"))
    assert prof["train_images_per_s"] == 40.0 and prof["batch_size"] == 16 and prof["tile_size"] == 512


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "profile file not found"),
        ("{not json", "not valid JSON"),
        ('{"trials": []}', "not an `rts profile` output"),
        ('{"batch_size": null, "trials": [], "config": {}}', "no fitting batch"),
    ],
)
def test_bad_profile_names_the_file(tmp_path, content, message):
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EstimateError, match=message) as err:
        read_profile(path)
    assert str(path) in str(err.value)


def test_cli_with_profile_writes_json_and_table(tmp_path, params_file, capsys):
    prof = _profile_json(tmp_path / "profile.json", images_per_s=10.0, batch=8)
    out = tmp_path / "estimate.json"
    rc = main(["estimate", "--params", str(params_file), "--profile", str(prof), "--infer-tiles-per-s", "20",
               "--gpus-per-node", "2", "--price-per-gpu-hour", "100", "--scaling-efficiency", "1", "--n-pos", "100",
               "--n-neg", "1000", "--val-tiles", "320", "--area-km2", str(TILE_KM2 * 1000),
               "--runs", "losses=2", "architectures=1", "auxiliary=1", "fusion=1", "--ratio-runs", "20", "curriculum",
               "--seeds", "2", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| **Training Total** | ~1.6–3.2 | ~$313–635 |" in printed
    r = json.loads(out.read_text())
    assert r["assumptions"]["train_images_per_s_per_gpu"] == 10.0
    assert r["assumptions"]["profile"]["path"] == str(prof)
    assert r["training_total"]["cost"]["expected"] == pytest.approx(312.8)


def test_cli_default_inference_speed_is_three_times_training(tmp_path, params_file):
    out = tmp_path / "estimate.json"
    assert main(["estimate", "--params", str(params_file), "--train-images-per-s", "10", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["assumptions"]["infer_tiles_per_s_per_gpu"] == 30.0


def test_cli_bad_runs_argument_fails_with_one_line(tmp_path, params_file, capsys):
    rc = main(["estimate", "--params", str(params_file), "--train-images-per-s", "10", "--runs", "losses=two"])
    assert rc == 2, "a bad argument is a ConfigError (exit 2)"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--runs 'losses=two'" in err[0] and "expected PHASE=N" in err[0]
