"""A real prediction folder for the review tests: `rts predict`'s library entry point (run log,
COGs, GeoPackage) over the scene of ``review_data`` with an EXTRA raster."""

from __future__ import annotations

import pytest
import rasterio
from rasterio.transform import from_origin

from packages import ORIGIN, write_package, write_scene
from review_data import H, W, ramp_predictor, scene_arrays


@pytest.fixture(scope="session")
def prediction(tmp_path_factory):
    """(prediction folder, scene path, extra path) of one `run_predict` run at threshold 0.5."""
    from rts.inference import predict as P

    root = tmp_path_factory.mktemp("review_pred")
    rgb, extra = scene_arrays()
    scene = write_scene(root / "scenes" / "banks.tif", rgb)
    extra_path = root / "scenes" / "banks_extra.tif"
    with rasterio.open(extra_path, "w", driver="GTiff", width=W, height=H, count=4, dtype="float32", crs="EPSG:3413",
                       transform=from_origin(*ORIGIN, 3.0, 3.0)) as dst:
        dst.write(extra)
    package = write_package(root / "package")
    with pytest.MonkeyPatch.context() as mp:  # the package's random U-Net replaced by the known model
        mp.setattr(P, "load_predictor", lambda *a, **k: ramp_predictor())
        P.run_predict(package, root / "pred", scenes=[str(scene)], extras=[str(extra_path)], threshold=0.5,
                      num_workers=0, finalize_workers=0, min_object_px=20)
    return root / "pred", scene, extra_path
