"""The training run, top to bottom: config, distributed init, data, model, optimiser, loop, cleanup.

Run under torchrun (``torchrun --standalone --nproc-per-node=N -m stages.train``); a plain
``python -m stages.train`` is a world of one. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from rts.config import ConfigError, Params, flatten, to_dict
from rts.data.augment import Augmenter
from rts.data.dataset import TileDataset, open_store
from rts.data.normalization import Normalizer, dated, load_stats, stats_hash
from rts.data.sampler import BalancedBatchSampler, RandomBatchSampler
from rts.data.splits import Manifest, read_metadata
from rts.data.windows import NeighbourWindows
from rts.errors import DataError
from rts import logs
from rts.io import write_json_atomic
from rts.metrics import EvalAccumulator
from rts.metrics.keys import object_key, result_key, tracking_name
from rts.models import build_model, encoder_parameters, model_outputs_loss
from rts.models.ema import ModelEMA, unwrap_model
from rts.tracking import Tracker, frozen_requirements, system_info
from rts.training import distributed as D
from rts.training.checkpoint import CheckpointManager, load, save_atomic
from rts.training.early_stopping import EarlyStopping, overfitting_warnings
from rts.training.losses import build_loss
from rts.training.schedule import group_lrs
from rts.precision import amp_settings, gpu_path
from rts.training.step import TrainStats, TrainStep

log = logging.getLogger(__name__)

# The params training reads: the sections, and the ``evaluate`` keys of validation. The
# fingerprint, the MLflow params and the saved config cover exactly these, and dvc.yaml's train
# params list the same (a test checks both against what a run reads).
TRAIN_SECTIONS = ("seed", "loss", "data", "model", "focal", "tversky", "balanced_ce", "augment", "sampler", "optim", "train", "tracking")
TRACKING_KEYS = ("mlflow", "mlflow_tracking_uri", "mlflow_experiment")  # registered_model_name is calibrate's
VALIDATION_KEYS = ("ratios", "threshold", "primary_iou", "min_object_px", "merge_distance_px", "n_bins", "batch_size")
# Keys that do not change what is trained; they may differ between a run and its resume.
_NON_TRAINING_KEYS = {"resume", "num_workers", "pin_memory", "prefetch_factor", "persistent_workers"}


def training_params(params: Params) -> dict:
    """The params this stage reads, as a dict (``TRAIN_SECTIONS``, ``tracking.TRACKING_KEYS`` and ``evaluate.VALIDATION_KEYS``)."""
    d = {k: to_dict(getattr(params, k)) if dataclasses.is_dataclass(getattr(params, k)) else getattr(params, k)
         for k in TRAIN_SECTIONS if k != "tracking"}
    d["tracking"] = {k: getattr(params.tracking, k) for k in TRACKING_KEYS}
    d["evaluate"] = {k: getattr(params.evaluate, k) for k in VALIDATION_KEYS}
    return d


def config_fingerprint(params: Params, stats_sha: str) -> str:
    """Hash of what determines the trained weights: a checkpoint of another fingerprint is not resumed."""
    d = {k: v for k, v in training_params(params).items() if k not in ("evaluate", "tracking")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _NON_TRAINING_KEYS}
    d["stats"] = stats_sha
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


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


@dataclass
class TrainHooks:
    """What tests ask of a run, passed explicitly (``stages.train --record-dir/--kill-at-step``).

    Attributes:
        record_dir: each rank writes ``rank<N>.json`` there: the tile indices it trained on, the
            sha256 of its final parameters, the encoder parameters unchanged since the freeze ended,
            and whether SyncBatchNorm and channels_last were on.
        kill_at_step: the process sends itself SIGTERM after this global step (a preemption).
    """

    record_dir: Path | None = None
    kill_at_step: int | None = None


@dataclass
class TrainingData:
    stats: dict
    stats_sha: str
    class_pixel_counts: dict
    sampler: BalancedBatchSampler | RandomBatchSampler
    loader: DataLoader
    val_sets: dict


@dataclass
class Run:
    """Everything a step, a validation and a checkpoint touch."""

    model: torch.nn.Module
    enc_params: list[torch.nn.Parameter]
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    stopper: EarlyStopping
    ckpts: CheckpointManager
    channels_last: bool


@dataclass
class Progress:
    """What a checkpoint restores: where the run is and the best model so far."""

    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    run_id: str | None = None
    best_state: dict | None = None
    best_metrics: dict = field(default_factory=dict)


def train(params: Params, *, prepared: Path, models_dir: Path, ckpt_dir: Path, metrics_path: Path,
          live_dir: str | None = "dvclive/train", hooks: TrainHooks | None = None) -> dict:
    """Train one model; returns the final metrics dict (also written to ``metrics_path`` on rank 0)."""
    hooks = hooks or TrainHooks()
    tc, oc = params.train, params.optim
    dist = D.init_distributed()
    # Same seed on every rank while building the model, so initial weights (and the EMA copied
    # from them) agree before DDP broadcasts; rank-offset seeds afterwards for data and dropout.
    D.seed_everything(params.seed, 0, tc.deterministic)
    device = dist.device
    check_deterministic(params, device)
    amp = amp_settings(device, tc.mixed_precision)
    data = load_training_data(params, prepared, dist, device)
    run = build_run(params, data, dist, device, amp, ckpt_dir)
    fingerprint = config_fingerprint(params, data.stats_sha)
    resume_path = _resume_decision(run.ckpts, fingerprint, dist, params, data.stats_sha) if tc.resume == "auto" else None
    progress = resume(resume_path, run, data.sampler, dist, device) if resume_path is not None else Progress()
    # SIGTERM (preemption, torchrun shutting down): stop at once; resume restarts from last.pt. Set
    # before the MLflow run is opened, so a stop however early ends it as KILLED, never RUNNING.
    _Stop.signum = None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tracked(params, data.stats, dist, live_dir, progress) as tracker:  # FINISHED, KILLED (SIGTERM, Ctrl-C) or FAILED
        step_fn = TrainStep(model=run.model, optimizer=run.optimizer, scaler=run.scaler, loss_fn=run.loss_fn, amp=amp, device=device,
                            grad_clip_norm=oc.grad_clip_norm, aux_weight=params.model.deep_supervision_weight, ema=run.ema,
                            channels_last=run.channels_last)
        train_stats = TrainStats(device)
        record = _HookRecord() if hooks.record_dir is not None else None

        ddp_model, frozen = run.model, None
        stop = run.stopper.should_stop
        epoch = progress.epoch
        t_start = time.time()
        while epoch < tc.max_epochs and not stop:
            improved_this_epoch = False
            want_frozen = epoch < oc.freeze_backbone_epochs
            if want_frozen != frozen:
                ddp_model, frozen = set_frozen(run, want_frozen, compile=tc.compile, dist=dist, device=device), want_frozen
                step_fn.step_model = ddp_model
                if record is not None and not want_frozen:
                    record.unfrozen(run.model)
            data.sampler.set_epoch(epoch)
            data.sampler.set_crop_size(progressive_crop(tc.progressive_resizing, epoch, params.data.tile_size))
            steps = len(data.sampler)
            ddp_model.train()
            train_stats.reset()
            shown = logs.progress(data.loader, total=steps, desc=f"epoch {epoch + 1}/{tc.max_epochs}", unit="step", enabled=dist.is_main)
            for i, batch in enumerate(shown):
                _raise_if_stopped()
                for group in run.optimizer.param_groups:
                    group["lr"] = group_lrs(epoch + i / steps, optim=oc, max_epochs=tc.max_epochs)[group["name"]]
                image = batch["image"].to(device, non_blocking=True)
                target, valid = batch["target"].to(device, non_blocking=True), batch["valid"].to(device, non_blocking=True)
                outputs, loss = step_fn(image, target, valid)
                train_stats.add(outputs, loss, target, valid)
                progress.step += 1
                if record is not None:
                    record.seen.extend(int(k) for k in batch["index"])
                if hooks.kill_at_step == progress.step:
                    os.kill(os.getpid(), signal.SIGTERM)
                last_in_epoch = i == steps - 1
                due = (tc.val_unit == "step" and progress.step % tc.val_every == 0) or (
                    tc.val_unit == "epoch" and last_in_epoch and (epoch + 1) % tc.val_every == 0)
                if due or (last_in_epoch and epoch + 1 == tc.max_epochs):
                    improved_this_epoch |= validation_point(params, run, data, progress, train_stats, tracker, dist, device, amp, epoch)
                    _raise_if_stopped()
                    stop = run.stopper.should_stop
                    if stop and not last_in_epoch:
                        break
            shown.close()  # the epoch's last progress line now, also after an early-stopping break
            epoch += 1
            save_checkpoint(params, run, data, progress, tracker, dist, device, epoch=epoch, fingerprint=fingerprint,
                            is_best=improved_this_epoch)

        if record is not None:
            record.write(hooks.record_dir, run, dist)
        if stop and dist.is_main:
            log.info("early stopping after %d validations without improvement > %g", run.stopper.patience, run.stopper.min_delta)
        final = {
            "best": {k: v for k, v in progress.best_metrics.items()},
            "epochs_trained": epoch,
            "steps": progress.step,
            "early_stopped": bool(stop),
            "wall_time_s": time.time() - t_start,
            "world_size": dist.world_size,
        }
        if dist.is_main:
            write_model(params, run, data, progress, tracker, models_dir)
            write_json_atomic(metrics_path, _flat_metrics(final))
            tracker.close()
    D.barrier()
    D.cleanup()
    return final


def load_training_data(params: Params, prepared: Path, dist: D.DistInfo, device: torch.device) -> TrainingData:
    """Statistics, the balanced training sampler and loader, and this rank's shard of val-realistic
    (one pass serves val-balanced too: it is a subset)."""
    tc = params.train
    stats = load_stats(prepared / "normalization_stats.json")
    summary = json.loads((prepared / "summary.json").read_text())
    manifests = {n: Manifest.load(prepared / "splits" / f"{n}.json") for n in ("train", "val_balanced", "val_realistic")}
    normalizer = Normalizer(stats, params.data.extra_channels)
    store = open_store(params.data.root, params.data.cache)
    windows = None
    if tc.multires_scales:  # multi-resolution training reads neighbourhoods like multi-scale inference
        windows = NeighbourWindows(store, [r["tile_id"] for r in read_metadata(Path(params.data.root))], normalizer.extra_index)
        windows.index()  # built once here; loader workers inherit it
    train_ds = TileDataset(
        store, manifests["train"].tiles, normalizer,
        augmenter=Augmenter(params.augment) if params.augment.enabled else None,
        boundary_ignore_width=params.data.boundary_ignore_width,
        soft_labels=params.data.soft_labels, soft_label_sigma=params.data.soft_label_sigma,
        windows=windows,
    )
    sampler = build_sampler(params, train_ds, dist)
    val_tiles = manifests["val_realistic"].tiles
    balanced_ids = {t.tile_id for t in manifests["val_balanced"].tiles}
    missing = balanced_ids - {t.tile_id for t in val_tiles}
    if missing:
        raise DataError(f"{prepared / 'splits'}: val_balanced tiles missing from val_realistic: {sorted(missing)[:5]}; "
                        "run `dvc repro -f prepare`")
    val_ds = TileDataset(store, val_tiles, normalizer, boundary_ignore_width=0)
    shard = list(range(len(val_ds)))[dist.rank :: dist.world_size]  # disjoint, no padding duplicates
    val_sets = {
        "loader": make_loader(val_ds, indices=shard, batch_size=params.evaluate.batch_size, train_cfg=tc, device=device),
        "regions": [t.region for t in val_tiles],
        "members": {"val_balanced": [t.tile_id in balanced_ids for t in val_tiles], "val_realistic": [True] * len(val_tiles)},
    }
    return TrainingData(stats=stats, stats_sha=stats_hash(stats), class_pixel_counts=summary["class_pixel_counts"], sampler=sampler,
                        loader=make_loader(train_ds, batch_sampler=sampler, train_cfg=tc, device=device), val_sets=val_sets)


def build_sampler(params: Params, train_ds: TileDataset, dist: D.DistInfo) -> BalancedBatchSampler | RandomBatchSampler:
    s, tc = params.sampler, params.train
    kwargs = dict(
        batch_size=tc.batch_size, ratio=s.train_ratio,
        curriculum=(s.curriculum_start_ratio, s.curriculum_end_ratio, s.curriculum_epochs) if s.curriculum else None,
        steps_per_epoch=tc.steps_per_epoch, seed=params.seed, rank=dist.rank, world_size=dist.world_size,
        scales=tuple(tc.multires_scales),
    )
    if s.balanced:
        return BalancedBatchSampler(train_ds.positive_indices, train_ds.negative_indices, pos_fraction=s.pos_fraction_per_batch, **kwargs)
    return RandomBatchSampler(train_ds.positive_indices, train_ds.negative_indices, **kwargs)


def build_run(params: Params, data: TrainingData, dist: D.DistInfo, device: torch.device, amp, ckpt_dir: Path) -> Run:
    """Model (on the device, channels_last and SyncBatchNorm where they apply), loss, AdamW over
    encoder and decoder groups, GradScaler, EMA, early stopping and the checkpoint folder."""
    tc, oc = params.train, params.optim
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
    counts = data.class_pixel_counts
    loss_fn = build_loss(params.loss, focal=params.focal, tversky=params.tversky, balanced_ce=params.balanced_ce,
                         class_pixel_counts=(counts["background"], counts["rts"]))
    enc_ids = {id(p) for p in encoder_parameters(model)}
    enc_params = [p for p in model.parameters() if id(p) in enc_ids]
    dec_params = [p for p in model.parameters() if id(p) not in enc_ids]
    optimizer = torch.optim.AdamW(
        [{"params": enc_params, "name": "encoder"}, {"params": dec_params, "name": "decoder"}],
        lr=oc.lr, weight_decay=oc.weight_decay,
    )
    return Run(
        model=model, enc_params=enc_params, loss_fn=loss_fn, optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=amp[2]),
        ema=ModelEMA(model, tc.ema_decay) if tc.ema else None,
        stopper=EarlyStopping(patience=tc.early_stopping_patience, min_delta=tc.early_stopping_min_delta),
        ckpts=CheckpointManager(ckpt_dir, every_n_epochs=tc.save_every_n_epochs, keep_last=tc.keep_last_n_checkpoints),
        channels_last=channels_last,
    )


def resume(path: Path, run: Run, sampler, dist: D.DistInfo, device: torch.device) -> Progress:
    """Restore model, optimiser, scaler, EMA, sampler, early stopping and this rank's RNG states."""
    state = load(path)
    unwrap_model(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    sampler.load_state_dict(state["sampler"])
    run.stopper.load_state_dict(state["early_stopping"])
    progress = Progress(epoch=state["epoch"], step=state["step"], history=state["history"], run_id=state.get("mlflow_run_id"),
                        best_state=state["best_state"] if dist.is_main else None,  # only rank 0 writes the package
                        best_metrics=state["best_metrics"])
    rng = state["rng"]
    if isinstance(rng, list):  # one state per rank (since per-rank saving)
        if len(rng) != dist.world_size:
            raise ConfigError(f"{path}: holds RNG states of {len(rng)} ranks, this run has {dist.world_size}; "
                              f"resume with train.nproc={len(rng)} or set train.resume=never")
        rng = rng[dist.rank]
    D.set_rng_state(rng, device)
    del state, rng  # a B7 checkpoint is over 1 GB: do not keep it referenced for the whole run
    if dist.is_main:
        log.info("resumed from %s at epoch %d (step %d)", path, progress.epoch, progress.step)
    return progress


@contextlib.contextmanager
def tracked(params: Params, stats: dict, dist: D.DistInfo, live_dir: str | None, progress: Progress):
    """The block a training is recorded in: dvclive and MLflow on rank 0 (a no-op tracker elsewhere),
    params, system info and the frozen requirements logged once per run, and the run's end status
    (:meth:`Tracker.ending`). The run is opened inside the block, its ``dvc_exp_name`` and
    ``git_commit`` tags with it: a stop signal while it is opened or its params are logged ends it
    as KILLED, and the runner can still tell whose attempt it was."""
    sysinfo = system_info(stats.get("dataset_version", "unknown")) if dist.is_main else {}
    tracker = Tracker(active=dist.is_main, mlflow_enabled=params.tracking.mlflow, tracking_uri=params.tracking.mlflow_tracking_uri,
                      experiment=params.tracking.mlflow_experiment, run_id=progress.run_id, live_dir=live_dir,
                      resume=progress.epoch > 0, system_metrics=True, start=False,
                      tags={k: sysinfo[k] for k in ("dvc_exp_name", "git_commit")} if dist.is_main else None)
    with tracker.ending(_stop_signal):
        tracker.start()
        if dist.is_main:
            tracker.log_params({**flatten(training_params(params)), **sysinfo, "world_size": dist.world_size,
                                "effective_batch_size": params.train.batch_size * dist.world_size,
                                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")})  # the runner's pinning
            tracker.log_text(frozen_requirements(), "requirements_frozen.txt")
        yield tracker


def set_frozen(run: Run, flag: bool, *, compile: bool, dist: D.DistInfo, device: torch.device) -> torch.nn.Module:
    """Freeze/unfreeze the encoder and return the module to step; DDP is rebuilt since it registers
    trainable params once.

    Every trainable parameter takes part in every forward (the builder drops the encoders' unused
    classifier heads), so DDP runs without ``find_unused_parameters`` and its reduction is the same
    work on every step.
    """
    for p in run.enc_params:
        p.requires_grad_(not flag)
    m = run.model
    if compile:
        m = torch.compile(m)
    if dist.distributed:
        m = DDP(m, device_ids=[device.index] if device.type == "cuda" else None)
    return m


def validation_point(params: Params, run: Run, data: TrainingData, progress: Progress, train_stats: TrainStats,
                     tracker: Tracker, dist: D.DistInfo, device: torch.device, amp, epoch: int) -> bool:
    """Validate the EMA (or the model), log, and keep the best state; True when it improved."""
    eval_model = run.ema.module if run.ema is not None else run.model
    metrics = {"epoch": epoch + 1, "step": progress.step, "lr": run.optimizer.param_groups[1]["lr"]}
    metrics["train_loss"], metrics["train_iou"] = train_stats.reduce()
    metrics.update(run_validation(eval_model, data.val_sets, loss_fn=run.loss_fn, device=device, amp=amp, params=params))
    progress.history.append(metrics)
    improved = run.stopper.step(metrics["val_realistic_pr_auc"])
    if improved:
        if dist.is_main:  # only rank 0 saves; the other ranks would copy a model to the CPU for nothing
            progress.best_state = {k: v.detach().cpu().clone() for k, v in unwrap_model(eval_model).state_dict().items()}
        progress.best_metrics = dict(metrics)
    if dist.is_main:
        tracker.log_metrics({tracking_name(k, params.evaluate.primary_iou): v for k, v in metrics.items() if k not in ("epoch", "step")},
                            step=progress.step)
        log.info("%s", validation_line(metrics, ratio=params.train.early_stopping_ratio, best=run.stopper.best, improved=improved,
                                       max_epochs=params.train.max_epochs))
        for w in overfitting_warnings(progress.history):
            log.warning("overfitting indicator: %s", w)
    return improved


def validation_line(metrics: dict, *, ratio: int, best: float, improved: bool, max_epochs: int) -> str:
    """The one log line of a validation: a handful of rounded numbers (the full record goes to dvclive and MLflow)."""
    def g(key: str) -> float:
        return metrics.get(key, math.nan)

    best_text = "new best" if improved else f"best {best:.4f}"
    return (f"epoch {metrics['epoch']}/{max_epochs} step {metrics['step']}: train loss {g('train_loss'):.4f}, "
            f"val loss {g('val_realistic_loss'):.4f}, val-realistic 1:{ratio} PR-AUC {g('val_realistic_pr_auc'):.4f} ({best_text}), "
            f"IoU {g('val_realistic_iou'):.3f}, object P/R {g(f'val_{ratio}_obj_precision'):.3f}/{g(f'val_{ratio}_obj_recall'):.3f}, "
            f"lr {g('lr'):.2e}")


def save_checkpoint(params: Params, run: Run, data: TrainingData, progress: Progress, tracker: Tracker, dist: D.DistInfo,
                    device: torch.device, *, epoch: int, fingerprint: str, is_best: bool) -> None:
    """The end-of-epoch checkpoint (rank 0 writes it; every rank's RNG states go in, for an exact resume)."""
    rng_states = D.all_gather_object(D.rng_state(device))
    if dist.is_main:
        state = {
            "epoch": epoch, "step": progress.step, "model": unwrap_model(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None, "sampler": data.sampler.state_dict(),
            "early_stopping": run.stopper.state_dict(), "history": progress.history, "best_state": progress.best_state,
            "best_metrics": progress.best_metrics, "rng": rng_states, "config": training_params(params),
            "config_fingerprint": fingerprint, "normalization_stats": data.stats, "mlflow_run_id": tracker.run_id,
        }
        run.ckpts.save(state, epoch=epoch, is_best=is_best)
    D.barrier()


def write_model(params: Params, run: Run, data: TrainingData, progress: Progress, tracker: Tracker, models_dir: Path) -> None:
    """``models/train``: the best weights with the config and statistics they were trained with."""
    best_state = progress.best_state
    if best_state is None:  # no validation ran (e.g. zero epochs left): deploy the current EMA
        best_state = {k: v.detach().cpu() for k, v in unwrap_model(run.ema.module if run.ema else run.model).state_dict().items()}
    package = {
        "format": "rts-model/1",
        "state_dict": best_state,
        "model_config": to_dict(params.model),
        "data_config": to_dict(params.data),
        "config": training_params(params),
        "normalization_stats": data.stats,
        "normalization_stats_sha256": data.stats_sha,
        "dataset_version": data.stats.get("dataset_version", "unknown"),
        "git_commit": system_info("")["git_commit"],
        "best_metrics": progress.best_metrics,
        "mlflow_run_id": tracker.run_id,
    }
    models_dir.mkdir(parents=True, exist_ok=True)
    save_atomic(package, models_dir / "model.pt")
    write_json_atomic(models_dir / "normalization_stats.json", dated(data.stats))


class _HookRecord:
    """What :class:`TrainHooks.record_dir` asks for, gathered during the run."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.unfrozen_at: dict[str, torch.Tensor] | None = None

    def unfrozen(self, model: torch.nn.Module) -> None:
        self.unfrozen_at = {n: p.detach().clone() for n, p in unwrap_model(model).named_parameters() if p.requires_grad}

    def write(self, folder: Path, run: Run, dist: D.DistInfo) -> None:
        # parameters only: BatchNorm running stats are rank-local between DDP's buffer broadcasts
        plain = unwrap_model(run.model)
        digest = hashlib.sha256(b"".join(p.detach().cpu().float().numpy().tobytes() for p in plain.parameters())).hexdigest()
        still = sorted(n for n, p in plain.named_parameters() if self.unfrozen_at is not None and n in self.unfrozen_at
                       and torch.equal(p.detach(), self.unfrozen_at[n]))
        write_json_atomic(Path(folder) / f"rank{dist.rank}.json", {
            "indices": self.seen, "weights_sha256": digest, "unchanged_since_unfreeze": still,
            "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in run.model.modules()),
            "channels_last": run.channels_last,
        })


def legacy_fingerprint(params: Params, checkpoint_stats: dict) -> str:
    """The fingerprint checkpoints recorded before training's fingerprint was narrowed to what it
    reads (it also held ``susceptibility``) and the statistics hash left the date out, so that a
    paused run of the same configuration resumes across that change instead of starting over."""
    d = {k: v for k, v in to_dict(params).items() if k not in ("evaluate", "calibrate", "tracking", "prepare")}
    d["train"] = {k: v for k, v in d["train"].items() if k not in _NON_TRAINING_KEYS}
    d["stats"] = hashlib.sha256(json.dumps(checkpoint_stats, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _same_configuration(state: dict, fingerprint: str, params: Params, stats_sha: str) -> bool:
    found = state.get("config_fingerprint")
    if found == fingerprint:
        return True
    stats = state.get("normalization_stats") or {}  # a checkpoint from before the change above
    return stats_hash(stats) == stats_sha and found == legacy_fingerprint(params, stats)


def _resume_decision(ckpts: CheckpointManager, fingerprint: str, dist: D.DistInfo, params: Params, stats_sha: str) -> Path | None:
    """The checkpoint to resume from, decided on rank 0 and broadcast, so that every rank takes the
    same branch (and the same collectives) even while rank 0 moves files.

    A checkpoint of another configuration is never deleted: rank 0 moves it aside into
    ``<checkpoints>/set_aside/<its fingerprint>/`` and says where, and the run starts fresh.
    """
    decision: tuple[str, str | None] = ("fresh", None)
    if dist.is_main:
        path = ckpts.latest()
        if path is not None:
            state = load(path)
            found = state.get("config_fingerprint")
            if _same_configuration(state, fingerprint, params, stats_sha):
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


def validation_accumulator(ev, *, objects: bool) -> EvalAccumulator:
    """The accumulator of one validation split in training: pixel counts, and with ``objects`` the
    objects at the operating threshold and the primary IoU only (``benchmarks/bench_validation.py``
    times this one)."""
    return EvalAccumulator(n_bins=ev.n_bins, operating_threshold=ev.threshold, object_thresholds=[ev.threshold],
                           iou_thresholds=[ev.primary_iou], min_object_px=ev.min_object_px,
                           merge_distance_px=ev.merge_distance_px, objects=objects)


def run_validation(model, val_sets, *, loss_fn, device, amp, params: Params) -> dict:
    """Loss, pixel IoU and PR-AUC on val-balanced and val-realistic (one forward pass), counts
    reduced across ranks."""
    ev = params.evaluate
    accs = {name: (validation_accumulator(ev, objects=name == "val_realistic"), member)
            for name, member in val_sets["members"].items()}
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
                rr = res[result_key(r)]
                out[f"val_{r}_pr_auc"] = rr["pr_auc"]
                out[f"val_{r}_iou_rts"] = rr["iou_rts"]
                out[f"val_{r}_obj_precision"] = rr[object_key(ev.primary_iou, "precision")]
                out[f"val_{r}_obj_recall"] = rr[object_key(ev.primary_iou, "recall")]
            out["val_realistic_iou"] = res[result_key(params.train.early_stopping_ratio)]["iou_rts"]
            out["val_realistic_pr_auc"] = res[result_key(params.train.early_stopping_ratio)]["pr_auc"]
    # the metric library writes undefined values (e.g. precision with no detection) as None
    return {k: math.nan if v is None else float(v) for k, v in out.items()}


def progressive_crop(phases: list[list[int]], epoch: int, tile_size: int) -> int | None:
    """Crop size of ``epoch`` under progressive resizing (small crops first, for speed): ``[[size, epochs], ...]`` phases,
    then whole tiles."""
    start = 0
    for size, n in phases:
        if epoch < start + n:
            return size if size < tile_size else None
        start += n
    return None


class _Stop:
    """The stop signal this process received (None: none yet)."""

    signum: int | None = None


def _exit_on_sigterm(signum, frame) -> None:
    _Stop.signum = signum
    raise SystemExit(128 + signum)


def _stop_signal() -> int | None:
    return _Stop.signum


def _raise_if_stopped() -> None:
    """Leave as the stop signal's SystemExit if one arrived and its own was lost: raised inside a
    callback from C (numba compiling a kernel, ctypes), it is printed as ignored and the code goes on."""
    if _Stop.signum is not None:
        raise SystemExit(128 + _Stop.signum)


TRAIN_SUMMARY = ("epoch", "step", "train_loss", "val_realistic_loss", "val_realistic_pr_auc")


def _flat_metrics(final: dict) -> dict:
    """``metrics/train.json``, a DVC metric: the run's length and cost, and the best validation's key
    figures (every validation metric is in dvclive and MLflow)."""
    out = {k: v for k, v in final.items() if k != "best"}
    out.update({f"best_{k}": v for k, v in final["best"].items() if k in TRAIN_SUMMARY})
    # JSON has no NaN (a precision with no prediction is undefined): write null.
    clean = {}
    for k, v in out.items():
        if isinstance(v, (np.floating, float)):
            v = None if math.isnan(v) else float(v)
        clean[k] = v
    return clean
