"""The deployable model package as an MLflow model: a pyfunc that wraps the package predictor.

The logged model holds the package folder (weights, normalisation statistics, calibration, model
card) as its one artifact and the ``rts`` source as its code, so ``mlflow.pyfunc.load_model`` needs
neither this repository nor the DVC cache. It is logged as code (``mlflow_pyfunc.py`` builds
:class:`PackageModel`), not as a pickled object. Its signature:

- input: a float32 batch ``(B, C, W, W)`` of raw tile values, as the dataset stores them (RGB 0..255,
  then the extra channels); ``W`` is the largest window of the package's scales (the tile size at
  scale 1.0), ``C`` is 3 plus the extra channels. Cast uint8 scenes with ``.astype("float32")``;
- output: float32 ``(B, T, T)`` calibrated RTS probabilities of the central ``T x T`` tile.

``predict`` runs exactly :meth:`Predictor.probabilities` on the centre crops per scale, as evaluate
and calibrate do, so the logged model gives the probabilities the thresholds were calibrated on.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

import rts
from rts.data.windows import crop_centre, window_size
from rts.inference.predictor import CALIBRATION_FILE, load_package, load_predictor

PACKAGE_ARTIFACT = "package"
# The distributions that loading the package imports (rts.inference.predictor and the models),
# pinned to the versions installed here: listed, not inferred, so logging never runs pip or asks
# PyPI (MLflow adds its own pin).
REQUIREMENTS = ("torch", "torchvision", "numpy", "segmentation-models-pytorch", "timm", "safetensors", "rasterio", "pyyaml")


class PackageModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of an ``rts-model/1`` package (see the module docstring for the signature).

    It runs on the first CUDA device when there is one, else on the CPU.
    """

    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = load_predictor(context.artifacts[PACKAGE_ARTIFACT], device=device)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        raw = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32)).to(self.predictor.device)
        windows = {s: crop_centre(raw, size) for s, size in self.predictor.window_sizes().items()}
        return self.predictor.probabilities(windows)[:, 0].cpu().numpy()


def package_signature(package: dict, scales: list[float]) -> ModelSignature:
    """Input ``(-1, C, W, W)`` float32 raw values, output ``(-1, T, T)`` float32 probabilities."""
    data = package["data_config"]
    tile = int(data["tile_size"])
    channels = 3 + len(data.get("extra_channels") or [])
    window = max(window_size(tile, float(s)) for s in scales)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, window, window))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, tile, tile))]))


def pinned_requirements() -> list[str]:
    """``name==version`` of :data:`REQUIREMENTS` as installed (those not installed are left out)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def log_package_model(package_dir: Path, *, name: str = "model", registered_model_name: str | None = None):
    """Log ``package_dir`` as an MLflow model on the active run; returns MLflow's ``ModelInfo``.

    Registered under ``registered_model_name`` (a new version each call) unless it is None. The
    model's params record what it was trained and calibrated with, so the Models page compares them.
    """
    package_dir = Path(package_dir)
    package = load_package(package_dir)
    calibration_file = package_dir / CALIBRATION_FILE
    calibration = json.loads(calibration_file.read_text()) if calibration_file.exists() else {}
    ev = package.get("config", {}).get("evaluate", {})
    scales = list(calibration.get("scales") or ev.get("scales") or [1.0])
    params = {
        "temperature": calibration.get("temperature", 1.0),
        "tta": calibration.get("tta") or ev.get("tta") or "none",
        "scales": scales,
        "tile_size": package["data_config"]["tile_size"],
        "extra_channels": list(package["data_config"].get("extra_channels") or []),
        "arch": package["model_config"].get("arch"),
        "encoder": package["model_config"].get("encoder"),
        "dataset_version": package.get("dataset_version"),
        "git_commit": package.get("git_commit"),
    }
    with warnings.catch_warnings():
        # an input example is a full tile batch as JSON (megabytes); the signature says what it takes
        warnings.filterwarnings("ignore", message=r".*An input example was not provided", category=UserWarning)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),  # models from code: nothing is pickled
            artifacts={PACKAGE_ARTIFACT: str(package_dir)},
            code_paths=[str(Path(rts.__file__).parent)],
            pip_requirements=pinned_requirements(),
            signature=package_signature(package, scales),
            registered_model_name=registered_model_name,
            params={k: str(v) for k, v in params.items()},
            metadata={"format": package.get("format", "rts-model/1")},
        )
