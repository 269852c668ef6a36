"""Reliability battery (issue 16): a non-UTF-8 metadata.csv and a full disk in prepare each stop with
one line naming the file, the problem and the fix, and prepare leaves no half-written outputs or
tile-cache entries."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import rts.io
from datasets import make_dataset
from workdir import make_workdir, run

from rts.config import DataConfig, PrepareConfig
from rts.data.prepare import prepare
from rts.errors import OutputError


@pytest.fixture(scope="module")
def latin1_wd(tmp_path_factory) -> Path:
    """A workdir from `rts synth` whose metadata.csv has one latin-1 byte (é) in a region name."""
    wd = make_workdir(tmp_path_factory.mktemp("latin1") / "wd")
    meta = wd / "data" / "metadata.csv"
    lines = meta.read_bytes().split(b"\n")
    region = lines[3].split(b",")[4]
    lines[3] = lines[3].replace(region, region + "\xe9".encode("latin-1"), 1)
    meta.write_bytes(b"\n".join(lines))
    return wd


def _meta_line(text: str) -> str:
    hits = [line for line in text.splitlines() if "metadata.csv" in line]
    assert len(hits) == 1, text[-3000:]
    return hits[0]


def test_a_non_utf8_metadata_csv_is_named_with_its_line_and_the_fix_by_rts_check(latin1_wd):
    proc = run([sys.executable, "-m", "rts", "check", "data"], latin1_wd, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _meta_line(proc.stdout + proc.stderr)
    assert "not UTF-8" in line and "line 4" in line and "save it as UTF-8" in line, line
    assert "line 0" not in line


def test_a_non_utf8_metadata_csv_stops_prepare_with_the_same_line(latin1_wd):
    proc = run([sys.executable, "-m", "stages.prepare"], latin1_wd, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = _meta_line(proc.stderr)
    assert "not UTF-8" in line and "line 4" in line and "save it as UTF-8" in line, line
    assert "Traceback" not in proc.stderr
    assert not (latin1_wd / "prepared").exists()


def test_read_metadata_names_a_non_utf8_file(tmp_path):
    from rts.data.splits import read_metadata
    from rts.errors import DataError

    (tmp_path / "metadata.csv").write_bytes(b"tile_id,RegionName\na_1,caf\xe9\n")
    with pytest.raises(DataError, match=r"metadata.csv: not UTF-8 at line 2, byte 26.*save it as UTF-8"):
        read_metadata(tmp_path)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "data", size=32)


def _full_disk_at(monkeypatch, name: str) -> None:
    """ENOSPC at the write of the file called ``name``, as a full disk gives it (no file named)."""
    real = rts.io.write_text_atomic

    def write(path, text):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(rts.io, "write_text_atomic", write)


def _prepare(root: Path, out: Path) -> dict:
    return prepare(DataConfig(root=str(root), tile_size=32, cache=False), PrepareConfig(), seed=0, out_dir=out,
                   metrics_path=out.parent / "metrics" / "prepare.json", cache_dir=None)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_in_prepare_names_the_file_and_leaves_no_partial_outputs(small_dataset, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    _full_disk_at(monkeypatch, "val_realistic.json")
    with pytest.raises(OutputError) as caught:
        _prepare(small_dataset, out)
    message = str(caught.value)
    assert caught.value.exit_code == 5
    assert "val_realistic.json" in message and "No space left" in message and "free space" in message, message
    assert "\n" not in message
    assert not out.exists(), _files(out) if out.exists() else None  # not even an empty prepared/splits/
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder or temporary file left


def test_a_full_disk_in_a_rerun_of_prepare_keeps_the_previous_outputs(small_dataset, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    _prepare(small_dataset, out)
    before = _files(out)
    _full_disk_at(monkeypatch, "summary.json")
    with pytest.raises(OutputError, match="summary.json"):
        _prepare(small_dataset, out)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "prepared"]


def _full_disk_at_cache_write(monkeypatch, tile_id: str, kind: str) -> list[Path]:
    """ENOSPC at the write of tile ``tile_id``'s ``kind`` cache file (``rgbl`` or ``extra``), after a
    few bytes reached the disk, as a full disk gives it (no file named). Returns the paths hit."""
    real, hit = np.save, []

    def save(file, arr, *args, **kwargs):
        name = Path(file).name  # the temporary file beside the entry: .<tile_id>.<key>.<kind>.npy.<random>.npy
        if name.startswith(f".{tile_id}.") and f".{kind}.npy" in name:
            hit.append(Path(file))
            Path(file).write_bytes(b"\x93NUMPY\x01\x00")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    return hit


@pytest.mark.parametrize("kind", ["rgbl", "extra"])
def test_a_full_disk_while_prepare_fills_the_tile_cache_names_the_cache_file(small_dataset, tmp_path, monkeypatch, capsys, kind):
    """data.cache: true. A full disk at a cache write gave "OSError: 16384 requested and 9184
    written" with no file named. Now: one OutputError line naming the cache file, the free space
    and the fix (exit 5), no half-written entry (the other file of the entry is removed too), and
    prepare writes nothing."""
    from rts.errors import exit_on_error

    tile_id = sorted(p.stem for p in (small_dataset / "labels").glob("*.tif"))[3]
    hit = _full_disk_at_cache_write(monkeypatch, tile_id, kind)
    cache, out = tmp_path / "cache", tmp_path / "prepared"
    data = DataConfig(root=str(small_dataset), tile_size=32, cache=True)

    def stage() -> int:
        prepare(data, PrepareConfig(), seed=0, out_dir=out, metrics_path=tmp_path / "metrics" / "prepare.json", cache_dir=cache)
        return 0

    assert exit_on_error(stage) == 5
    assert hit, "the injected write was never reached"
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if " INFO rts.progress: " not in line]  # a progress line may come first
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in err, err
    err = errors[0]
    assert f"{cache}{os.sep}{tile_id}." in err and f".{kind}.npy: cannot be written (No space left on device)" in err, err
    assert "MiB free" in err and "data.cache: false" in err, err
    assert not out.exists() and not (tmp_path / "metrics").exists()
    left = sorted(p.name for p in cache.iterdir())
    assert not [n for n in left if n.startswith(".")], left  # no temporary file
    assert not [n for n in left if n.startswith(f"{tile_id}.")], left  # no half of the failed entry
    stems = {n.rsplit(".", 2)[0] for n in left}
    assert sorted(left) == sorted(f"{s}.{k}.npy" for s in stems for k in ("rgbl", "extra")), left  # whole entries only
    for name in left:
        np.load(cache / name)

    monkeypatch.undo()  # space freed: the run completes and fills the missing entry
    assert exit_on_error(stage) == 0
    assert any(n.startswith(f"{tile_id}.") for n in os.listdir(cache))


def test_a_tile_of_another_size_among_the_others_is_refused_by_prepare_naming_it(small_dataset, tmp_path):
    """Issue 16: a 96 px tile among 64 px ones passed every check, then crashed training mid-epoch in
    collate with no file named. Here a 48 px tile (its three files consistent, so the per-tile
    checks pass) among 32 px ones: prepare refuses it against data.tile_size, naming it, and
    writes nothing."""
    import rasterio

    from rts.errors import DataError

    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    tile_id = sorted(p.stem for p in (root / "labels").glob("*.tif"))[2]
    for folder in ("PLANET-RGB", "EXTRA", "labels"):
        path = root / folder / f"{tile_id}.tif"
        with rasterio.open(path) as src:
            pixels, profile = src.read(), src.profile
        profile.update(width=48, height=48)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.pad(pixels, ((0, 0), (0, 16), (0, 16)), mode="edge" if folder != "labels" else "constant"))
    out = tmp_path / "prepared"
    # the checks prepare runs first name it against the other tiles (rts check says the same);
    # tiles all of another size than data.tile_size are prepare's own check (tests/test_config.py)
    with pytest.raises(DataError, match=rf"PLANET-RGB/{tile_id}.tif: tile size 48x48 px differs from the dataset's most common 32x32 px"):
        _prepare(root, out)
    assert not out.exists()


def test_a_full_disk_at_a_cache_write_in_a_loader_worker_is_still_one_line(small_dataset, tmp_path, monkeypatch, capsys):
    """Training with train.num_workers > 0 fills the cache in DataLoader workers when prepare did not.
    PyTorch re-raises a worker's error as the same class with the worker's traceback as its message;
    the stage's line is the original message with the worker named, not a traceback."""
    import torch.utils.data

    from rts.data.store import TileStore
    from rts.errors import OutputError, exit_on_error

    tile_id = sorted(p.stem for p in (small_dataset / "labels").glob("*.tif"))[0]
    hit = _full_disk_at_cache_write(monkeypatch, tile_id, "rgbl")  # forked workers inherit the patch
    cache = tmp_path / "cache"
    store = TileStore(small_dataset, cache_dir=cache)

    class Tiles(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int):
            return torch.from_numpy(np.asarray(store.load(tile_id).rgb)).float().mean()

    def stage() -> int:
        loader = torch.utils.data.DataLoader(Tiles(), batch_size=1, num_workers=1, multiprocessing_context="fork")
        for _ in loader:
            pass
        return 0

    with pytest.raises(OutputError, match="Caught OutputError in DataLoader worker process 0"):
        stage()  # what PyTorch hands the training process
    assert exit_on_error(stage) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {cache}{os.sep}{tile_id}.") and ".rgbl.npy: cannot be written (No space left on device)" in err, err
    assert err.rstrip().endswith("(in DataLoader worker process 0)"), err
    assert not hit  # the write happened in the worker, not here
