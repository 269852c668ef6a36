"""The GPU code path, exercised as far as a CPU can: collectives on the group's device,
no host reads in the step, every parameter trained, fp32 logit heads under bf16, the GradScaler,
channels_last, SyncBatchNorm, torch.compile, the unfreeze under DDP and an exact 2-rank resume."""

from __future__ import annotations

import ast
import json
import os
import runpy
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from workdir import REPO, make_workdir, run, set_params  # noqa: E402

from rts.config import ConfigError, ModelConfig, load_params  # noqa: E402
from rts.models import build_model, model_outputs_loss  # noqa: E402

SRC = REPO / "src" / "rts"


def cfg(arch, encoder, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, encoder=encoder, encoder_weights=None, **kw)


# ------------------------------------------------------------------------------ every parameter trains

# The zoo (tests/models/test_builder.py), the EfficientNet variants whose classifier stage survived in the
# encoder, deep supervision, and the fusion variants.
GRADIENT_CASES = [
    ("unet", "resnet18", {}, 0),
    ("unet", "mobilenet_v2", {}, 0),
    ("unet", "tu-efficientnet_b0", {}, 0),
    ("unetplusplus", "efficientnet-b0", {}, 0),
    ("unetplusplus", "timm-efficientnet-b0", {}, 0),
    ("unet3plus", "resnet18", {"deep_supervision": True}, 0),
    ("deeplabv3plus", "resnet18", {}, 0),
    ("segformer", "mit_b0", {}, 0),
    ("swin_unet", "swin_tiny_patch4_window7_224", {}, 0),
    ("swin_unet", "tu-convnext_atto", {}, 0),
    ("vit_unet", "vit_tiny_patch16_224", {}, 0),
    ("vit_unet", "vit_small_patch14_dinov2", {}, 0),
    ("unet", "resnet18", {"fusion": "early"}, 2),
    ("unet", "resnet18", {"fusion": "late"}, 4),
    ("unetplusplus", "efficientnet-b0", {"fusion": "late"}, 2),
    ("unet3plus", "resnet18", {"fusion": "late", "deep_supervision": True}, 4),
    ("deeplabv3plus", "resnet18", {"fusion": "late"}, 2),
    ("segformer", "mit_b0", {"fusion": "late"}, 2),
    ("vit_unet", "vit_tiny_patch16_224", {"fusion": "late"}, 2),
    ("vit_unet", "vit_tiny_patch16_224", {"fusion": "early"}, 4),
]


@pytest.mark.parametrize("arch, encoder, kw, n_extra", GRADIENT_CASES)
def test_every_trainable_parameter_gets_a_gradient_in_one_step(arch, encoder, kw, n_extra):
    """DDP runs without find_unused_parameters: a parameter that no forward uses would make the
    second step after the unfreeze fail ("Expected to have finished reduction")."""
    torch.manual_seed(0)
    model = build_model(cfg(arch, encoder, **kw), in_channels=3 + n_extra, n_extra=n_extra).train()
    x = torch.randn(2, 3 + n_extra, 64, 64)
    target = (torch.rand(2, 1, 64, 64) < 0.2).float()
    loss = model_outputs_loss(lambda o, t, v: torch.nn.functional.binary_cross_entropy_with_logits(o, t), model(x), target,
                              torch.ones_like(target), 0.4)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_foundation_encoders_train_every_parameter():
    from rts.models.foundation import FOUNDATION_ENCODERS

    for name in FOUNDATION_ENCODERS:
        model = build_model(cfg("vit_unet", name), encoder_overrides={"depth": 2}).train()
        size = 64
        out = model(torch.randn(1, 3, size, size))
        (out[0] if isinstance(out, tuple) else out).float().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (name, missing)


