"""``params.yaml`` as small typed dataclasses that validate themselves.

Loading is strict: an unknown key is an error listing the valid keys, a ``Literal`` option outside
its choices is an error listing them, and each section's ``__post_init__`` rejects impossible
values, naming the key (``train.batch_size``) so that a bad ``dvc exp run -S`` fails before any
data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rts.errors import ConfigError
from rts.io import EXTRA_CHANNELS

__all__ = ["ConfigError"]  # re-exported: callers validate params and catch it from here


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _in_unit(value: float, key: str) -> None:
    _check(0.0 <= value <= 1.0, key, f"must be in [0, 1], got {value}")


LossName = Literal["focal", "tversky", "balanced_ce", "bce"]
ArchName = Literal["unetplusplus", "unet3plus", "unet", "deeplabv3plus", "segformer", "swin_unet", "vit_unet"]
TTAName = Literal["none", "minimal", "standard", "full"]


@dataclass
class DataConfig:
    root: str = "data"
    extra_channels: list[str] = field(default_factory=list)
    tile_size: int = 512
    boundary_ignore_width: int = 3
    soft_labels: bool = False
    soft_label_sigma: float = 2.0
    cache: bool = True

    def __post_init__(self) -> None:
        for name in self.extra_channels:
            _check(name in EXTRA_CHANNELS, "data.extra_channels", f"unknown channel {name!r}; valid channels: {list(EXTRA_CHANNELS)}")
        _check(len(set(self.extra_channels)) == len(self.extra_channels), "data.extra_channels", "duplicate channel")
        _check(self.tile_size >= 32 and self.tile_size % 32 == 0, "data.tile_size", f"must be a multiple of 32 >= 32, got {self.tile_size}")
        _check(self.boundary_ignore_width >= 0, "data.boundary_ignore_width", f"must be >= 0, got {self.boundary_ignore_width}")
        _check(self.soft_label_sigma > 0, "data.soft_label_sigma", f"must be > 0, got {self.soft_label_sigma}")

    @property
    def in_channels(self) -> int:
        return 3 + len(self.extra_channels)


@dataclass
class PrepareConfig:
    clip_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    val_balanced_ratio: int = 1
    realistic_ratios: list[int] = field(default_factory=lambda: [200, 500, 1000])
    percentile_sample_px: int = 2000

    def __post_init__(self) -> None:
        lo, hi = (self.clip_percentiles + [None, None])[:2] if len(self.clip_percentiles) == 2 else (None, None)
        _check(lo is not None and 0 <= lo < hi <= 100, "prepare.clip_percentiles", f"must be [low, high] with 0 <= low < high <= 100, got {self.clip_percentiles}")
        _check(self.val_balanced_ratio >= 1, "prepare.val_balanced_ratio", "must be >= 1")
        _check(all(r >= 1 for r in self.realistic_ratios) and self.realistic_ratios, "prepare.realistic_ratios", "must be a non-empty list of ratios >= 1")
        _check(self.percentile_sample_px >= 10, "prepare.percentile_sample_px", "must be >= 10")


DECODER_CHANNELS_ARCHS = ("unet", "unetplusplus", "swin_unet")


@dataclass
class ModelConfig:
    arch: ArchName = "unetplusplus"
    encoder: str = "efficientnet-b7"
    encoder_weights: str | None = "imagenet"
    fusion: Literal["early", "late"] = "early"
    deep_supervision: bool = False
    deep_supervision_weight: float = 0.4
    decoder_channels: list[int] | None = None  # U-Net / UNet++ decoder widths, deepest first; None = smp's (256, 128, 64, 32, 16)

    def __post_init__(self) -> None:
        _check(self.deep_supervision_weight >= 0, "model.deep_supervision_weight", "must be >= 0")
        if self.decoder_channels is not None:
            _check(self.arch in DECODER_CHANNELS_ARCHS, "model.decoder_channels",
                   f"only for arch {' / '.join(DECODER_CHANNELS_ARCHS)} (smp U-Net decoders), not {self.arch!r}; use null")
            _check(len(self.decoder_channels) == 5 and all(c > 0 for c in self.decoder_channels), "model.decoder_channels",
                   f"must be 5 positive widths (one per decoder stage, deepest first), got {self.decoder_channels}")
        if self.deep_supervision:
            _check(self.arch == "unet3plus", "model.deep_supervision", f"only supported by arch 'unet3plus', not {self.arch!r}")


@dataclass
class FocalConfig:
    alpha: float = 0.25
    gamma: float = 2.0

    def __post_init__(self) -> None:
        _in_unit(self.alpha, "focal.alpha")
        _check(self.gamma >= 0, "focal.gamma", f"must be >= 0, got {self.gamma}")


@dataclass
class TverskyConfig:
    alpha: float = 0.3
    beta: float = 0.7
    smooth: float = 1.0

    def __post_init__(self) -> None:
        _in_unit(self.alpha, "tversky.alpha")
        _in_unit(self.beta, "tversky.beta")
        _check(self.smooth >= 0, "tversky.smooth", "must be >= 0")


@dataclass
class BalancedCEConfig:
    weighting: Literal["linear", "sqrt", "log"] = "sqrt"


@dataclass
class AugmentConfig:
    enabled: bool = True
    rotate90_p: float = 0.5
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    affine_p: float = 0.5
    shift_limit: float = 0.1
    scale_limit: float = 0.2
    rotate_limit: float = 45
    elastic_p: float = 0.3
    elastic_alpha: float = 120.0
    elastic_sigma: float = 6.0
    color_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        for name in ("rotate90_p", "hflip_p", "vflip_p", "affine_p", "elastic_p", "color_p"):
            _in_unit(getattr(self, name), f"augment.{name}")
        for name in ("shift_limit", "scale_limit", "brightness", "contrast", "saturation"):
            _check(0 <= getattr(self, name) < 1, f"augment.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        _check(self.elastic_sigma > 0, "augment.elastic_sigma", "must be > 0")


@dataclass
class SamplerConfig:
    balanced: bool = True
    pos_fraction_per_batch: float = 0.5
    train_ratio: float = 10
    curriculum: bool = False
    curriculum_start_ratio: float = 1
    curriculum_end_ratio: float = 50
    curriculum_epochs: int = 50

    def __post_init__(self) -> None:
        _check(0 < self.pos_fraction_per_batch < 1, "sampler.pos_fraction_per_batch", f"must be in (0, 1), got {self.pos_fraction_per_batch}")
        _check(self.train_ratio > 0, "sampler.train_ratio", "must be > 0")
        _check(self.curriculum_start_ratio > 0 and self.curriculum_end_ratio > 0, "sampler.curriculum_start_ratio", "ratios must be > 0")
        _check(self.curriculum_epochs >= 1, "sampler.curriculum_epochs", "must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-2
    grad_clip_norm: float = 1.0
    min_lr: float = 1e-6
    warmup_epochs: int = 5
    warmup_start_lr: float = 1e-6
    freeze_backbone_epochs: int = 10
    unfreeze_lr_multiplier: float = 0.1

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip_norm >= 0, "optim.grad_clip_norm", "must be >= 0 (0 = off)")
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, optim.lr], got {self.min_lr}")
        _check(0 < self.warmup_start_lr <= self.lr, "optim.warmup_start_lr", f"must be in (0, optim.lr], got {self.warmup_start_lr}")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _check(self.freeze_backbone_epochs >= 0, "optim.freeze_backbone_epochs", "must be >= 0")
        _check(0 < self.unfreeze_lr_multiplier <= 1, "optim.unfreeze_lr_multiplier", "must be in (0, 1]")


@dataclass
class TrainConfig:
    nproc: int = 1
    batch_size: int = 32
    max_epochs: int = 300
    steps_per_epoch: int = 0
    mixed_precision: bool = True
    ema: bool = True
    ema_decay: float = 0.999
    early_stopping_metric: Literal["val_realistic_pr_auc"] = "val_realistic_pr_auc"
    early_stopping_ratio: int = 500
    early_stopping_patience: int = 20
    early_stopping_min_delta: float = 0.001
    val_every: int = 1
    val_unit: Literal["epoch", "step"] = "epoch"
    save_every_n_epochs: int = 10
    keep_last_n_checkpoints: int = 3
    resume: Literal["auto", "never"] = "auto"
    deterministic: bool = True
    num_workers: int = 8
    pin_memory: bool = True
    prefetch_factor: int = 2
    persistent_workers: bool = True
    sync_batchnorm: bool = False
    channels_last: bool = True
    compile: bool = False
    progressive_resizing: list[list[int]] = field(default_factory=list)
    multires_scales: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.nproc >= 1, "train.nproc", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.max_epochs >= 1, "train.max_epochs", "must be >= 1")
        _check(self.steps_per_epoch >= 0, "train.steps_per_epoch", "must be >= 0 (0 = derived)")
        _check(0 < self.ema_decay < 1, "train.ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        _check(self.early_stopping_patience >= 1, "train.early_stopping_patience", "must be >= 1")
        _check(self.early_stopping_min_delta >= 0, "train.early_stopping_min_delta", "must be >= 0")
        _check(self.val_every >= 1, "train.val_every", "must be >= 1")
        _check(self.save_every_n_epochs >= 1, "train.save_every_n_epochs", "must be >= 1")
        _check(self.keep_last_n_checkpoints >= 1, "train.keep_last_n_checkpoints", "must be >= 1")
        _check(self.num_workers >= 0, "train.num_workers", "must be >= 0")
        _check(self.prefetch_factor >= 1, "train.prefetch_factor", "must be >= 1")
        for phase in self.progressive_resizing:
            _check(len(phase) == 2 and phase[0] % 32 == 0 and phase[0] >= 32 and phase[1] >= 1, "train.progressive_resizing", f"each phase is [tile size (multiple of 32), epochs >= 1], got {phase}")
        for s in self.multires_scales:
            _check(s in (1.0, 0.5, 0.25), "train.multires_scales", f"scales must be among [1.0, 0.5, 0.25], got {s}")


@dataclass
class EvaluateConfig:
    tta: TTAName = "none"
    scales: list[float] = field(default_factory=lambda: [1.0])
    ratios: list[int] = field(default_factory=lambda: [200, 500, 1000])
    iou_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    primary_iou: float = 0.3
    threshold: float = 0.5
    n_bins: int = 10000
    n_object_thresholds: int = 100
    min_object_px: int = 200
    merge_distance_px: int = 0
    recall_targets: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.8, 0.9])
    batch_size: int = 8
    gallery_cases: int = 8

    def __post_init__(self) -> None:
        _check(bool(self.scales) and all(s in (1.0, 0.5, 0.25) for s in self.scales), "evaluate.scales", f"must be a non-empty subset of [1.0, 0.5, 0.25], got {self.scales}")
        _check(bool(self.ratios) and all(r >= 1 for r in self.ratios), "evaluate.ratios", "must be a non-empty list of ratios >= 1")
        for t in self.iou_thresholds:
            _check(0 < t <= 1, "evaluate.iou_thresholds", f"must be in (0, 1], got {t}")
        _check(self.primary_iou in self.iou_thresholds, "evaluate.primary_iou", f"must be one of evaluate.iou_thresholds {self.iou_thresholds}")
        _in_unit(self.threshold, "evaluate.threshold")
        _check(self.n_bins >= 10, "evaluate.n_bins", "must be >= 10")
        _check(self.n_object_thresholds >= 2, "evaluate.n_object_thresholds", "must be >= 2")
        _check(self.min_object_px >= 1, "evaluate.min_object_px", "must be >= 1")
        _check(self.merge_distance_px >= 0, "evaluate.merge_distance_px", "must be >= 0")
        for r in self.recall_targets:
            _check(0 < r <= 1, "evaluate.recall_targets", f"must be in (0, 1], got {r}")
        _check(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1")
        _check(1 <= self.gallery_cases <= 64, "evaluate.gallery_cases", f"must be in 1..64 (cases per error-gallery mosaic), got {self.gallery_cases}")


@dataclass
class CalibrateConfig:
    target_precision: float = 0.8
    ratios: list[int] = field(default_factory=lambda: [200, 500, 1000])
    iou: float = 0.3
    temperature_bins: int = 2000
    temperature_ratio: int = 500

    def __post_init__(self) -> None:
        _check(0 < self.target_precision <= 1, "calibrate.target_precision", f"must be in (0, 1], got {self.target_precision}")
        _check(0 < self.iou <= 1, "calibrate.iou", "must be in (0, 1]")
        _check(self.temperature_bins >= 100, "calibrate.temperature_bins", "must be >= 100")
        _check(self.temperature_ratio >= 1, "calibrate.temperature_ratio", "must be >= 1")


@dataclass
class SusceptibilityConfig:
    """Two-stage fallback: confine detections to RTS-susceptible terrain."""

    path: str | None = None
    min_likelihood: float = 0.5

    def __post_init__(self) -> None:
        _in_unit(self.min_likelihood, "susceptibility.min_likelihood")


@dataclass
class TrackingConfig:
    mlflow: bool = True
    mlflow_tracking_uri: str = "sqlite:///mlruns.db"
    mlflow_experiment: str = "rts-segmentation-v2"
    registered_model_name: str | None = None  # register calibrate's logged model under this name; None: not registered

    def __post_init__(self) -> None:
        name = self.registered_model_name
        _check(name is None or (isinstance(name, str) and name.strip() != "" and not any(c in name for c in "/:")),
               "tracking.registered_model_name", f"must be null (not registered) or a model name without '/' or ':', "
               f"got {name!r} (e.g. rts-segmentation)")
        scheme = self.mlflow_tracking_uri.split(":", 1)[0].lower() if ":" in self.mlflow_tracking_uri else "file"
        _check(scheme in MLFLOW_SCHEMES or (len(scheme) == 1 and scheme.isalpha()),  # a Windows drive letter is a path
               "tracking.mlflow_tracking_uri", f"unknown scheme {scheme!r} in {self.mlflow_tracking_uri!r}; use one of "
               f"{', '.join(MLFLOW_SCHEMES)} (e.g. sqlite:///mlruns.db or http://127.0.0.1:5000)")


MLFLOW_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


@dataclass
class Params:
    seed: int = 42
    loss: LossName = "focal"
    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    focal: FocalConfig = field(default_factory=FocalConfig)
    tversky: TverskyConfig = field(default_factory=TverskyConfig)
    balanced_ce: BalancedCEConfig = field(default_factory=BalancedCEConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    susceptibility: SusceptibilityConfig = field(default_factory=SusceptibilityConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2^32), got {self.seed}")
        if self.sampler.balanced:
            n_pos = self.train.batch_size * self.sampler.pos_fraction_per_batch
            _check(
                abs(n_pos - round(n_pos)) < 1e-9 and 1 <= round(n_pos) < self.train.batch_size,
                "train.batch_size",
                f"{self.train.batch_size} x sampler.pos_fraction_per_batch {self.sampler.pos_fraction_per_batch} "
                f"= {n_pos} positives per batch; must be a whole number between 1 and batch_size - 1",
            )
        _check(self.calibrate.iou in self.evaluate.iou_thresholds, "calibrate.iou", f"must be one of evaluate.iou_thresholds {self.evaluate.iou_thresholds}")
        _check(self.train.early_stopping_ratio in self.evaluate.ratios, "train.early_stopping_ratio", f"must be one of evaluate.ratios {self.evaluate.ratios}")


# ---------------------------------------------------------------- strict conversion from dicts


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: invalid value {value!r}; valid choices: {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = args
        return [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-4" (no dot) as a string; accept numeric strings explicitly.
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys are errors listing the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        named = [f"{where}{k} (did you mean {where}{close[0]}?)" if (close := difflib.get_close_matches(k, names, n=1)) else where + k
                 for k in unknown]
        raise ConfigError(f"unknown key(s) {', '.join(named)}; valid keys{' of ' + prefix if prefix else ''}: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate ``params.yaml`` (optionally with dotted-key overrides, for tests)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        params = from_dict(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    layer = params.susceptibility.path
    # checked here, before any data is read, not at evaluate after training; a relative path is
    # relative to the folder the stage runs in (the repository root), as the stages open it
    if layer is not None and not Path(layer).exists():
        raise ConfigError(f"{path}: susceptibility.path: {layer!r} does not exist (from {Path.cwd()}); "
                          "set it to null to turn the filter off, or point it at the likelihood GeoTIFF")
    return params


def to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``, for MLflow params and reports."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
