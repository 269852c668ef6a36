"""The deployable model package and the predictor that loads it.

A package folder (``models/rts-model/`` from the calibrate stage, or ``models/train/`` straight from
training) holds ``model.pt`` (EMA weights, resolved model and data config, dataset version, git
commit) and ``normalization_stats.json``; a calibrated package also holds
``threshold_calibration.json`` (temperature, thresholds per ratio and level) and ``model_card.md``. ``load_predictor`` rebuilds
the network from the saved config alone, refuses statistics whose hash differs from the one
recorded at training time, and applies exactly the training preprocessing (``Normalizer``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rts.config import DataConfig, ModelConfig, from_dict
from rts.data.normalization import Normalizer, load_stats
from rts.data.windows import window_size
from rts.errors import DataError
from rts.inference.multiscale import predict_multiscale
from rts.models.builder import build_model
from rts.models.weights import load_model_state
from rts.precision import amp_settings, gpu_path

MODEL_FILE = "model.pt"
STATS_FILE = "normalization_stats.json"
CALIBRATION_FILE = "threshold_calibration.json"


def load_package(path: str | Path) -> dict:
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.exists():
        raise DataError(f"{file}: model package not found (expected {MODEL_FILE} from the train or calibrate stage)")
    package = torch.load(file, map_location="cpu", weights_only=False)
    if package.get("format") != "rts-model/1":
        raise DataError(f"{file}: not an rts model package (format {package.get('format')!r})")
    return package


def build_from_package(package: dict) -> torch.nn.Module:
    model_cfg = from_dict(ModelConfig, {**package["model_config"], "encoder_weights": None}, prefix="model")
    data_cfg = from_dict(DataConfig, package["data_config"], prefix="data")
    model = build_model(model_cfg, in_channels=data_cfg.in_channels, n_extra=len(data_cfg.extra_channels),
                        extra_channels=list(data_cfg.extra_channels))
    load_model_state(model, package["state_dict"])
    return model.eval()


@dataclass
class Predictor:
    """A ready model: raw tile values in, calibrated logits/probabilities out."""

    model: torch.nn.Module
    normalizer: Normalizer
    tile_size: int
    extra_channels: list[str]
    device: torch.device
    temperature: float = 1.0
    thresholds: dict = field(default_factory=dict)
    tta: str = "none"
    scales: tuple[float, ...] = (1.0,)
    amp_dtype: torch.dtype | None = None
    meta: dict = field(default_factory=dict)
    channels_last: bool = False

    def __post_init__(self) -> None:
        shape = (1, -1, 1, 1)
        n = self.normalizer
        self._low, self._high, self._mean, self._std = (
            torch.as_tensor(a, device=self.device).view(shape) for a in (n.low, n.high, n.mean, n.std)
        )

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Clip to the saved bounds and z-score: the same arithmetic as ``Normalizer``, on device."""
        x = (torch.clamp(raw.to(self.device, torch.float32), self._low, self._high) - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def window_sizes(self) -> dict[float, int]:
        return {s: window_size(self.tile_size, s) for s in self.scales}

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.model(x).float()

    @torch.no_grad()
    def logits(self, raw_windows: dict[float, torch.Tensor], *, calibrated: bool = True) -> torch.Tensor:
        """Fused logits (B, 1, T, T) from raw (B, C, S, S) windows per scale (see ``window_sizes``)."""
        windows = {s: self.normalise(w) for s, w in raw_windows.items()}
        fused = predict_multiscale(self._forward, windows, tile_size=self.tile_size, tta=self.tta)
        return fused / self.temperature if calibrated else fused

    def probabilities(self, raw_windows: dict[float, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.logits(raw_windows))

    def threshold(self, ratio: int = 500, level: str = "object") -> float:
        """The calibrated operating threshold for a prevalence ratio and level (object | pixel)."""
        try:
            entry = self.thresholds[str(ratio)][level]
        except KeyError:
            raise KeyError(f"no calibrated threshold for ratio 1:{ratio}, level {level!r}; "
                           f"available: {sorted(self.thresholds)}") from None
        if entry.get("threshold") is None:
            raise ValueError(f"ratio 1:{ratio} {level}: the target precision was not reached on val-realistic "
                             f"(best {entry.get('best_precision')}); pass an explicit threshold")
        return float(entry["threshold"])


def to_inference_device(model: torch.nn.Module, device: torch.device, *, benchmark: bool = False) -> torch.nn.Module:
    """``model`` on ``device`` as inference runs it: channels_last on the GPU path, cuDNN's
    algorithm timing on when ``benchmark`` (see :func:`load_predictor`)."""
    model = model.to(device)
    if gpu_path(device):
        model = model.to(memory_format=torch.channels_last)
    if benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def load_predictor(path: str | Path, *, device: str | torch.device = "cpu", tta: str | None = None,
                   scales: tuple[float, ...] | None = None, amp: bool = False, benchmark: bool = False) -> Predictor:
    """Load a model package folder into a ready ``Predictor``.

    On the GPU path the model runs channels_last (the layout tensor cores want) and ``amp`` is
    bf16 (fp16 without bf16 support); the logit head runs in float32 either way
    (:func:`rts.models.builder.fp32_heads`), so calibrated thresholds apply unchanged.
    ``benchmark`` lets cuDNN time its convolution algorithms (``rts predict``; evaluate keeps it off
    so that its metrics do not depend on the timing).

    Raises ValueError when ``normalization_stats.json`` does not match the hash recorded at
    training time (the model would see differently scaled inputs).
    """
    path = Path(path)
    package = load_package(path)
    stats_file = path / STATS_FILE if path.is_dir() else path.parent / STATS_FILE
    stats = load_stats(stats_file, expected_hash=package["normalization_stats_sha256"])
    calibration = json.loads((path / CALIBRATION_FILE).read_text()) if (path / CALIBRATION_FILE).exists() else {}
    device = torch.device(device)
    model = to_inference_device(build_from_package(package), device, benchmark=benchmark)
    data_cfg = package["data_config"]
    amp_dtype = amp_settings(device, True)[1] if amp else None
    ev = package.get("config", {}).get("evaluate", {})
    return Predictor(
        model=model,
        normalizer=Normalizer(stats, data_cfg["extra_channels"]),
        tile_size=int(data_cfg["tile_size"]),
        extra_channels=list(data_cfg["extra_channels"]),
        device=device,
        temperature=float(calibration.get("temperature", 1.0)),
        thresholds=calibration.get("thresholds", {}),
        tta=tta or calibration.get("tta", ev.get("tta", "none")),
        scales=tuple(scales or calibration.get("scales", ev.get("scales", [1.0]))),
        amp_dtype=amp_dtype,
        meta={k: package.get(k) for k in ("dataset_version", "git_commit", "normalization_stats_sha256", "mlflow_run_id")},
        channels_last=gpu_path(device),
    )