def test_dropped_modules_keep_hub_weights_and_old_packages_loadable(tmp_path):
    """A hub weights file (and a package from before the drop) still holds the classifier stage's
    keys: they load, and nothing else is ignored."""
    from segmentation_models_pytorch.encoders import get_encoder

    from rts.models.weights import load_encoder_weights, load_model_state

    full = get_encoder("efficientnet-b0", in_channels=3, depth=5, weights=None).state_dict()  # what the hub file holds
    assert any(k.startswith("_conv_head.") for k in full)
    torch.save(full, tmp_path / "hub.pth")
    model = build_model(cfg("unetplusplus", "efficientnet-b0"))
    load_encoder_weights(model.encoder, tmp_path / "hub.pth")
    assert torch.equal(model.encoder.state_dict()["_conv_stem.weight"], full["_conv_stem.weight"])
    old = {**model.state_dict(), **{f"encoder.{k}": v for k, v in full.items() if k.startswith(("_conv_head.", "_bn1."))}}
    load_model_state(model, old)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_model_state(model, {**old, "decoder.bogus.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------ bf16, fp32 heads


@pytest.mark.parametrize("arch, encoder, kw, n_extra", [
    ("unet", "resnet18", {}, 0),
    ("unet3plus", "resnet18", {"deep_supervision": True}, 0),
    ("vit_unet", "vit_tiny_patch16_224", {}, 0),
    ("unet", "resnet18", {"fusion": "late"}, 2),
])
def test_logit_heads_run_in_fp32_under_bf16_autocast(arch, encoder, kw, n_extra):
    """bf16 logits would quantise PR-AUC, early stopping and the calibrated thresholds."""
    torch.manual_seed(0)
    model = build_model(cfg(arch, encoder, **kw), in_channels=3 + n_extra, n_extra=n_extra).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3 + n_extra, 64, 64))
    main, aux = (out[0], out[1]) if isinstance(out, tuple) else (out, [])
    assert main.dtype == torch.float32 and all(a.dtype == torch.float32 for a in aux)
    assert main.unique().numel() > 2000  # bf16 has 256 values per octave


def test_fp32_head_is_the_head_applied_to_the_features_in_fp32():
    model = build_model(cfg("unet", "resnet18")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.decoder(model.encoder(x))
        got = model.segmentation_head(feats)
    assert feats.dtype == torch.bfloat16
    conv = model.segmentation_head[0]
    with torch.no_grad():
        want = torch.nn.functional.conv2d(feats.float(), conv.weight, conv.bias, padding=conv.padding)
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------ the step: no host reads


class HostReads:
    """Counts reads of tensor values back to Python from the project's own code."""

    METHODS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        calls = self.calls

        def wrapper(self_, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(SRC)):
                calls.append(f"{name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return original(self_, *a, **k)

        return wrapper


def _step_fixture(amp=(False, None, False), ema=True):
    from rts.training.losses import build_loss
    from rts.models.ema import ModelEMA
    from rts.training.step import TrainStats, TrainStep

    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    model = build_model(cfg("unet", "resnet18")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=amp[2])
    loss_fn = build_loss("focal", focal=params.focal, tversky=params.tversky, balanced_ce=params.balanced_ce,
                         class_pixel_counts=(1000, 10))
    step = TrainStep(model=model, optimizer=optimizer, scaler=scaler, loss_fn=loss_fn, amp=amp, device=torch.device("cpu"),
                     grad_clip_norm=1.0, ema=ModelEMA(model, 0.9) if ema else None, channels_last=True)
    return step, TrainStats(torch.device("cpu"))


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(2, 1, 64, 64, generator=g) < 0.2).float()
    return torch.randn(2, 3, 64, 64, generator=g), target, torch.ones_like(target)


def test_the_training_step_reads_nothing_back_to_the_host(monkeypatch):
    """On a GPU every read is a synchronisation: the step and its statistics read none; the
    statistics are read once per validation."""
    step, stats = _step_fixture()
    reads = HostReads(monkeypatch)
    for i in range(3):
        image, target, valid = _batch(i)
        outputs, loss = step(image, target, valid)
        stats.add(outputs, loss, target, valid)
    assert reads.calls == []
    loss_mean, iou = stats.reduce()
    assert len(reads.calls) <= 2, reads.calls  # one copy to the host, one conversion
    assert 0 < loss_mean and 0 <= iou <= 1


def test_train_stats_match_the_host_arithmetic():
    step, stats = _step_fixture(ema=False)
    losses, tp, fp, fn = [], 0, 0, 0
    for i in range(3):
        image, target, valid = _batch(i)
        outputs, loss = step(image, target, valid)
        stats.add(outputs, loss, target, valid)
        pred, truth = outputs > 0, target > 0.5
        losses.append(float(loss))
        tp, fp, fn = tp + int((pred & truth).sum()), fp + int((pred & ~truth).sum()), fn + int((~pred & truth).sum())
    loss_mean, iou = stats.reduce()
    assert loss_mean == sum(losses) / 3
    assert iou == tp / (tp + fp + fn)


def test_fp16_gradscaler_branch_steps_and_scales():
    step, stats = _step_fixture(amp=(True, torch.float16, True))
    before = [p.detach().clone() for p in step.model.parameters()]
    for i in range(2):
        image, target, valid = _batch(i)
        outputs, loss = step(image, target, valid)
        assert torch.isfinite(loss)
    assert step.scaler.is_enabled() and step.scaler.get_scale() > 0
    assert step.scaler.state_dict()["_growth_tracker"] >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))


