"""`make demo` leaves params.yaml as committed: `dvc exp run -S` writes the demo's CPU overrides
into the workspace (on a failed run too), and a commit afterwards would replace the baseline."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from workdir import REPO


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fails", [False, True])
def test_demo_puts_the_committed_params_back(tmp_path, monkeypatch, fails):
    demo = _demo_module()
    params = tmp_path / "params.yaml"
    params.write_text("seed: 42\n")

    def dvc_exp_run(*cmd, **kwargs):
        params.write_text("seed: 42\ntrain:\n  batch_size: 16\n")  # what -S does to the workspace
        if fails:
            raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(demo, "ROOT", tmp_path)
    monkeypatch.setattr(demo, "ensure_data", lambda: None)
    monkeypatch.setattr(demo, "print_results", lambda: None)
    monkeypatch.setattr(demo, "sh", dvc_exp_run)
    if fails:
        with pytest.raises(subprocess.CalledProcessError):
            demo.main()
    else:
        assert demo.main() == 0
    assert params.read_text() == "seed: 42\n"
