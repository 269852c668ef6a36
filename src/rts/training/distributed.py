"""DDP plumbing as plain functions (one process per GPU via torchrun; gloo on CPU).

Every call into ``torch.distributed`` in this project goes through this module (a test checks the
sources), and every tensor handed to a collective is on the device the process group serves:

- on CUDA the group is NCCL only, so reductions take tensors on the rank's own GPU
  (``torch.cuda.set_device(LOCAL_RANK)`` is called before the group is joined, which is also the
  device the object collectives stage their bytes on);
- on CPU the group is gloo and the tensors are on the CPU.

:func:`all_reduce_sum` refuses any other tensor with a message naming its device, rather than
letting NCCL fail deep inside a validation. Object collectives (:func:`broadcast_object`,
:func:`all_gather_object`) pickle Python objects and are for small, rare messages: a resume
decision, RNG states at a checkpoint, the variable-length parts of the metric accumulators.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


JOIN_ENV = "RTS_PROCESS_GROUP"

# The device type the joined process group serves ("cuda" for NCCL, "cpu" for gloo); None when
# no group was joined here (a world of one, or a group joined by a test harness).
_COLLECTIVE_DEVICE: torch.device | None = None


def init_distributed(device: str = "auto") -> DistInfo:
    """Read RANK/LOCAL_RANK/WORLD_SIZE set by torchrun and join the process group.

    NCCL when CUDA is available, gloo otherwise. A plain ``python -m stages.train`` is a world of 1.
    """
    global _COLLECTIVE_DEVICE
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = None
    # A group of one, joined on request, runs every collective exactly as a multi-GPU job does
    # (benchmarks/gpu_check.py checks NCCL that way on a single-GPU machine).
    if world_size > 1 or os.environ.get(JOIN_ENV) == "1":
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
        _COLLECTIVE_DEVICE = dev
    return DistInfo(rank, local_rank, world_size, dev, backend)


def joined() -> bool:
    """A process group is joined (of any size: a group of one runs the same collectives)."""
    return dist.is_available() and dist.is_initialized()


def collective_device() -> torch.device:
    """The device whose tensors the current process group reduces (CPU when none was joined)."""
    if _COLLECTIVE_DEVICE is not None:
        return _COLLECTIVE_DEVICE
    if joined() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_collective_tensor(t: torch.Tensor) -> None:
    """Raise when ``t`` is on a device the process group's backend does not serve."""
    want = collective_device()
    if t.device.type != want.type or (want.type == "cuda" and t.device.index not in (None, want.index)):
        backend = dist.get_backend() if joined() else ("nccl" if want.type == "cuda" else "gloo")
        raise RuntimeError(
            f"collective on a tensor on {t.device}, but the {backend} process group serves {want} only; "
            f"move it with .to({str(want)!r}) before reducing (rts.training.distributed)"
        )


def cleanup() -> None:
    global _COLLECTIVE_DEVICE
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _COLLECTIVE_DEVICE = None


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place (``t`` must be on :func:`collective_device`)."""
    if joined():
        check_collective_tensor(t)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def sum_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sum numpy count arrays over the ranks: one reduction per array, staged on the collective
    device (int64 and float64 are exact under both gloo and NCCL)."""
    if not joined():
        return arrays
    dev = collective_device()
    out = {}
    for name, a in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(a)).to(dev)
        all_reduce_sum(t)
        out[name] = t.cpu().numpy().copy()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a world of one)."""
    if not joined():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not joined():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int, rank: int = 0, deterministic: bool = True) -> None:
    """Seed python/numpy/torch with a per-rank offset; deterministic kernels when asked, so a seed reproduces a run.

    ``deterministic`` is enforced: an operation with no deterministic implementation on the device
    raises instead of warning (``torch.use_deterministic_algorithms(True)``). On CUDA that rules out
    the backward of bilinear interpolation; :func:`rts.training.loop.check_deterministic` refuses
    those architectures up front with the fix.
    """
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    torch.cuda.manual_seed_all(s)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # Required by cuBLAS for deterministic matmuls; must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def worker_init_fn(worker_id: int) -> None:
    """Seed each loader worker from torch's per-worker seed (itself derived from the global seed).

    Also pins OpenCV (albumentations' warps) to one thread: DataLoader already does so for torch,
    and a worker that spawns a thread per core competes with the training process for the same
    cores (on the 2-core demo machine: 30% step overhead instead of ~10%).
    """
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
    import cv2

    cv2.setNumThreads(1)


def rng_state(device: torch.device | None = None) -> dict:
    """This process's RNG states; for CUDA only the local device's generator (``device``)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; a CUDA state goes to the local ``device`` only."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # checkpoints before per-rank states: one state per visible GPU
            cuda = cuda[device.index or 0]
        torch.cuda.set_rng_state(cuda, device)
