"""The prepared GPU check: one script, one JSON, under 8 minutes on one H100/H200.

It measures the production path on whatever GPUs the machine has and writes what it found to
``--out`` after every section (so a run cut short still leaves the sections it finished):

1. ``versions``: torch, CUDA, cuDNN, NCCL, the GPUs.
2. ``gpu_tests``: the GPU-marked tests (``pytest -m gpu``), their counts and exit code.
3. ``nccl_validation``: the train stage on tiny synthetic data under ``torchrun`` with one process
   per visible GPU, the process group joined exactly as for 8 GPUs (a group of one on a
   single-GPU machine: ``RTS_PROCESS_GROUP=1``), through a validation with all its reductions,
   the per-rank RNG gather and a checkpoint.
4. ``training``: images/s of the baseline step (UNet++ / EfficientNet-B7, 512 px, bf16,
   channels_last, the loop's own :class:`rts.training.step.TrainStep`), eager and with
   ``torch.compile``, and the model FLOPs utilisation (MFU) they imply: measured forward FLOPs
   (``torch.utils.flop_counter``) x 3 for forward + backward, over the GPU's dense bf16 peak.
5. ``inference``: tiles/s of ``Predictor`` at one scale without TTA, and with standard TTA.
6. ``profile``: the largest batch ``rts profile --find-max-batch`` finds, with its peak memory.

``--smoke`` runs the same code on the CPU at tiny sizes (a U-Net / ResNet-18 at 64 px, bf16
emulated) so that ``make test`` keeps the script working; its figures mean nothing.

    python benchmarks/gpu_check.py --out gpu.json          # on the GPU machine
    python benchmarks/gpu_check.py --smoke --out gpu.json  # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from rts.config import ModelConfig  # noqa: E402
from rts.io import write_json_atomic  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets.
PEAK_BF16 = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}

FULL = {
    "arch": "unetplusplus", "encoder": "efficientnet-b7", "tile": 512, "batch": 32, "steps": 10, "warmup": 3,
    "infer_batch": 64, "infer_batches": 10, "max_batch": 512, "train_epochs": 1, "compile_backend": "inductor",
}
SMOKE = {
    "arch": "unet", "encoder": "resnet18", "tile": 64, "batch": 2, "steps": 2, "warmup": 1,
    "infer_batch": 2, "infer_batches": 2, "max_batch": 4, "train_epochs": 1,
    # dynamo + AOT autograd as on the GPU, without inductor's C++ build (minutes on 2 cores; CPU inductor
    # is what tests/training/test_gpu_path.py checks against eager)
    "compile_backend": "aot_eager",
}


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if all(part in name for part in key.split()):
            return value
    return None


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "gpus": [], "nccl": None}
    if torch.cuda.is_available():
        out["gpus"] = [{"name": torch.cuda.get_device_name(i), "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
                        "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))} for i in range(torch.cuda.device_count())]
        try:
            out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out["nccl"] = f"unavailable: {e}"
    try:
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["driver"] = None
    return out


def gpu_tests(timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", tail)}
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": tail, "counts": counts,
            "seconds": round(time.perf_counter() - t, 1), "output_tail": proc.stdout[-2000:] if proc.returncode not in (0, 5) else None}


def nccl_validation(smoke: bool, timeout: int) -> dict:
    """The train stage under torchrun, a process per visible GPU, on tiny synthetic data."""
    from workdir import make_workdir, run

    nproc = max(1, torch.cuda.device_count()) if not smoke else 1
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        wd = make_workdir(Path(tmp) / "wd", {"tracking.mlflow": False, "train.max_epochs": 1, "train.nproc": nproc,
                                             "train.mixed_precision": True, "model.arch": "unetplusplus",
                                             "model.encoder": "efficientnet-b0", "optim.freeze_backbone_epochs": 0})
        run([sys.executable, "-m", "stages.prepare"], wd, timeout=timeout)
        env = {"RTS_PROCESS_GROUP": "1"}
        if smoke:
            env["RTS_EMULATE_GPU"] = "bf16"
        t = time.perf_counter()
        proc = run(["torchrun", "--standalone", f"--nproc-per-node={nproc}", "-m", "stages.train", "--record-dir", str(Path(tmp) / "dbg")], wd, check=False,
                   timeout=timeout, **env)
        seconds = time.perf_counter() - t
        metrics = json.loads((wd / "metrics/train.json").read_text()) if (wd / "metrics/train.json").exists() else {}
        ranks = sorted((Path(tmp) / "dbg").glob("rank*.json"))
        digests = {json.loads(r.read_text())["weights_sha256"] for r in ranks}
        ckpt = wd / "checkpoints/last.pt"
        rng_ranks = len(torch.load(ckpt, map_location="cpu", weights_only=False)["rng"]) if ckpt.exists() else None
        return {
            "backend": "gloo (smoke)" if smoke else "nccl", "nproc": nproc, "process_group_joined": True,
            "returncode": proc.returncode, "seconds": round(seconds, 1),
            "val_realistic_pr_auc": metrics.get("best_val_realistic_pr_auc"), "ranks_reported": len(ranks),
            "ranks_identical_weights": len(digests) == 1 if ranks else None, "checkpoint_rng_states": rng_ranks,
            "stderr_tail": proc.stderr[-3000:] if proc.returncode else None,
        }


def _setup(p: dict, *, compile_: bool):
    from rts.training.profile import StepSetup

    return StepSetup(model=ModelConfig(arch=p["arch"], encoder=p["encoder"], encoder_weights=None), tile_size=p["tile"],
                     mixed_precision=True, channels_last=True, compile=compile_, compile_backend=p["compile_backend"], ema=True)


def forward_flops(p: dict, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from rts.models import build_model

    model = build_model(ModelConfig(arch=p["arch"], encoder=p["encoder"], encoder_weights=None)).to(device).eval()
    x = torch.randn(1, 3, p["tile"], p["tile"], device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def training(p: dict, device: torch.device, gpu_name: str) -> dict:
    from rts.training.profile import StepProfiler

    flops = forward_flops(p, device)
    peak = peak_flops(gpu_name)
    out = {"config": {k: p[k] for k in ("arch", "encoder", "tile", "batch", "steps", "warmup")}, "amp": "bf16", "channels_last": True,
           "forward_gflops_per_image": round(flops / 1e9, 2), "peak_bf16_tflops": peak / 1e12 if peak else None}
    for name, compile_ in (("eager", False), ("compiled", True)):
        t = time.perf_counter()
        try:
            profiler = StepProfiler(_setup(p, compile_=compile_), device, steps=p["steps"], warmup=p["warmup"])
            trial = profiler.measure(p["batch"])
            del profiler
        except Exception as e:  # noqa: BLE001 - a failed compile is a finding, not the end of the check
            out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            continue
        ips = trial.images_per_s
        out[name] = {"compile_backend": p["compile_backend"] if compile_ else None, "images_per_s": ips,
                     "step_time_s": trial.step_time_s, "peak_memory_bytes": trial.peak_memory_bytes,
                     "oom": trial.oom, "mfu": (ips * 3 * flops / peak) if (ips and peak) else None,
                     "seconds_incl_warmup": round(time.perf_counter() - t, 1)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def inference(p: dict, device: torch.device) -> dict:
    from packages import identity_stats

    from rts.data.normalization import Normalizer
    from rts.inference.predict import predict_batch
    from rts.inference.predictor import Predictor, to_inference_device
    from rts.models import build_model
    from rts.precision import amp_settings, gpu_path

    model = build_model(ModelConfig(arch=p["arch"], encoder=p["encoder"], encoder_weights=None)).eval()
    model = to_inference_device(model, device, benchmark=True)  # as rts predict runs it
    x = torch.rand(p["infer_batch"], 3, p["tile"], p["tile"]) * 255
    if device.type == "cuda":
        x = x.pin_memory()
    out = {"batch": p["infer_batch"], "tile": p["tile"], "amp": "bf16"}
    for tta in ("none", "standard"):
        predictor = Predictor(model=model, normalizer=Normalizer(identity_stats(), []), tile_size=p["tile"], extra_channels=[],
                              device=device, tta=tta, amp_dtype=amp_settings(device, True)[1], channels_last=gpu_path(device))
        predict_batch(predictor, x)  # warm-up (cuDNN autotuning)
        t = time.perf_counter()
        for _ in range(p["infer_batches"]):
            predict_batch(predictor, x)
        seconds = time.perf_counter() - t
        out[f"tta_{tta}"] = {"tiles_per_s": p["infer_batch"] * p["infer_batches"] / seconds,
                             "passes_per_tile": {"none": 1, "standard": 4}.get(tta)}
    return out


def largest_batch(p: dict, device: torch.device) -> dict:
    from rts.training.profile import profile

    r = profile(_setup(p, compile_=False), device=device, batch_sizes=[max(1, p["batch"] // 2)], find_max=True,
                max_batch=p["max_batch"], pos_fraction=0.5, steps=1, warmup=1)
    chosen = next((t for t in r["trials"] if t["batch_size"] == r["max_fitting_batch"]), None)
    return {"max_fitting_batch": r["max_fitting_batch"], "batch_size": r["batch_size"], "capped": r["capped"],
            "memory_budget_bytes": r["memory_budget_bytes"], "memory_measure": r["memory_measure"],
            "peak_memory_bytes": chosen["peak_memory_bytes"] if chosen else None, "trials": len(r["trials"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, bf16 emulated (for make test)")
    ap.add_argument("--skip", nargs="*", default=[], help="sections to leave out")
    args = ap.parse_args(argv)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    if args.smoke:
        os.environ["RTS_EMULATE_GPU"] = "bf16"
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        print("gpu_check: no CUDA GPU here; run with --smoke for the CPU smoke mode", file=sys.stderr)
        return 2
    p = SMOKE if args.smoke else FULL
    report: dict = {"mode": "smoke" if args.smoke else "gpu", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections_failed": []}
    report["versions"] = versions()
    gpu_name = report["versions"]["gpus"][0]["name"] if report["versions"]["gpus"] else platform.processor() or "cpu"
    write_json_atomic(args.out, report)
    sections = [
        ("gpu_tests", lambda: gpu_tests(timeout=240)),
        ("nccl_validation", lambda: nccl_validation(args.smoke, timeout=300)),
        ("training", lambda: training(p, device, gpu_name)),
        ("inference", lambda: inference(p, device)),
        ("profile", lambda: largest_batch(p, device)),
    ]
    for name, fn in sections:
        if name in args.skip:
            continue
        t = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # noqa: BLE001 - recorded in the JSON, the other sections still run
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            report["sections_failed"].append(name)
        report[name]["section_seconds"] = round(time.perf_counter() - t, 1)
        write_json_atomic(args.out, report)
        print(f"gpu_check: {name} done in {report[name]['section_seconds']} s", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    nv = report.get("nccl_validation", {})
    ok = not report["sections_failed"] and nv.get("returncode") == 0 and report.get("gpu_tests", {}).get("returncode") in (0, 5)
    report["ok"] = ok
    write_json_atomic(args.out, report)
    print(json.dumps({k: report.get(k) for k in ("ok", "sections_failed")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
