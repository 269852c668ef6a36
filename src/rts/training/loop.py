"""The training run, top to bottom: config, distributed init, data, model, optimiser, loop, cleanup.

Run under torchrun (``torchrun --standalone --nproc-per-node=N -m stages.train``); a plain
``python -m stages.train`` is a world of one. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from rts.config import ConfigError, Params, to_dict
from rts.data.augment import Augmenter
from rts.data.dataset import TileDataset, open_store
from rts.data.normalization import Normalizer, load_stats, stats_hash
from rts.data.sampler import BalancedBatchSampler, RandomBatchSampler
from rts.data.splits import Manifest
from rts.io import write_json_atomic
from rts.training import distributed as D
from rts.training.checkpoint import CheckpointManager, load, save_atomic
from rts.training.early_stopping import EarlyStopping, overfitting_warnings
from rts.training.schedule import group_lrs
from rts.training.step import TrainStats, TrainStep, amp_settings, gpu_path

log = logging.getLogger(__name__)

# Keys that do not change what is trained; they may differ between a run and its resume.
_NON_TRAINING_KEYS = {"resume", "num_workers", "pin_memory", "prefetch_factor", "persistent_workers"}


def config_fingerprint(params: Params, stats_sha: str) -> str:
    d = to_dict(params)
    d = {k: v for k, v in d.items() if k not in ("evaluate", "calibrate", "tracking", "prepare")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _NON_TRAINING_KEYS}
    d["stats"] = stats_sha
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = model.module if isinstance(model, DDP) else model
    return getattr(model, "_orig_mod", model)


def make_loader(dataset, *, batch_sampler=None, indices=None, batch_size=1, train_cfg, device) -> DataLoader:
    workers = train_cfg.num_workers
    kwargs = dict(
        num_workers=workers,
        pin_memory=train_cfg.pin_memory and device.type == "cuda",
        worker_init_fn=D.worker_init_fn,
    )
    if workers > 0:
        kwargs.update(prefetch_factor=train_cfg.prefetch_factor, persistent_workers=train_cfg.persistent_workers)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=batch_size, shuffle=False, **kwargs)


@torch.no_grad()
def validate(model, loader, *, loss_fn, device, amp, accumulators: dict, regions: list[str]) -> dict[str, tuple[float, float]]:
    """Forward one split's shard once and feed every accumulator whose tiles are in it.

    ``accumulators`` maps a name to ``(EvalAccumulator, member)``, where ``member[i]`` says whether
    tile ``i`` of the loader's dataset belongs to that set (val-balanced is a subset of
    val-realistic, so one pass serves both). Returns, per name, (loss sum, tile count): the loss is
    the batch mean over the set's tiles of each batch, weighted by their number.
    """
    was_training = model.training
    model.eval()
    try:
        return _validate(model, loader, loss_fn=loss_fn, device=device, amp=amp, accumulators=accumulators, regions=regions)
    finally:
        model.train(was_training)  # with ema: false the evaluated model is the one being trained


def _validate(model, loader, *, loss_fn, device, amp, accumulators: dict, regions: list[str]) -> dict[str, tuple[float, float]]:
    from rts.models import model_outputs_loss

    sums = {name: [0.0, 0.0] for name in accumulators}
    for batch in loader:
        image = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            logits = model(image)
        logits = logits.float()
        target, valid = batch["target"].to(device), batch["valid"].to(device)
        probs = torch.sigmoid(logits)[:, 0].cpu().numpy()
        labels = batch["label"].numpy()
        index = batch["index"].tolist()
        for name, (acc, member) in accumulators.items():
            rows = [j for j, idx in enumerate(index) if member[idx]]
            if not rows:
                continue
            sel = torch.as_tensor(rows, device=logits.device)
            loss = model_outputs_loss(loss_fn, logits[sel], target[sel], valid[sel], 0.0)
            sums[name][0] += float(loss) * len(rows)
            sums[name][1] += len(rows)
            for j in rows:
                acc.update(probs[j], labels[j], positive_tile=bool(batch["positive"][j]), region=regions[index[j]])
    return {name: (s[0], s[1]) for name, s in sums.items()}


def train(params: Params, *, prepared: Path, models_dir: Path, ckpt_dir: Path, metrics_path: Path, live_dir: str | None = "dvclive/train") -> dict:
    """Train one model; returns the final metrics dict (also written to ``metrics_path`` on rank 0)."""
    from rts.losses import build_loss
    from rts.metrics import EvalAccumulator
    from rts.models import build_model, encoder_parameters, model_outputs_loss
    from rts.models.ema import ModelEMA
    from rts.tracking import Tracker, frozen_requirements, system_info

    tc, oc = params.train, params.optim
    # ---------------------------------------------------------------- distributed init, seeds
    dist = D.init_distributed()
    # Same seed on every rank while building the model, so initial weights (and the EMA copied
    # from them) agree before DDP broadcasts; rank-offset seeds afterwards for data and dropout.
    D.seed_everything(params.seed, 0, tc.deterministic)
    device = dist.device
    check_deterministic(params, device)
    amp = amp_settings(device, tc.mixed_precision)

    # ---------------------------------------------------------------- data
    stats_path = prepared / "normalization_stats.json"
    stats = load_stats(stats_path)
    stats_sha = stats_hash(stats)
    summary = json.loads((prepared / "summary.json").read_text())
    manifests = {n: Manifest.load(prepared / "splits" / f"{n}.json") for n in ("train", "val_balanced", "val_realistic")}
    normalizer = Normalizer(stats, params.data.extra_channels)
    store = open_store(params.data.root, params.data.cache)
    windows = None
    if tc.multires_scales:  # multi-resolution training reads neighbourhoods like multi-scale inference
        from rts.data.splits import read_metadata
        from rts.inference.multiscale import NeighbourWindows

        windows = NeighbourWindows(store, [r["tile_id"] for r in read_metadata(Path(params.data.root))], normalizer.extra_index)
        windows.index()  # built once here; loader workers inherit it
    train_ds = TileDataset(
        store, manifests["train"].tiles, normalizer,
        augmenter=Augmenter(params.augment) if params.augment.enabled else None,
        boundary_ignore_width=params.data.boundary_ignore_width,
        soft_labels=params.data.soft_labels, soft_label_sigma=params.data.soft_label_sigma,
        windows=windows,
    )
    sampler_cls = BalancedBatchSampler if params.sampler.balanced else RandomBatchSampler
    sampler_kwargs = dict(
        batch_size=tc.batch_size, ratio=params.sampler.train_ratio,
        curriculum=(params.sampler.curriculum_start_ratio, params.sampler.curriculum_end_ratio, params.sampler.curriculum_epochs) if params.sampler.curriculum else None,
        steps_per_epoch=tc.steps_per_epoch, seed=params.seed, rank=dist.rank, world_size=dist.world_size,
        scales=tuple(tc.multires_scales),
    )
    if params.sampler.balanced:
        sampler_kwargs["pos_fraction"] = params.sampler.pos_fraction_per_batch
    sampler = sampler_cls(train_ds.positive_indices, train_ds.negative_indices, **sampler_kwargs)
    train_loader = make_loader(train_ds, batch_sampler=sampler, train_cfg=tc, device=device)
    # One pass over val-realistic serves val-balanced too: it is a subset (rts.data.splits).
    val_tiles = manifests["val_realistic"].tiles
    balanced_ids = {t.tile_id for t in manifests["val_balanced"].tiles}
    missing = balanced_ids - {t.tile_id for t in val_tiles}
    if missing:
        raise ValueError(f"{prepared / 'splits'}: val_balanced tiles missing from val_realistic: {sorted(missing)[:5]}")
    val_ds = TileDataset(store, val_tiles, normalizer, boundary_ignore_width=0)
    shard = list(range(len(val_ds)))[dist.rank :: dist.world_size]  # disjoint, no padding duplicates
    val_sets = {
        "loader": make_loader(val_ds, indices=shard, batch_size=params.evaluate.batch_size, train_cfg=tc, device=device),
        "regions": [t.region for t in val_tiles],
        "members": {"val_balanced": [t.tile_id in balanced_ids for t in val_tiles], "val_realistic": [True] * len(val_tiles)},
    }

    # ---------------------------------------------------------------- model, loss, optimiser
    model = build_model(params.model, in_channels=params.data.in_channels, n_extra=len(params.data.extra_channels),
                        extra_channels=list(params.data.extra_channels)).to(device)
    D.seed_everything(params.seed, dist.rank, tc.deterministic)
    channels_last = tc.channels_last and gpu_path(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # SyncBatchNorm reduces its statistics over the group; it needs a GPU group. On the CPU path it is
    # converted only in a world of one (test emulation), where it normalises like BatchNorm.
    if tc.sync_batchnorm and (dist.backend == "nccl" or (gpu_path(device) and not dist.distributed)):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    counts = summary["class_pixel_counts"]
    loss_fn = build_loss(params.loss, focal=params.focal, tversky=params.tversky, balanced_ce=params.balanced_ce,
                         class_pixel_counts=(counts["background"], counts["rts"]))
    enc_ids = {id(p) for p in encoder_parameters(model)}
    enc_params = [p for p in model.parameters() if id(p) in enc_ids]
    dec_params = [p for p in model.parameters() if id(p) not in enc_ids]
    optimizer = torch.optim.AdamW(
        [{"params": enc_params, "name": "encoder"}, {"params": dec_params, "name": "decoder"}],
        lr=oc.lr, weight_decay=oc.weight_decay,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp[2])
    ema = ModelEMA(model, tc.ema_decay) if tc.ema else None
    stopper = EarlyStopping(patience=tc.early_stopping_patience, min_delta=tc.early_stopping_min_delta)
    ckpts = CheckpointManager(ckpt_dir, every_n_epochs=tc.save_every_n_epochs, keep_last=tc.keep_last_n_checkpoints)
    fingerprint = config_fingerprint(params, stats_sha)

    # ---------------------------------------------------------------- resume
    start_epoch, global_step, history, run_id = 0, 0, [], None
    best_state, best_metrics = None, {}
    resume_path = _resume_decision(ckpts, fingerprint, dist) if tc.resume == "auto" else None
    if resume_path is not None:
        state = load(resume_path)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        stopper.load_state_dict(state["early_stopping"])
        start_epoch, global_step, history = state["epoch"], state["step"], state["history"]
        best_metrics, run_id = state["best_metrics"], state.get("mlflow_run_id")
        best_state = state["best_state"] if dist.is_main else None  # only rank 0 writes the package
        rng = state["rng"]
        if isinstance(rng, list):  # one state per rank (since per-rank saving)
            if len(rng) != dist.world_size:
                raise ValueError(f"{resume_path}: holds RNG states of {len(rng)} ranks, this run has {dist.world_size}")
            rng = rng[dist.rank]
        D.set_rng_state(rng, device)
        del state, rng  # a B7 checkpoint is over 1 GB: do not keep it referenced for the whole run
        if dist.is_main:
            log.info("resumed from %s at epoch %d (step %d)", resume_path, start_epoch, global_step)
    tracker = Tracker(active=dist.is_main, mlflow_enabled=params.tracking.mlflow, tracking_uri=params.tracking.mlflow_tracking_uri,
                      experiment=params.tracking.mlflow_experiment, run_id=run_id, live_dir=live_dir, resume=start_epoch > 0)
    if dist.is_main:
        from rts.config import flatten

        sysinfo = system_info(stats.get("dataset_version", "unknown"))
        tracker.log_params({**flatten(to_dict(params)), **sysinfo, "world_size": dist.world_size,
                            "effective_batch_size": tc.batch_size * dist.world_size})
        tracker.set_tags({"dvc_exp_name": sysinfo["dvc_exp_name"], "git_commit": sysinfo["git_commit"]})
        tracker.log_text(frozen_requirements(), "requirements_frozen.txt")

    ddp_model = model
    frozen = None
    # Test hooks (environment only, never params): record sampled tiles and weights; self-SIGTERM.
    debug_dir = os.environ.get("RTS_DEBUG_DIR")
    kill_at_step = int(os.environ.get("RTS_DEBUG_KILL_AT_STEP", "0")) or None
    seen: list[int] = []

    def set_frozen(flag: bool) -> torch.nn.Module:
        """Freeze/unfreeze the encoder; DDP must be rebuilt since it registers trainable params once.

        Every trainable parameter takes part in every forward (the builder drops the encoders'
        unused classifier heads), so DDP runs without ``find_unused_parameters`` and its
        reduction is the same work on every step.
        """
        for p in enc_params:
            p.requires_grad_(not flag)
        m = model
        if tc.compile:
            m = torch.compile(m)
        if dist.distributed:
            m = DDP(m, device_ids=[device.index] if device.type == "cuda" else None)
        return m

    step_fn = TrainStep(model=model, optimizer=optimizer, scaler=scaler, loss_fn=loss_fn, amp=amp, device=device,
                        grad_clip_norm=oc.grad_clip_norm, aux_weight=params.model.deep_supervision_weight, ema=ema,
                        channels_last=channels_last)
    train_stats = TrainStats(device)
    unfrozen_at: dict[str, torch.Tensor] | None = None  # test hook: encoder weights when the freeze ends

    # SIGTERM (preemption, torchrun shutting down): stop at once; resume restarts from last.pt.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    # ---------------------------------------------------------------- loop
    stop = stopper.should_stop
    epoch = start_epoch
    t_start = time.time()
    while epoch < tc.max_epochs and not stop:
        improved_this_epoch = False
        want_frozen = epoch < oc.freeze_backbone_epochs
        if want_frozen != frozen:
            ddp_model, frozen = set_frozen(want_frozen), want_frozen
            step_fn.step_model = ddp_model
            if debug_dir is not None and not want_frozen:
                unfrozen_at = {n: p.detach().clone() for n, p in unwrap(model).named_parameters() if p.requires_grad}
        sampler.set_epoch(epoch)
        sampler.set_crop_size(progressive_crop(tc.progressive_resizing, epoch, params.data.tile_size))
        steps = len(sampler)
        ddp_model.train()
        train_stats.reset()
        for i, batch in enumerate(train_loader):
            for group in optimizer.param_groups:
                group["lr"] = group_lrs(epoch + i / steps, optim=oc, max_epochs=tc.max_epochs)[group["name"]]
            image = batch["image"].to(device, non_blocking=True)
            target, valid = batch["target"].to(device, non_blocking=True), batch["valid"].to(device, non_blocking=True)
            outputs, loss = step_fn(image, target, valid)
            train_stats.add(outputs, loss, target, valid)
            global_step += 1
            if debug_dir is not None:
                seen.extend(int(k) for k in batch["index"])
            if kill_at_step == global_step:  # test hook: simulate preemption mid-epoch
                os.kill(os.getpid(), signal.SIGTERM)
            last_in_epoch = i == steps - 1
            due = (tc.val_unit == "step" and global_step % tc.val_every == 0) or (
                tc.val_unit == "epoch" and last_in_epoch and (epoch + 1) % tc.val_every == 0)
            if due or (last_in_epoch and epoch + 1 == tc.max_epochs):
                eval_model = ema.module if ema is not None else model
                metrics = {"epoch": epoch + 1, "step": global_step, "lr": optimizer.param_groups[1]["lr"]}
                metrics["train_loss"], metrics["train_iou"] = train_stats.reduce()
                metrics.update(run_validation(eval_model, val_sets, loss_fn=loss_fn, device=device, amp=amp, params=params,
                                              EvalAccumulator=EvalAccumulator))
                history.append(metrics)
                improved = stopper.step(metrics["val_realistic_pr_auc"])
                if improved:
                    if dist.is_main:  # only rank 0 saves; the other ranks would copy a model to the CPU for nothing
                        best_state = {k: v.detach().cpu().clone() for k, v in unwrap(eval_model).state_dict().items()}
                    best_metrics = dict(metrics)
                    improved_this_epoch = True
                if dist.is_main:
                    tracker.log_metrics({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, step=global_step)
                    log.info("epoch %d step %d: %s", epoch + 1, global_step,
                             " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step")))
                    for w in overfitting_warnings(history):
                        log.warning("overfitting indicator: %s", w)
                stop = stopper.should_stop
                if stop and not last_in_epoch:
                    break
        epoch += 1
        rng_states = D.all_gather_object(D.rng_state(device))  # every rank's generators, for an exact resume
        if dist.is_main:
            state = {
                "epoch": epoch, "step": global_step, "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "sampler": sampler.state_dict(),
                "early_stopping": stopper.state_dict(), "history": history, "best_state": best_state,
                "best_metrics": best_metrics, "rng": rng_states, "config": to_dict(params),
                "config_fingerprint": fingerprint, "normalization_stats": stats, "mlflow_run_id": tracker.run_id,
            }
            ckpts.save(state, epoch=epoch, is_best=improved_this_epoch)
        D.barrier()

    if debug_dir is not None:  # test hook: what this rank trained on, and its final weights
        # parameters only: BatchNorm running stats are rank-local between DDP's buffer broadcasts
        digest = hashlib.sha256(b"".join(p.detach().cpu().float().numpy().tobytes() for p in unwrap(model).parameters())).hexdigest()
        still = sorted(n for n, p in unwrap(model).named_parameters() if unfrozen_at is not None and n in unfrozen_at
                       and torch.equal(p.detach(), unfrozen_at[n]))
        write_json_atomic(Path(debug_dir) / f"rank{dist.rank}.json", {"indices": seen, "weights_sha256": digest,
                                                                     "unchanged_since_unfreeze": still,
                                                                     "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()),
                                                                     "channels_last": channels_last})

    # ---------------------------------------------------------------- outputs (rank 0)
    if stop and dist.is_main:
        log.info("early stopping after %d validations without improvement > %g", stopper.patience, stopper.min_delta)
    final = {
        "best": {k: v for k, v in best_metrics.items()},
        "epochs_trained": epoch,
        "steps": global_step,
        "early_stopped": bool(stop),
        "wall_time_s": time.time() - t_start,
        "world_size": dist.world_size,
    }
    if dist.is_main:
        if best_state is None:  # no validation ran (e.g. zero epochs left): deploy the current EMA
            best_state = {k: v.detach().cpu() for k, v in unwrap(ema.module if ema else model).state_dict().items()}
        package = {
            "format": "rts-model/1",
            "state_dict": best_state,
            "model_config": to_dict(params.model),
            "data_config": to_dict(params.data),
            "config": to_dict(params),
            "normalization_stats": stats,
            "normalization_stats_sha256": stats_sha,
            "dataset_version": stats.get("dataset_version", "unknown"),
            "git_commit": system_info("")["git_commit"],
            "best_metrics": best_metrics,
            "mlflow_run_id": tracker.run_id,
        }
        models_dir.mkdir(parents=True, exist_ok=True)
        save_atomic(package, models_dir / "model.pt")
        write_json_atomic(models_dir / "normalization_stats.json", stats)
        write_json_atomic(metrics_path, _flat_metrics(final))
        tracker.log_artifact(models_dir / "model.pt", "model")
        tracker.close()
    D.barrier()
    D.cleanup()
    return final


def _resume_decision(ckpts: CheckpointManager, fingerprint: str, dist: D.DistInfo) -> Path | None:
    """The checkpoint to resume from, decided on rank 0 and broadcast, so that every rank takes the
    same branch (and the same collectives) even while rank 0 moves files.

    A checkpoint of another configuration is never deleted: rank 0 moves it aside into
    ``<checkpoints>/set_aside/<its fingerprint>/`` and says where, and the run starts fresh.
    """
    decision: tuple[str, str | None] = ("fresh", None)
    if dist.is_main:
        path = ckpts.latest()
        if path is not None:
            found = load(path).get("config_fingerprint")
            if found == fingerprint:
                decision = ("resume", str(path))
            else:
                where = ckpts.set_aside(str(found or "unknown")[:12])
                log.warning("%s was written by a different configuration (fingerprint %s, this run %s); moved its "
                            "checkpoints to %s and starting fresh", path, str(found)[:12], fingerprint[:12], where)
    kind, path = D.broadcast_object(decision)
    return Path(path) if kind == "resume" else None


def check_deterministic(params: Params, device: torch.device) -> None:
    """``train.deterministic: true`` is enforced (``torch.use_deterministic_algorithms(True)``); refuse
    up front, with the fix, the CUDA configurations whose backward has no deterministic kernel.

    On CUDA the backward of bilinear interpolation (``upsample_bilinear2d_backward``) is
    nondeterministic and would raise at the first step. It is in the decoders of UNet3+,
    DeepLabV3+, SegFormer and ViT-UNet. UNet++ and
    U-Net (nearest-neighbour upsampling, global pooling as a mean), the baseline, are deterministic.
    On CPU every kernel used here is deterministic.
    """
    if not params.train.deterministic or device.type != "cuda":
        return
    bilinear = {"unet3plus", "deeplabv3plus", "segformer", "vit_unet"}
    if params.model.arch in bilinear:
        raise ConfigError(
            f"train.deterministic: true, but model.arch={params.model.arch!r} differentiates bilinear interpolation, "
            "which has no deterministic CUDA kernel; set train.deterministic=false for this architecture "
            "(its runs are then not bit-reproducible), or use unetplusplus / unet"
        )


def run_validation(model, val_sets, *, loss_fn, device, amp, params: Params, EvalAccumulator) -> dict:
    """Loss, pixel IoU and PR-AUC on val-balanced and val-realistic (one forward pass), counts
    reduced across ranks."""
    ev = params.evaluate
    accs = {
        name: (EvalAccumulator(n_bins=ev.n_bins, operating_threshold=ev.threshold, object_thresholds=[ev.threshold],
                               iou_thresholds=[ev.primary_iou], min_object_px=ev.min_object_px,
                               merge_distance_px=ev.merge_distance_px, objects=name == "val_realistic"), member)
        for name, member in val_sets["members"].items()
    }
    losses = validate(model, val_sets["loader"], loss_fn=loss_fn, device=device, amp=amp, accumulators=accs,
                      regions=val_sets["regions"])
    out = {}
    for name, (acc, _) in accs.items():
        totals = D.all_reduce_sum(torch.tensor(losses[name], dtype=torch.float64))
        acc.all_reduce()
        out[f"{name}_loss"] = float(totals[0] / max(totals[1], 1))
        if name == "val_balanced":
            res = acc.result(ratios=[], recall_targets=(), primary_iou=ev.primary_iou)["unweighted"]
            out["val_balanced_iou"] = res["iou_rts"]
            out["val_balanced_pr_auc"] = res["pr_auc"]
        else:
            res = acc.result(ratios=ev.ratios, recall_targets=(), primary_iou=ev.primary_iou)
            for r in ev.ratios:
                rr = res[f"ratio_{r}"]
                out[f"val_{r}_pr_auc"] = rr["pr_auc"]
                out[f"val_{r}_iou_rts"] = rr["iou_rts"]
                out[f"val_{r}_obj_precision"] = rr[f"obj_iou{ev.primary_iou}_precision"]
                out[f"val_{r}_obj_recall"] = rr[f"obj_iou{ev.primary_iou}_recall"]
            out["val_realistic_iou"] = res["ratio_%d" % params.train.early_stopping_ratio]["iou_rts"]
            out["val_realistic_pr_auc"] = res["ratio_%d" % params.train.early_stopping_ratio]["pr_auc"]
    # the metric library writes undefined values (e.g. precision with no detection) as None
    return {k: math.nan if v is None else float(v) for k, v in out.items()}


def progressive_crop(phases: list[list[int]], epoch: int, tile_size: int) -> int | None:
    """Crop size of ``epoch`` under progressive resizing (guide 8.5): ``[[size, epochs], ...]`` phases,
    then whole tiles."""
    start = 0
    for size, n in phases:
        if epoch < start + n:
            return size if size < tile_size else None
        start += n
    return None


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _flat_metrics(final: dict) -> dict:
    out = {k: v for k, v in final.items() if k != "best"}
    out.update({f"best_{k}": v for k, v in final["best"].items()})
    # JSON has no NaN (a precision with no prediction is undefined): write null.
    clean = {}
    for k, v in out.items():
        if isinstance(v, (np.floating, float)):
            v = None if math.isnan(v) else float(v)
        clean[k] = v
    return clean
