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


@pytest.mark.parametrize("fails", [None, "exp run", "gallery check"])
def test_demo_puts_the_committed_params_back(tmp_path, monkeypatch, fails):
    """The demo's gallery check runs while params.yaml holds the demo's params; whichever step
    fails, the committed params are back afterwards."""
    demo = _demo_module()
    params = tmp_path / "params.yaml"
    params.write_text("seed: 42\n")
    ran = []

    def sh(*cmd, **kwargs):
        if cmd[:3] == ("dvc", "exp", "run"):
            params.write_text("seed: 42\ntrain:\n  batch_size: 16\n")  # what -S does to the workspace
            ran.append("exp run")
            if fails == "exp run":
                raise subprocess.CalledProcessError(1, cmd)
            return subprocess.CompletedProcess(cmd, 0)
        assert cmd[-1].endswith("check_gallery.py") and kwargs == {"check": False}, cmd
        assert params.read_text() != "seed: 42\n"  # checked against the params the run used
        ran.append("gallery check")
        return subprocess.CompletedProcess(cmd, 1 if fails == "gallery check" else 0)

    monkeypatch.setattr(demo, "ROOT", tmp_path)
    monkeypatch.setattr(demo, "ensure_data", lambda: None)
    monkeypatch.setattr(demo, "print_results", lambda: None)
    monkeypatch.setattr(demo, "sh", sh)
    if fails == "exp run":
        with pytest.raises(subprocess.CalledProcessError):
            demo.main()
    elif fails == "gallery check":
        with pytest.raises(SystemExit, match="error galleries do not match"):
            demo.main()
    else:
        assert demo.main() == 0
    assert ran == (["exp run"] if fails == "exp run" else ["exp run", "gallery check"])
    assert params.read_text() == "seed: 42\n"
