"""params.yaml is refused before any data is read when a value cannot work: values that were
accepted and then failed an epoch later, or deep in numpy, MLflow or collate."""

from __future__ import annotations

import pytest

from datasets import make_dataset
from rts.config import ConfigError, DataConfig, PrepareConfig, load_params
from rts.errors import DataError
from workdir import REPO


@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", float("inf"), "optim.lr: must be a finite number"),
    ("focal.gamma", float("inf"), "focal.gamma: must be a finite number"),
    ("optim.lr", "nan", "optim.lr: must be a finite number"),
    ("sampler.train_ratio", float("inf"), "sampler.train_ratio"),
    ("seed", -1, "seed: must be in [0, 2^32)"),
    ("tracking.mlflow_tracking_uri", "bogus://x", "tracking.mlflow_tracking_uri: unknown scheme 'bogus'"),
])
def test_values_that_failed_late_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_params(REPO / "params.yaml", overrides={key: value})
    assert message in str(e.value)


def test_tracking_uris_people_use_are_accepted():
    for uri in ("sqlite:///mlruns.db", "file:///tmp/mlruns", "mlruns", "/abs/mlruns", "http://127.0.0.1:5000", "https://mlflow.example.org"):
        assert load_params(REPO / "params.yaml", overrides={"tracking.mlflow_tracking_uri": uri}).tracking.mlflow_tracking_uri == uri


def test_an_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"train\.batchsize \(did you mean train\.batch_size\?\)"):
        load_params(REPO / "params.yaml", overrides={"train.batchsize": 8})


def test_prepare_refuses_a_tile_of_another_size_than_data_tile_size(tmp_path):
    """A 96 px tile among 64 px ones passed every check and crashed training mid-epoch in collate."""
    from rts.data.prepare import prepare

    root = make_dataset(tmp_path / "ds", size=32, regions={"alpha": (2, 2), "bravo": (2, 2), "charlie": (2, 2)})
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=r"labels/.*32x32 px, but data.tile_size is 64"):
        prepare(DataConfig(root=str(root), tile_size=64), PrepareConfig(), seed=0, out_dir=out, metrics_path=tmp_path / "m.json",
                cache_dir=None)
    assert not out.exists(), "nothing is written"