def test_validation_puts_a_training_model_back_in_train_mode():
    """With ema: false the evaluated model is the trained one: after a step-wise validation it
    must train in train mode again (BatchNorm statistics, dropout, deep supervision)."""
    from rts.metrics import EvalAccumulator
    from rts.training.loop import validate

    model = build_model(cfg("unet3plus", "resnet18", deep_supervision=True)).train()
    label = torch.zeros(2, 32, 32, dtype=torch.uint8)
    batch = {"image": torch.randn(2, 3, 32, 32), "target": label[:, None].float(), "valid": torch.ones(2, 1, 32, 32),
             "label": label, "positive": torch.tensor([False, False]), "index": torch.tensor([0, 1])}
    acc = EvalAccumulator(n_bins=100, operating_threshold=0.5, object_thresholds=[0.5], iou_thresholds=[0.3], min_object_px=4)
    validate(model, [batch], loss_fn=lambda o, t, v: o.mean(), device=torch.device("cpu"), amp=(False, None, False),
             accumulators={"val_realistic": (acc, [True, True])}, regions=["r", "r"])
    assert model.training and all(m.training for m in model.modules())


def test_torch_compile_of_the_demo_model_trains_like_eager():
    """A few compiled steps of the demo's model (inductor on the CPU) give the eager losses."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile needs a C++ compiler (g++) for inductor on the CPU; none on PATH")
    DEMO_OVERRIDES = runpy.run_path(str(REPO / "scripts" / "demo.py"))["DEMO_OVERRIDES"]

    mc = cfg("unet", DEMO_OVERRIDES["model.encoder"], decoder_channels=json.loads(DEMO_OVERRIDES["model.decoder_channels"]))
    from rts.training.step import TrainStep

    def losses(compiled: bool) -> list[float]:
        torch.manual_seed(0)
        model = build_model(mc, in_channels=6, n_extra=3).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        step = TrainStep(model=model, optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False),
                         loss_fn=lambda o, t, v: torch.nn.functional.binary_cross_entropy_with_logits(o, t),
                         amp=(False, None, False), device=torch.device("cpu"),
                         step_model=torch.compile(model) if compiled else None)
        out = []
        for i in range(3):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(2, 6, 64, 64, generator=g)
            t = (torch.rand(2, 1, 64, 64, generator=g) < 0.2).float()
            out.append(float(step(x, t, torch.ones_like(t))[1]))
        return out

    eager, compiled = losses(False), losses(True)
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4)


def test_sync_batchnorm_conversion_keeps_the_state_dict_and_the_eval_output():
    from rts.models.weights import load_model_state

    torch.manual_seed(0)
    model = build_model(cfg("unet", "resnet18")).eval()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_model(cfg("unet", "resnet18"))).eval()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert synced.state_dict().keys() == model.state_dict().keys()
    load_model_state(synced, model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(synced(x), model(x))


# ------------------------------------------------------------------------------ deterministic


def test_deterministic_is_enforced_and_cuda_bilinear_archs_are_refused_up_front():
    from rts.training import distributed as D
    from rts.training.loop import check_deterministic

    D.seed_everything(0, 0, True)
    try:
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    params = load_params(REPO / "params.yaml")
    check_deterministic(params, torch.device("cuda"))  # the baseline (UNet++, nearest upsampling) is deterministic
    import dataclasses

    for arch in ("unet3plus", "deeplabv3plus", "segformer", "vit_unet"):
        p = dataclasses.replace(params, model=dataclasses.replace(params.model, arch=arch, encoder="resnet18" if arch != "vit_unet" else "vit_tiny_patch16_224"))
        with pytest.raises(ConfigError, match=r"train\.deterministic.*set train\.deterministic=false"):
            check_deterministic(p, torch.device("cuda"))
        check_deterministic(p, torch.device("cpu"))


# ------------------------------------------------------------------------------ collectives


def test_only_the_distributed_module_calls_torch_distributed():
    """So that one module decides which device each collective's tensors are on."""
    allowed = {SRC / "training" / "distributed.py"}
    # the launcher is torchrun itself (torch.distributed.run, elastic's errors): it starts the
    # ranks and runs no collective
    launcher = {SRC / "training" / "launch.py": ("torch.distributed.run", "torch.distributed.elastic.")}
    offenders = []
    for path in SRC.rglob("*.py"):
        if path in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                names = [n for n in names if not n.startswith(launcher.get(path, ()))] if path in launcher else names
                if any(n.startswith("torch.distributed") for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collective_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from rts.training import distributed as D
    from rts.training.step import TrainStats

    info = D.init_distributed("cpu")
    result = {"backend": info.backend}
    try:
        try:
            D.all_reduce_sum(torch.zeros(3, device="meta"))
            result["meta"] = "accepted"
        except RuntimeError as e:
            result["meta"] = str(e)
        stats = TrainStats(info.device)
        stats.loss += torch.tensor([1.0 + rank, 1.0], dtype=torch.float64)
        stats.counts += torch.tensor([rank + 1, 1, 1])
        result["stats"] = stats.reduce()
        result["gathered"] = D.all_gather_object({"rank": rank})
        result["broadcast"] = D.broadcast_object(f"from {rank}")
        rng = D.all_gather_object(D.rng_state(info.device))
        result["rng_differs"] = bool((rng[0]["torch"] != rng[1]["torch"]).any())
    finally:
        D.cleanup()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.xdist_group("gpu_path")
def test_collectives_on_two_gloo_ranks_refuse_other_devices(tmp_path):
    torch.manual_seed(0)
    mp.spawn(_collective_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["backend"] == "gloo"
        assert "meta" in r["meta"] and "gloo process group serves cpu" in r["meta"]
        assert r["stats"] == [(1.0 + 2.0) / 2, (1 + 2) / (1 + 2 + 2 + 2)]
        assert r["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert r["broadcast"] == "from 0"


# ------------------------------------------------------------------------------ training through torchrun

EFFNET = {
    "model.encoder": "efficientnet-b0",  # smp: keeps _conv_head / _bn1 unless the builder drops them
    "optim.freeze_backbone_epochs": 1,   # the freeze ends mid-run: epoch 2 of 3
    "train.max_epochs": 3,
}
TORCHRUN = ["torchrun", "--standalone", "--nproc-per-node=2", "-m", "stages.train"]


@pytest.fixture(scope="module")
def effnet_prepared(tmp_path_factory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("gpupath") / "base", {**EFFNET, "tracking.mlflow": False})
    run([sys.executable, "-m", "stages.prepare"], wd)
    return wd


def _clone(src: Path, dest: Path, overrides: dict | None = None) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoints", "models", "dvclive", "mlruns.db", "metrics"))
    if overrides:
        set_params(dest / "params.yaml", overrides)
    return dest


def _ranks(debug: Path) -> list[dict]:
    return [json.loads((debug / f"rank{r}.json").read_text()) for r in (0, 1)]


def _weights(wd: Path) -> dict:
    return torch.load(wd / "models/train/model.pt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.xdist_group("gpu_path")
def test_unfreeze_under_ddp_then_resume_on_two_ranks_is_exact(effnet_prepared, tmp_path):
    """EfficientNet (smp) with the encoder frozen for epoch 1 of 3 on 2 gloo ranks: the unfreeze
    trains every encoder parameter, the ranks stay identical, and a run killed in epoch 3 and
    resumed reaches the uninterrupted run's weights (per-rank RNG: drop-connect masks)."""
    straight = _clone(effnet_prepared, tmp_path / "straight")
    run([*TORCHRUN, "--record-dir", str(tmp_path / "dbg_straight")], straight)
    r0, r1 = _ranks(tmp_path / "dbg_straight")
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert r0["unchanged_since_unfreeze"] == [] and r1["unchanged_since_unfreeze"] == []
    ckpt = torch.load(straight / "checkpoints/last.pt", map_location="cpu", weights_only=False)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])

    killed = _clone(effnet_prepared, tmp_path / "killed")
    proc = run([*TORCHRUN, "--kill-at-step", "5"], killed, check=False)
    assert proc.returncode != 0 and not (killed / "models/train/model.pt").exists()
    run(TORCHRUN, killed)
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # another configuration on the same folder: rank 0 decides, the ranks do not hang, and the old
    # checkpoints are moved aside, not deleted
    set_params(killed / "params.yaml", {"loss": "tversky", "train.max_epochs": 1})
    proc = run(TORCHRUN, killed, timeout=300)
    assert "different configuration" in proc.stderr and "moved its checkpoints to" in proc.stderr
    aside = list((killed / "checkpoints" / "set_aside").iterdir())
    assert len(aside) == 1 and torch.load(aside[0] / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 3
    assert torch.load(killed / "checkpoints/last.pt", map_location="cpu", weights_only=False)["epoch"] == 1


@pytest.mark.slow
@pytest.mark.xdist_group("gpu_path")
def test_timm_efficientnet_unfreezes_under_ddp(effnet_prepared, tmp_path):
    wd = _clone(effnet_prepared, tmp_path / "timm", {"model.encoder": "timm-efficientnet-b0", "train.max_epochs": 2})
    run([*TORCHRUN, "--record-dir", str(tmp_path / "dbg")], wd)
    r0, r1 = _ranks(tmp_path / "dbg")
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert r0["unchanged_since_unfreeze"] == []


@pytest.mark.slow
@pytest.mark.xdist_group("gpu_path")
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_training_stage_on_the_emulated_gpu_path(effnet_prepared, tmp_path, mode):
    """The train stage with autocast (bf16; fp16 with the GradScaler), channels_last and the
    SyncBatchNorm conversion, as on a GPU, through to a model package that loads."""
    wd = _clone(effnet_prepared, tmp_path / mode, {"model.encoder": "resnet18", "optim.freeze_backbone_epochs": 0,
                                                  "train.max_epochs": 1, "train.sync_batchnorm": True})
    run([sys.executable, "-m", "stages.train", "--record-dir", str(tmp_path / "dbg")], wd, RTS_EMULATE_GPU=mode)
    debug = json.loads((tmp_path / "dbg" / "rank0.json").read_text())
    assert debug["sync_batchnorm"] and debug["channels_last"]
    ckpt = torch.load(wd / "checkpoints/last.pt", map_location="cpu", weights_only=False)
    assert bool(ckpt["scaler"]) == (mode == "fp16")  # an enabled GradScaler has state
    metrics = json.loads((wd / "metrics/train.json").read_text())
    assert metrics["best_val_realistic_pr_auc"] is not None
    from rts.inference.predictor import build_from_package, load_package

    model = build_from_package(load_package(wd / "models/train"))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
