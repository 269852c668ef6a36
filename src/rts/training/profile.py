"""``rts profile``: peak memory and step time of one training step; the largest batch that fits.

A *step* is what the training loop does per batch: forward under the loop's autocast
setting (:func:`rts.training.loop.amp_settings`), the configured loss, backward (with the
GradScaler where fp16 needs one), gradient clipping, an AdamW step and the EMA update. Data
loading is not part of it: inputs are random z-scored tensors already on the device, so the
numbers are the model's compute ceiling. The encoder is trainable (the post-unfreeze phase,
which needs more memory than the frozen first epochs). Encoder weights are never downloaded:
``encoder_weights`` is forced to ``None``, which changes no shape.

Memory:

- CUDA: what the process holds on the device at its peak, not only what tensors use:
  ``torch.cuda.max_memory_reserved`` over the timed steps (after ``reset_peak_memory_stats``;
  weights, gradients, AdamW and EMA state are still allocated then, so they count; reserved
  includes the caching allocator's fragmentation), plus the CUDA context and library workspaces
  (device memory in use before the model was built, less what the allocator held then), plus the
  DDP gradient buckets when ``train.nproc > 1`` (DDP copies the gradients into flat buckets: one
  more copy of the trainable parameters' gradients). Budget: ``safety x total device memory``. An
  out-of-memory error marks the batch as not fitting, whether torch raises it as
  ``OutOfMemoryError`` or cuDNN / cuBLAS report a failed allocation, also when ``torch.compile``
  wraps it (:func:`is_out_of_memory`); the cache is emptied before the next try.
- CPU: the training state (weights, buffers, gradients, AdamW moments, EMA copy; counted from the
  tensors) plus the peak increase of the process's resident set size (RSS, psutil) over the timed
  steps, sampled by a background thread and at the end of every forward and backward. Freed heap
  is handed back to the OS (glibc ``malloc_trim``) before the timed steps, so the increase is the
  activation memory of this batch, not pages kept from the warm-up or from a larger batch tried
  before. ``tracemalloc`` cannot see torch's allocations and ``ru_maxrss`` never goes down, so
  neither can compare batch sizes within one process; a plain RSS difference against the start
  would also charge torch's one-off library initialisation to the first profile. Budget:
  ``--memory-budget-gb`` or ``safety x available RAM``.

``--find-max-batch`` doubles the batch from 1 until a batch does not fit (or ``--max-batch`` is
reached), then bisects between the last fitting and the first failing batch. The chosen
``batch_size`` is the largest fitting batch that balanced sampling accepts (``batch_size x
sampler.pos_fraction_per_batch`` a whole number of positives, 1..batch_size-1).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from rts.config import ConfigError, ModelConfig, Params

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class StepSetup:
    """Everything that decides the cost of one training step.

    Attributes:
        model: The ``model`` params section (``encoder_weights`` is ignored: always ``None``).
        extra_channels: Selected EXTRA channels (input has ``3 + len`` channels).
        tile_size: Input height and width in pixels (multiple of 32).
        loss: ``params.loss`` name.
        mixed_precision: ``train.mixed_precision`` (bf16 / fp16 + scaler on CUDA, fp32 on CPU).
        channels_last: ``train.channels_last`` (applied on CUDA only, as in training).
        compile: ``train.compile`` (``torch.compile`` the model).
        compile_backend: ``torch.compile``'s backend: ``inductor`` (what training uses); the GPU
            check's CPU smoke takes ``aot_eager``, which traces and runs the same graphs without
            generating C++ (what inductor compiles on a CPU is not what it compiles on a GPU).
        ema: ``train.ema`` (an EMA copy of the weights, updated every step).
        grad_clip_norm: ``optim.grad_clip_norm`` (0 = off).
        lr, weight_decay: AdamW settings (they do not change the cost; kept for fidelity).
    """

    model: ModelConfig
    extra_channels: tuple[str, ...] = ()
    tile_size: int = 512
    loss: str = "focal"
    mixed_precision: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    ema: bool = True
    grad_clip_norm: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-2
    nproc: int = 1

    @classmethod
    def from_params(cls, params: Params) -> StepSetup:
        """The step that ``params.yaml`` trains."""
        return cls(
            model=params.model, extra_channels=tuple(params.data.extra_channels), tile_size=params.data.tile_size,
            loss=params.loss, mixed_precision=params.train.mixed_precision, channels_last=params.train.channels_last,
            compile=params.train.compile, ema=params.train.ema, grad_clip_norm=params.optim.grad_clip_norm,
            lr=params.optim.lr, weight_decay=params.optim.weight_decay, nproc=params.train.nproc,
        )

    @property
    def in_channels(self) -> int:
        return 3 + len(self.extra_channels)


@dataclass
class Trial:
    """One measured batch size."""

    batch_size: int
    fits: bool
    oom: bool = False
    step_time_s: float | None = None
    images_per_s: float | None = None
    peak_memory_bytes: int | None = None
    state_bytes: int | None = None
    rss_increase_bytes: int | None = None
    allocated_bytes: int | None = None
    context_bytes: int | None = None
    ddp_bucket_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_memory_gib"] = None if self.peak_memory_bytes is None else round(self.peak_memory_bytes / GIB, 4)
        return d


# ------------------------------------------------------------------------------ device and memory

_OOM_MESSAGES = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_SUPPORTED",
                 "CUSOLVER_STATUS_ALLOC_FAILED", "CUFFT_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps, as ``torch.compile`` does) is a failed device
    allocation. cuDNN reports an allocation it could not make as ``CUDNN_STATUS_ALLOC_FAILED`` or,
    for its workspace, ``CUDNN_STATUS_NOT_SUPPORTED``; cuBLAS as ``CUBLAS_STATUS_ALLOC_FAILED``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.OutOfMemoryError):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e) for m in _OOM_MESSAGES):
            return True
        e = e.__cause__ or e.__context__ or getattr(e, "inner_exception", None)
    return False


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available (torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of a GPU; *available* RAM for the CPU (what a new allocation can still get)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(psutil.virtual_memory().available)


def _release_heap() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


@contextlib.contextmanager
def _mmap_large_allocations(threshold: int = 64 * 1024) -> Iterator[None]:
    """Serve allocations above ``threshold`` with mmap while active (glibc only).

    glibc otherwise keeps freed tensors' pages in its heap for reuse (its mmap threshold adapts
    upwards to 32 MiB), so the RSS of a step would depend on what ran before it. With a fixed low
    threshold a freed tensor's pages go back to the OS at once and RSS follows live memory. The
    price is slower CPU steps (a page fault per new allocation). Afterwards the threshold is set
    to 32 MiB, where glibc's adaptive threshold ends up anyway.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)


