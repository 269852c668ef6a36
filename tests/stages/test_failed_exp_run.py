"""A failed ``dvc exp run -S`` by hand leaves its value in the workspace ``params.yaml`` (DVC writes
it there before the stages run). docs/reliability.md and the README say so and give the two ways
back: ``git checkout params.yaml`` after the fact, or ``dvc exp run --temp`` (the run happens in a
temporary copy and the workspace is left alone). This checks both statements on a one-stage repo
whose stage fails on a bad value, as a real stage refuses a bad param."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from workdir import REPO, run

pytestmark = pytest.mark.slow  # dvc processes (a few seconds each)

BASELINE = "lr: 0.1\n"
STAGE = """stages:
  fit:
    cmd: python -c "import sys, yaml; lr = yaml.safe_load(open('params.yaml'))['lr']; open('out.txt', 'w').write(str(lr)); sys.exit(2 if lr < 0 else 0)"
    params: [lr]
    outs: [out.txt]
"""


@pytest.fixture()
def repo(tmp_path) -> Path:
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"], ["git", "config", "user.name", "ci"],
                [sys.executable, "-m", "dvc", "init", "-q"]):
        run(cmd, tmp_path)
    (tmp_path / "params.yaml").write_text(BASELINE)
    (tmp_path / "dvc.yaml").write_text(STAGE)
    (tmp_path / ".gitignore").write_text("mlruns.db\n")
    run(["git", "add", "."], tmp_path)
    run(["git", "commit", "-qm", "baseline"], tmp_path)
    return tmp_path


def _readme_says_so() -> None:
    text = (REPO / "README.md").read_text()
    assert "git checkout params.yaml" in text and "dvc exp run --temp" in text


def test_a_failed_exp_run_leaves_its_value_in_params_yaml_until_git_checkout_puts_the_baseline_back(repo):
    _readme_says_so()
    failed = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "lr=-1"], repo, check=False)
    assert failed.returncode != 0
    assert (repo / "params.yaml").read_text() == "lr: -1\n"  # what DVC does: the documented caveat
    run(["git", "checkout", "params.yaml"], repo)
    assert (repo / "params.yaml").read_text() == BASELINE


def test_a_failed_exp_run_temp_leaves_params_yaml_as_it_was(repo):
    failed = run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-S", "lr=-1"], repo, check=False)
    assert failed.returncode != 0
    assert (repo / "params.yaml").read_text() == BASELINE
    assert run(["git", "status", "--porcelain", "params.yaml"], repo).stdout == ""
