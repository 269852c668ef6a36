"""Shared set-up of the sharded-job tests: tiny scenes with their single-process run, and a real
single-node SLURM cluster (slurmctld + slurmd + munged from Debian's slurm-wlm and munge).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from packages import ORIGIN, write_package, write_scene

SIZES = [(96, 96), (160, 96), (96, 128), (128, 160)]  # passes of 64 px at stride 32: 4, 8, 6, 12
JOB_KW = dict(threshold=0.5, num_workers=0, batch_size=2)


def write_scenes(folder: Path) -> list[str]:
    """Scenes of different sizes side by side on one EPSG:3413 grid (they mosaic into one raster)."""
    rng = np.random.default_rng(0)
    paths, x = [], ORIGIN[0]
    for i, (h, w) in enumerate(SIZES):
        rgb = rng.integers(0, 120, (3, h, w), dtype=np.uint8)
        rgb[0, 20:50, 30:70] = 255
        paths.append(str(write_scene(folder / f"scene{i}.tif", rgb, origin=(x, ORIGIN[1]))))
        x += w * 3.0
    return paths


@pytest.fixture(scope="session")
def job_inputs(tmp_path_factory):
    """(root, package, scenes): a tiny U-Net package, the scenes, and under root ``single/`` their
    single-process run and ``single_merged/`` the merge of it."""
    from rts.inference.merge import merge_chunks
    from rts.inference.predict import run_predict

    root = tmp_path_factory.mktemp("job")
    pkg = write_package(root / "pkg")
    scenes = write_scenes(root / "scenes")
    run_predict(pkg, root / "single", scenes=scenes, **JOB_KW)
    merge_chunks(root / "single_merged", [root / "single"], blocksize=64)
    return root, pkg, scenes


# ------------------------------------------------------------------------------ SLURM

SLURM_CONF = """\
ClusterName=rtstest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing_slurm() -> str | None:
    need = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
    for tool in ("sbatch", "squeue", "scancel", "sinfo"):
        need[tool] = shutil.which(tool) or ""
    missing = [k for k, v in need.items() if not v or not os.path.exists(v)]
    return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run installs them)" if missing else None


class Slurm:
    """A running single-node cluster: ``run(args)`` runs a SLURM client command against it."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def states(self, job_id: str) -> dict[int, str]:
        """Array task index -> state, from squeue (pending/running) then scontrol (finished)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields and fields["ArrayTaskId"].isdigit():
                states[int(fields["ArrayTaskId"])] = fields.get("JobState", "?")
            elif "ArrayTaskId" in fields:  # still-pending tasks, e.g. 2-3
                for part in fields["ArrayTaskId"].split("%")[0].split(","):
                    a, _, b = part.partition("-")
                    for i in range(int(a), int(b or a) + 1):
                        states[i] = fields.get("JobState", "PENDING")
        return states

    def log_tail(self) -> str:
        return "\n".join((self.root / n).read_text()[-1500:] for n in ("slurmctld.log", "slurmd.log") if (self.root / n).exists())


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A single-node SLURM cluster on 127.0.0.1 (munge, slurmctld, slurmd, all as root, config and
    state in a temp dir), stopped at the end of the session. Skips only where the packages are
    absent and cannot be installed."""
    reason = _missing_slurm()
    if reason and os.geteuid() == 0 and shutil.which("apt-get") and os.environ.get("RTS_NO_APT") != "1":
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
                       shell=True, capture_output=True, timeout=600)
        reason = _missing_slurm()
    if reason and os.environ.get("RTS_REQUIRE_SLURM"):
        pytest.fail(f"no SLURM: {reason}, and RTS_REQUIRE_SLURM is set (.ci/run installs slurm-wlm and munge)")
    if reason:
        pytest.skip(f"no SLURM: {reason}")
    root = Path(str(tmp_path_factory.mktemp("slurm")))
    for d in ("munge", "state", "spool"):
        (root / d).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (root / "slurm.conf").write_text(SLURM_CONF.format(root=root, ctld_port=_free_port(), d_port=_free_port()))
    procs: list[subprocess.Popen] = []
    subprocess.run(["/usr/sbin/munged", f"--socket={root}/munge/munge.socket", f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
                    f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/seed", "--force"], check=True, timeout=30)
    cluster = Slurm(root)
    try:
        with open(root / "daemons.out", "w") as out:
            procs.append(subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-f", str(root / "slurm.conf")], stdout=out, stderr=out, env=cluster.env))
            procs.append(subprocess.Popen(["/usr/sbin/slurmd", "-D", "-f", str(root / "slurm.conf"), "-N", "localhost"], stdout=out,
                                          stderr=out, env=cluster.env))
        t0 = time.monotonic()
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout:
            if time.monotonic() - t0 > 60:
                raise AssertionError(f"the SLURM node did not become idle in 60 s:\n{cluster.log_tail()}")
            time.sleep(0.5)
        yield cluster
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["/usr/sbin/munged", f"--socket={root}/munge/munge.socket", "--stop"], capture_output=True, timeout=30)