class RSSPeak:
    """Peak resident set size of this process while active: background sampling plus explicit
    :meth:`sample` calls at the known high points of a step (end of forward, end of backward)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> RSSPeak:
        self.peak = 0
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.sample()


# ------------------------------------------------------------------------------ the step


def amp_dtype_name(device: torch.device, mixed_precision: bool) -> str:
    """``bfloat16`` / ``float16`` / ``float32``: what training's autocast will use on ``device``."""
    from rts.precision import amp_settings

    enabled, dtype, _ = amp_settings(device, mixed_precision)
    return str(dtype).removeprefix("torch.") if enabled else "float32"


class StepProfiler:
    """Builds the model, loss, AdamW and EMA once on ``device`` and times training steps per batch.

    Args:
        setup: The step to measure.
        device: Where to run.
        steps: Timed steps per batch size.
        warmup: Untimed steps before them (first-step allocations, cuDNN / compile warm-up).
        seed: Seed for the weights and the random inputs.
    """

    def __init__(self, setup: StepSetup, device: torch.device, *, steps: int = 5, warmup: int = 2, seed: int = 0) -> None:
        from rts.training.losses import build_loss
        from rts.models import build_model
        from rts.models.ema import ModelEMA
        from rts.precision import amp_settings, gpu_path
        from rts.training.step import TrainStep

        if steps < 1 or warmup < 0:
            raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
        self.setup, self.device, self.steps, self.warmup, self.seed = setup, device, steps, warmup, seed
        self.amp = amp_settings(device, setup.mixed_precision)
        torch.manual_seed(seed)
        model_cfg = dataclasses.replace(setup.model, encoder_weights=None)
        model = build_model(model_cfg, in_channels=setup.in_channels, n_extra=len(setup.extra_channels)).to(device)
        if device.type == "cuda":  # the CUDA context and library handles, before any tensor of ours
            torch.cuda.init()
            free, total = torch.cuda.mem_get_info(device)
            self.context_bytes = max(0, total - free - torch.cuda.memory_reserved(device))
        else:
            self.context_bytes = None
        self.channels_last = setup.channels_last and gpu_path(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.model = model
        self.step_model = torch.compile(model, backend=setup.compile_backend) if setup.compile else model
        # balanced_ce's positive weight comes from the training split's pixel counts; any value costs the same.
        self.loss_fn = build_loss(setup.loss, focal=_default("focal"), tversky=_default("tversky"),
                                  balanced_ce=_default("balanced_ce"), class_pixel_counts=(1000, 1))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=setup.lr, weight_decay=setup.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp[2])
        self.ema = ModelEMA(model, 0.999) if setup.ema else None
        self._rss: RSSPeak | None = None
        self.allocated_bytes: int | None = None
        self.train_step = TrainStep(model=model, optimizer=self.optimizer, scaler=self.scaler, loss_fn=self.loss_fn, amp=self.amp,
                                    device=device, grad_clip_norm=setup.grad_clip_norm, aux_weight=setup.model.deep_supervision_weight,
                                    ema=self.ema, channels_last=self.channels_last, step_model=self.step_model)
        # DDP keeps the gradients a second time, in its flat buckets
        self.ddp_bucket_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) if setup.nproc > 1 else 0

    def state_bytes(self) -> int:
        """Bytes of the training state that lives across steps: weights, buffers, gradients,
        AdamW moments and the EMA copy (counted from the tensors, so exact on any device)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [v for st in self.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        if self.ema is not None:
            tensors += [*self.ema.module.parameters(), *self.ema.module.buffers()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def _sample(self) -> None:
        if self._rss is not None:
            self._rss.sample()

    def _step(self, image: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        """The training loop's own step (:class:`rts.training.step.TrainStep`)."""
        self.train_step(image, target, valid, on_forward=self._sample)  # sampled with all activations alive
        self._sample()  # after backward and the optimiser step

    def _cpu_activation_bytes(self, image: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> int:
        """Peak RSS increase of one extra, untimed step (run inside :func:`_mmap_large_allocations`)."""
        _release_heap()
        before = psutil.Process().memory_info().rss
        with RSSPeak() as rss:
            self._rss = rss
            try:
                self._step(image, target, valid)
            finally:
                self._rss = None
        return max(0, rss.peak - before)

    def _inputs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + batch_size)
        n = self.setup.tile_size
        image = torch.randn(batch_size, self.setup.in_channels, n, n, generator=g).to(self.device)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        # ~10% positive pixels, like a positive tile; the cost does not depend on the values.
        target = (torch.rand(batch_size, 1, n, n, generator=g) < 0.1).float().to(self.device)
        valid = torch.ones_like(target)
        return image, target, valid

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run(self, batch_size: int) -> tuple[float, int, int, int | None]:
        """Warm-up and timed steps of one batch size: (seconds per step, state bytes, peak bytes,
        CPU RSS increase). Inputs and activations die with this frame."""
        cuda = self.device.type == "cuda"
        image, target, valid = self._inputs(batch_size)
        for _ in range(self.warmup):
            self._step(image, target, valid)
        self._sync()
        state = self.state_bytes()
        if cuda:
            # After the warm-up, so cuDNN autotuning workspaces do not count; weights, gradients,
            # optimizer and EMA state are allocated now and still count.
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self._step(image, target, valid)
        self._sync()
        step_s = (time.perf_counter() - t0) / self.steps
        if cuda:
            self.allocated_bytes = int(torch.cuda.max_memory_allocated(self.device))
            peak = int(torch.cuda.max_memory_reserved(self.device)) + self.context_bytes + self.ddp_bucket_bytes
            return step_s, state, peak, None
        rss_increase = self._cpu_activation_bytes(image, target, valid)
        return step_s, state, state + rss_increase, rss_increase

    def measure(self, batch_size: int, budget_bytes: int | None = None) -> Trial:
        """Time ``steps`` steps of ``batch_size`` after ``warmup`` steps; peak memory over the timed
        steps. ``fits`` is False on an out-of-memory error or a peak above ``budget_bytes``."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        _release_heap()
        oom = False
        try:
            step, state, peak, rss_increase = self._run(batch_size)
        except Exception as e:  # noqa: BLE001 - compile wraps errors in its own types: judged by is_out_of_memory
            if not is_out_of_memory(e):
                raise
            oom = True  # clean up outside the handler: the traceback keeps the step's tensors alive
        self.optimizer.zero_grad(set_to_none=True)
        if oom:
            # An OOM between scale() and update() leaves the scaler mid-step; start a fresh one.
            self.scaler = self.train_step.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp[2])
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if oom:
            log.info("batch %d: out of memory", batch_size)
            return Trial(batch_size, fits=False, oom=True)
        fits = budget_bytes is None or peak <= budget_bytes
        cuda = self.device.type == "cuda"
        trial = Trial(batch_size, fits=fits, step_time_s=step, images_per_s=batch_size / step, peak_memory_bytes=peak,
                      state_bytes=state, rss_increase_bytes=rss_increase,
                      allocated_bytes=self.allocated_bytes if cuda else None, context_bytes=self.context_bytes,
                      ddp_bucket_bytes=self.ddp_bucket_bytes if cuda else None)
        log.info("batch %d: %.4f s/step, %.1f images/s, peak %.3f GiB%s", batch_size, step, trial.images_per_s,
                 peak / GIB, "" if fits else " (over budget)")
        return trial


def _default(section: str) -> Any:
    return getattr(Params(), section)


# ------------------------------------------------------------------------------ batch search


def valid_batch_size(batch_size: int, pos_fraction: float | None) -> int | None:
    """Largest batch <= ``batch_size`` that balanced sampling accepts (``None`` if none does).

    With ``pos_fraction`` None (unbalanced sampling) every batch >= 1 is accepted.
    """
    for b in range(batch_size, 0, -1):
        if pos_fraction is None:
            return b
        n_pos = b * pos_fraction
        if abs(n_pos - round(n_pos)) < 1e-9 and 1 <= round(n_pos) < b:
            return b
    return None


def find_max_batch(measure: Callable[[int], Trial], *, max_batch: int, start: int = 1) -> tuple[int | None, list[Trial]]:
    """Largest fitting batch in ``[start, max_batch]``: double until a batch fails, then bisect.

    Assumes fitting is monotone (if ``b`` fits, every smaller batch fits).

    Returns:
        (largest fitting batch or None when ``start`` already fails, trials in the order run).
    """
    if not 1 <= start <= max_batch:
        raise ConfigError(f"--max-batch must be >= the start batch {start}, got {max_batch}")
    trials: list[Trial] = []

    def fits(b: int) -> bool:
        trials.append(measure(b))
        return trials[-1].fits

    lo, hi = 0, None  # lo: largest known fitting batch; hi: smallest known failing batch
    b = start
    while True:
        if fits(b):
            lo = b
            if b == max_batch:
                return lo, trials
            b = min(2 * b, max_batch)
        else:
            hi = b
            break
    if lo == 0:
        return None, trials
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, trials


def profile(
    setup: StepSetup,
    *,
    device: torch.device,
    batch_sizes: list[int],
    find_max: bool = False,
    max_batch: int = 1024,
    safety: float = 0.85,
    memory_budget_bytes: int | None = None,
    pos_fraction: float | None = 0.5,
    steps: int = 5,
    warmup: int = 2,
) -> dict[str, Any]:
    """Measure ``batch_sizes`` (or search the largest batch) and return the profile report.

    Args:
        setup: The training step to measure.
        device: Device to run on.
        batch_sizes: Batches to measure (ascending order is measured first); with ``find_max``
            the search starts at the smallest of them.
        find_max: Search the largest fitting batch up to ``max_batch``.
        max_batch: Upper limit of the search.
        safety: Fraction of device memory (GPU total, CPU available) a run may use.
        memory_budget_bytes: Explicit budget instead of ``safety x device memory``.
        pos_fraction: ``sampler.pos_fraction_per_batch`` when sampling is balanced, else None.
        steps, warmup: Timed and untimed steps per batch.

    Returns:
        The JSON-ready report (see ``docs/compute.md``).
    """
    if not 0 < safety <= 1:
        raise ConfigError(f"--safety must be in (0, 1], got {safety}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"--batch-size values must be >= 1, got {batch_sizes}")
    total = device_memory_bytes(device)
    budget = memory_budget_bytes if memory_budget_bytes is not None else int(safety * total)
    # On CPU the whole profile runs with mmap-served allocations, so the model's own heap use
    # cannot leave retained pages that blur the RSS of later batches.
    with _mmap_large_allocations() if device.type == "cpu" else contextlib.nullcontext():
        profiler = StepProfiler(setup, device, steps=steps, warmup=warmup)
        if find_max:
            _, trials = find_max_batch(lambda b: profiler.measure(b, budget), max_batch=max_batch, start=min(batch_sizes))
        else:
            trials = [profiler.measure(b, budget) for b in sorted(set(batch_sizes))]
        del profiler
    fitting = [t.batch_size for t in trials if t.fits]
    max_fit = max(fitting) if fitting else None
    chosen = valid_batch_size(max_fit, pos_fraction) if max_fit is not None else None
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "device_memory_bytes": total,
        "device_memory_kind": "total GPU memory" if device.type == "cuda" else "available RAM at start",
        "torch_version": torch.__version__,
        "memory_measure": ("torch.cuda.max_memory_reserved + CUDA context + DDP gradient buckets (nproc > 1)" if device.type == "cuda"
                           else "training state bytes + peak RSS increase over the timed steps"),
        "memory_budget_bytes": budget,
        "safety": safety,
        "config": {
            "arch": setup.model.arch,
            "encoder": setup.model.encoder,
            "encoder_weights": None,
            "fusion": setup.model.fusion,
            "deep_supervision": setup.model.deep_supervision,
            "tile_size": setup.tile_size,
            "in_channels": setup.in_channels,
            "extra_channels": list(setup.extra_channels),
            "loss": setup.loss,
            "mixed_precision": setup.mixed_precision,
            "amp_dtype": amp_dtype_name(device, setup.mixed_precision),
            "channels_last": setup.channels_last and device.type == "cuda",
            "nproc": setup.nproc,
            "compile": setup.compile,
            "compile_backend": setup.compile_backend if setup.compile else None,
            "ema": setup.ema,
            "optimizer": "AdamW",
            "steps": steps,
            "warmup_steps": warmup,
        },
        "find_max_batch": find_max,
        "max_batch": max_batch if find_max else None,
        "trials": [t.to_dict() for t in trials],
        "max_fitting_batch": max_fit,
        "capped": bool(find_max and max_fit == max_batch),
        "pos_fraction_per_batch": pos_fraction,
        "batch_size": chosen,
    }
    chosen_trial = next((t for t in trials if t.batch_size == chosen), None)
    report["images_per_s"] = chosen_trial.images_per_s if chosen_trial else None
    report["params_snippet"] = f"train:\n  batch_size: {chosen}\n" if chosen is not None else None
    report["suggested_params"] = {"train.batch_size": chosen} if chosen is not None else {}
    return report
