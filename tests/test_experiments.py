"""Experiment matrix commands and multi-seed aggregation."""

import numpy as np
import pytest

from rts.experiments import PHASES, aggregate_seeds, queue_commands, seeds_table


def test_seed_aggregation_math():
    res = {42: {"1:200": {"iou_rts": 0.70, "obj": None}}, 43: {"1:200": {"iou_rts": 0.72, "obj": 0.5}},
           44: {"1:200": {"iou_rts": 0.74, "obj": 0.7}}}
    s = aggregate_seeds(res)
    assert s["1:200.iou_rts"]["mean"] == pytest.approx(0.72)
    assert s["1:200.iou_rts"]["std"] == pytest.approx(np.std([0.70, 0.72, 0.74]))
    assert s["1:200.obj"]["n"] == 2 and s["1:200.obj"]["mean"] == pytest.approx(0.6)
    assert "| 1:200.iou_rts | 0.720 ± 0.016 | 3 |" in seeds_table(s)


def test_queue_commands_cover_the_matrix_in_order():
    cmds = queue_commands("all", ["train.max_epochs=50"])
    assert all(c[:4] == ["dvc", "exp", "run", "--queue"] for c in cmds)
    flat = [" ".join(c) for c in cmds]
    assert "-S loss=tversky" in flat[1] and "-S train.max_epochs=50" in flat[0]
    assert any("model.fusion=early,late" in c for c in flat)
    assert sum(len(v) for k, v in PHASES.items() if k != "focal_tuning") == len(cmds)
    with pytest.raises(ValueError, match="losses"):
        queue_commands("nonsense")
