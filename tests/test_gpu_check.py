"""benchmarks/gpu_check.py --smoke: the prepared GPU check runs on the CPU and its JSON holds every field."""

from __future__ import annotations

import json
import sys

import pytest

from workdir import REPO, run  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gpu_path")]


def test_gpu_check_smoke_writes_every_field(tmp_path):
    out = tmp_path / "gpu.json"
    run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)], tmp_path, timeout=900)
    r = json.loads(out.read_text())
    assert r["ok"] and r["mode"] == "smoke" and r["sections_failed"] == []
    assert {"torch", "cuda", "cudnn", "gpus", "nccl"} <= r["versions"].keys()
    assert r["gpu_tests"]["returncode"] in (0, 5) and "skipped" in r["gpu_tests"]["counts"]
    nv = r["nccl_validation"]
    assert nv["returncode"] == 0 and nv["process_group_joined"] and nv["val_realistic_pr_auc"] is not None
    assert nv["checkpoint_rng_states"] == nv["nproc"] == 1
    for name in ("eager", "compiled"):
        assert "images_per_s" in r["training"][name], r["training"][name]
    assert r["training"]["compiled"]["compile_backend"] == "aot_eager"  # the smoke traces; the GPU run compiles with inductor
    assert r["training"]["forward_gflops_per_image"] > 0 and "mfu" in r["training"]["eager"]
    assert r["inference"]["tta_none"]["tiles_per_s"] > 0 and r["inference"]["tta_standard"]["tiles_per_s"] > 0
    assert r["profile"]["max_fitting_batch"] >= 1
