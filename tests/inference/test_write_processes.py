"""Output writes in worker processes (``--write-processes``) give the bytes of the in-line writer."""

from __future__ import annotations

from pathlib import Path

from rts.inference.predict import run_predict


def test_writes_in_worker_processes_equal_the_inline_writer(job_inputs, tmp_path):
    root, pkg, scenes = job_inputs
    kw = dict(threshold=0.5, num_workers=0, batch_size=2)
    run_predict(pkg, tmp_path / "inline", scenes=scenes, finalize_workers=0, **kw)
    saved = run_predict(pkg, tmp_path / "procs", scenes=scenes, finalize_workers=2, write_processes=True, **kw)
    assert saved["options"]["write_processes"] and all(r["complete"] for r in saved["regions"])
    assert [r["name"] for r in saved["regions"]] == [Path(s).stem for s in scenes]
    for s in scenes:
        stem = Path(s).stem
        for suffix in (".prob.tif", ".mask.tif", ".gpkg"):
            a = (tmp_path / "inline" / f"{stem}{suffix}").read_bytes()
            assert a == (tmp_path / "procs" / f"{stem}{suffix}").read_bytes() == (root / "single" / f"{stem}{suffix}").read_bytes()
        assert not (tmp_path / "procs" / ".work" / stem / "prob.f32").exists()  # the worker dropped the accumulators
    # finished regions are skipped on a re-run, and the region locks were released
    again = run_predict(pkg, tmp_path / "procs", scenes=scenes, finalize_workers=2, write_processes=True, **kw)
    assert all(r["tiles_run"] == 0 for r in again["regions"])
