"""The train stage through its real entry points: torchrun with 2 gloo processes, kill and resume,
determinism, early stopping and checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from workdir import make_workdir, run, set_params  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("training")]

TRAIN = [sys.executable, "-m", "stages.train"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("train") / "base", {"train.max_epochs": 3})
    run([sys.executable, "-m", "stages.prepare"], wd)
    return wd


def clone(prepared: Path, dest: Path, *, mlflow: bool = False) -> Path:
    """A copy of the prepared folder; MLflow off unless the test inspects it (it costs seconds)."""
    shutil.copytree(prepared, dest, ignore=shutil.ignore_patterns("checkpoints", "models", "dvclive", "mlruns.db", "metrics"))
    set_params(dest / "params.yaml", {"tracking.mlflow": mlflow})
    return dest


def weights(wd: Path) -> dict:
    return torch.load(wd / "models/train/model.pt", map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_gloo_ranks_disjoint_tiles_identical_weights_rank0_writes(prepared, tmp_path):
    wd = clone(prepared, tmp_path / "ddp", mlflow=True)
    dbg = tmp_path / "debug"
    proc = run(["torchrun", "--standalone", "--nproc-per-node=2", "-m", "stages.train", "--record-dir", str(dbg)], wd)
    # progress and the per-validation lines come from rank 0 alone
    assert proc.stderr.count("INFO rts.progress: epoch 1/3: 2/2 steps in ") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("INFO rts.training.loop: epoch 1/3 step 2: ") == 1
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[rank 1]") and " INFO " in line]
    r0, r1 = (json.loads((dbg / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["indices"] and r1["indices"]
    assert r0["weights_sha256"] == r1["weights_sha256"]
    # disjoint shares: within every step the two ranks' negatives differ, and within an epoch no
    # negative tile is drawn twice across ranks (the pool is large enough for one pass)
    tiles = json.loads((wd / "prepared/splits/train.json").read_text())["tiles"]
    positive = {i for i, t in enumerate(tiles) if t["positive"]}
    bs, steps_per_epoch = 4, 2
    for epoch in range(3):
        span = slice(epoch * steps_per_epoch * bs, (epoch + 1) * steps_per_epoch * bs)
        neg0 = [i for i in r0["indices"][span] if i not in positive]
        neg1 = [i for i in r1["indices"][span] if i not in positive]
        assert len(neg0) == len(neg1) == steps_per_epoch * bs // 2  # pos_fraction 0.5 on each rank
        assert not set(neg0) & set(neg1)
    # only rank 0 wrote: one model, one dvclive folder, one MLflow run
    assert (wd / "models/train/model.pt").exists() and (wd / "checkpoints/last.pt").exists()
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{wd / 'mlruns.db'}")
    exp = client.get_experiment_by_name("rts-segmentation-v2")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.params["world_size"] == "2"
    history = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_realistic/pr_auc")]
    assert len(history) == 3  # one entry per validation, not per rank


def test_train_evaluate_calibrate_log_progress_compact_rounded_lines_and_a_short_summary(prepared, tmp_path):
    wd = clone(prepared, tmp_path / "logs", mlflow=True)
    err = run(TRAIN, wd, RTS_PROGRESS_INTERVAL="0").stderr
    assert "INFO rts.progress: epoch 1/3: 1/2 steps (50%), " in err and ", ETA " in err
    assert "INFO rts.progress: epoch 3/3: 2/2 steps in " in err
    validations = [line for line in err.splitlines() if "INFO rts.training.loop: epoch " in line]
    assert len(validations) == 3, err[-3000:]
    for line in validations:
        assert len(line) < 260 and "train loss " in line and "val loss " in line and "val-realistic 1:500 PR-AUC " in line
        assert all(len(d) <= 4 for d in re.findall(r"\d\.(\d+)", line.split(": ", 1)[1])), line  # rounded
    assert "(new best)" in validations[0]
    # one format: MLflow's own handler (its dated format) is gone, and it is quiet at INFO
    assert not re.search(r"^\d{4}/\d\d/\d\d ", err, re.M) and " INFO mlflow" not in err

    proc = run([sys.executable, "-m", "stages.evaluate"], wd, RTS_PROGRESS_INTERVAL="0")
    for split in ("val_realistic", "test_realistic"):
        assert f"INFO rts.progress: inference {split}: 1/16 tiles (6%), " in proc.stderr
        assert f"INFO rts.progress: inference {split}: 16/16 tiles in " in proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("1:")]
    assert [r.split()[0] for r in rows] == ["1:200", "1:500", "1:1000"], proc.stdout
    assert all(re.fullmatch(r"1:\d+\s+((\d\.\d{4}|n/a)\s*){4}", r) for r in rows), rows

    # calibrate ends with a short summary and where the card is, not the whole card
    proc = run([sys.executable, "-m", "stages.calibrate"], wd)
    out = proc.stdout.splitlines()
    # logging the model, MLflow drew its artifact download bar (~600 characters of \r updates) on stderr
    assert "Downloading artifacts" not in proc.stderr and "\r" not in proc.stderr, proc.stderr[-2000:]
    assert "MLflow: logged model m-" in proc.stderr, proc.stderr[-2000:]
    assert len(out) == 2 and out[0].startswith("temperature ") and "object thresholds 1:200 " in out[0], out
    assert "model card models/rts-model/model_card.md" in out[1] and (wd / "models/rts-model/model_card.md").is_file()


def test_kill_and_resume_reaches_the_same_weights_and_runs_are_deterministic(prepared, tmp_path):
    straight = clone(prepared, tmp_path / "straight")
    run(TRAIN, straight)
    again = clone(prepared, tmp_path / "again")
    run(TRAIN, again)
    assert_same_weights(weights(straight), weights(again))
    m1 = json.loads((straight / "metrics/train.json").read_text())
    m2 = json.loads((again / "metrics/train.json").read_text())
    assert {k: v for k, v in m1.items() if k != "wall_time_s"} == {k: v for k, v in m2.items() if k != "wall_time_s"}

    killed = clone(prepared, tmp_path / "killed")
    proc = run([*TRAIN, "--kill-at-step", "5"], killed, check=False)  # epoch 3 of 3, mid-epoch
    assert proc.returncode != 0 and not (killed / "models/train/model.pt").exists()
    state = torch.load(killed / "checkpoints/last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2
    run(TRAIN, killed)  # train.resume: auto
    assert_same_weights(weights(straight), weights(killed))
    ckpt = torch.load(killed / "checkpoints/last.pt", map_location="cpu", weights_only=False)
    for key in ("model", "optimizer", "scaler", "ema", "sampler", "rng", "config", "normalization_stats", "early_stopping"):
        assert key in ckpt
    numbered = sorted(p.name for p in (killed / "checkpoints").glob("checkpoint_epoch_*.pt"))
    assert numbered == ["checkpoint_epoch_0001.pt", "checkpoint_epoch_0002.pt", "checkpoint_epoch_0003.pt"]


def test_changed_config_does_not_resume_foreign_checkpoints(prepared, tmp_path):
    wd = clone(prepared, tmp_path / "foreign")
    run(TRAIN, wd)
    set_params(wd / "params.yaml", {"loss": "tversky", "train.max_epochs": 1})
    proc = run(TRAIN, wd)
    assert "different configuration" in proc.stderr
    assert torch.load(wd / "checkpoints/last.pt", map_location="cpu", weights_only=False)["epoch"] == 1


def test_loader_workers_pin_opencv_to_one_thread():
    """A loader worker must not spawn a thread per core for its warps (it competes with training)."""
    import cv2

    from rts.training.distributed import worker_init_fn

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(4)
        worker_init_fn(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def _state(value: float) -> dict:
    return {"epoch": int(value), "model": {"w": torch.full((64, 64), value)}}


def test_checkpoints_are_independent_verified_files_that_keep_their_epochs(tmp_path):
    """best.pt and the numbered files are copies, never hard links (truncating one truncated the
    other), each with a checksum; replacing last.pt later leaves each holding its own epoch."""
    from rts.training.checkpoint import CheckpointManager, load

    ckpts = CheckpointManager(tmp_path, every_n_epochs=1, keep_last=2)
    ckpts.save(_state(1), epoch=1, is_best=True)
    assert load(ckpts.last_path)["epoch"] == 1
    inodes = {p.stat().st_ino for p in (ckpts.best_path, ckpts.last_path, tmp_path / "checkpoint_epoch_0001.pt")}
    assert len(inodes) == 3, "independent files"
    ckpts.save(_state(2), epoch=2, is_best=False)
    ckpts.save(_state(3), epoch=3, is_best=False)
    assert load(ckpts.best_path)["epoch"] == 1 and torch.equal(load(ckpts.best_path)["model"]["w"], torch.full((64, 64), 1.0))
    assert load(ckpts.last_path)["epoch"] == 3
    assert [p.name for p in ckpts.numbered()] == ["checkpoint_epoch_0002.pt", "checkpoint_epoch_0003.pt"]
    assert [load(p)["epoch"] for p in ckpts.numbered()] == [2, 3]
    names = ["best.pt", "checkpoint_epoch_0002.pt", "checkpoint_epoch_0003.pt", "last.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + [n + ".sha256" for n in names])


def test_resume_takes_the_newest_checkpoint_that_verifies_and_names_damaged_ones(tmp_path, caplog):
    """A truncated last.pt was refused with torch's message and no file name; with last.pt missing,
    training restarted from epoch 0 although an intact later checkpoint existed; a kill during a
    write left its temporary file forever."""
    from rts.errors import DataError
    from rts.training.checkpoint import CheckpointManager, load

    ckpts = CheckpointManager(tmp_path, every_n_epochs=1, keep_last=3)
    for epoch in (1, 2, 3):
        ckpts.save(_state(epoch), epoch=epoch, is_best=epoch == 1)
    with open(ckpts.last_path, "r+b") as f:  # truncated by a full disk or a bad copy
        f.truncate(1000)
    with pytest.raises(DataError, match="last.pt: damaged"):
        load(ckpts.last_path)
    with caplog.at_level("WARNING"):
        newest = ckpts.latest()
    assert newest == tmp_path / "checkpoint_epoch_0003.pt" and load(newest)["epoch"] == 3
    assert "last.pt: damaged" in caplog.text and "resuming from" in caplog.text
    ckpts.last_path.unlink()
    assert ckpts.latest() == tmp_path / "checkpoint_epoch_0003.pt"
    (tmp_path / ".last.pt.abc123.pt").write_bytes(b"x" * 1000)  # a kill mid-write
    CheckpointManager(tmp_path, every_n_epochs=1, keep_last=3)
    assert not (tmp_path / ".last.pt.abc123.pt").exists()


def test_checkpoint_write_failure_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """A full disk surfaces from torch's zip writer as a RuntimeError: the error names the file and the
    free space, no temporary file is left behind, and the previous last.pt still loads."""
    from rts.training import checkpoint
    from rts.training.checkpoint import CheckpointManager, CheckpointWriteError, load

    ckpts = CheckpointManager(tmp_path, every_n_epochs=10, keep_last=1)
    ckpts.save(_state(1), epoch=1, is_best=False)

    def disk_full(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1675584 vs 1675480")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"last\.pt \(.*MiB free there\): .*unexpected pos"):
        ckpts.save(_state(2), epoch=2, is_best=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]
    assert load(ckpts.last_path)["epoch"] == 1


def _val_batches(tiles: list[dict], batch_size: int) -> list[dict]:
    out = []
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i : i + batch_size]
        out.append({k: torch.stack([torch.as_tensor(t[k]) for t in chunk]) for k in chunk[0]})
    return out


def test_one_validation_pass_serves_the_balanced_subset_exactly():
    """val-balanced read from the val-realistic pass gives what a pass of its own gives."""
    from rts.metrics import EvalAccumulator
    from rts.training.loop import validate

    gen = torch.Generator().manual_seed(0)
    tiles = []
    for i in range(10):
        label = torch.zeros(32, 32, dtype=torch.uint8)
        if i % 3 == 0:
            label[4:20, 6:22] = 1
        image = torch.randn(3, 32, 32, generator=gen) + 2.0 * label
        tiles.append({"image": image, "target": label[None].float(), "valid": torch.ones(1, 32, 32), "label": label,
                      "positive": bool(label.any()), "index": i})
    balanced = [i for i in range(10) if i % 3 == 0 or i in (1, 5)]
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    torch.nn.init.constant_(model.weight, 0.1)
    torch.nn.init.constant_(model.bias, -0.5)
    loss_fn = lambda logits, target, valid: (((torch.sigmoid(logits) - target) ** 2) * valid).sum() / valid.sum()  # noqa: E731
    regions = ["r"] * 10

    def acc():
        return EvalAccumulator(n_bins=1000, operating_threshold=0.5, object_thresholds=[0.5], iou_thresholds=[0.3], min_object_px=4)

    shared = {"val_balanced": (acc(), [i in balanced for i in range(10)]), "val_realistic": (acc(), [True] * 10)}
    losses = validate(model, _val_batches(tiles, 4), loss_fn=loss_fn, device=torch.device("cpu"), amp=(False, None, False),
                      accumulators=shared, regions=regions)
    alone = {"val_balanced": (acc(), [True] * 10)}
    alone_losses = validate(model, _val_batches([tiles[i] for i in balanced], 3), loss_fn=loss_fn, device=torch.device("cpu"),
                            amp=(False, None, False), accumulators=alone, regions=regions)

    assert losses["val_balanced"][1] == len(balanced) and losses["val_realistic"][1] == 10
    assert losses["val_balanced"][0] == pytest.approx(alone_losses["val_balanced"][0], rel=1e-6)
    kw = dict(ratios=[], recall_targets=(), primary_iou=0.3)
    got = shared["val_balanced"][0].result(**kw)["unweighted"]
    want = alone["val_balanced"][0].result(**kw)["unweighted"]
    assert got == want
    assert got["iou_rts"] > 0  # the fixture is not degenerate: the model finds the squares
    assert shared["val_realistic"][0].result(**kw)["unweighted"] != got  # and the subsets differ


def test_a_checkpoint_written_before_checksums_is_still_resumed(tmp_path):
    """Skipping last.pt for want of a .sha256 would start the run over and overwrite it."""
    from rts.training.checkpoint import CheckpointManager, checksum_path, load

    ckpts = CheckpointManager(tmp_path, every_n_epochs=1, keep_last=1)
    ckpts.save(_state(4), epoch=4, is_best=False)
    for p in tmp_path.glob("*.sha256"):
        p.unlink()
    assert not checksum_path(ckpts.last_path).exists()
    assert ckpts.latest() == ckpts.last_path and load(ckpts.last_path)["epoch"] == 4


def test_a_paused_run_from_before_the_fingerprint_change_resumes_instead_of_starting_over(tmp_path):
    """Checkpoints written before the fingerprint covered only what training reads (and before the
    statistics hash left the date out) hold the old fingerprint; the same configuration resumes
    from them, another one is still set aside."""
    import hashlib
    import json

    import torch

    from rts.config import load_params
    from rts.data.normalization import stats_hash
    from rts.training import distributed as D
    from rts.training.checkpoint import CheckpointManager
    from rts.training.loop import _resume_decision, config_fingerprint, legacy_fingerprint
    from workdir import REPO

    params = load_params(REPO / "params.yaml")
    stats = {"dataset_version": "2.0", "n_tiles_used": 3}
    dated = {**stats, "computed_date": "2026-01-01T00:00:00+00:00"}
    sha = stats_hash(stats)
    dist = D.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    ckpts = CheckpointManager(tmp_path, every_n_epochs=1, keep_last=1)
    old = legacy_fingerprint(params, dated)
    # the old formula, written out: everything but evaluate/calibrate/tracking/prepare, the dated stats hash
    d = {k: v for k, v in json.loads(json.dumps(__import__("dataclasses").asdict(params))).items()
         if k not in ("evaluate", "calibrate", "tracking", "prepare")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("resume", "num_workers", "pin_memory", "prefetch_factor", "persistent_workers")}
    d["stats"] = hashlib.sha256(json.dumps(dated, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert old == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
    ckpts.save({"epoch": 3, "config_fingerprint": old, "normalization_stats": dated}, epoch=3, is_best=False)
    assert _resume_decision(ckpts, config_fingerprint(params, sha), dist, params, sha) == ckpts.last_path
    other = load_params(REPO / "params.yaml", overrides={"loss": "tversky"})
    assert _resume_decision(ckpts, config_fingerprint(other, sha), dist, other, sha) is None
    assert (tmp_path / "set_aside").is_dir()
