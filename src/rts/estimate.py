"""``rts estimate``: measured throughput -> projected GPU hours and cost.

Inputs are per-GPU throughputs (training images/s from ``rts profile``, inference forwards/s), the
run settings in ``params.yaml`` and a price per GPU-hour. Outputs: one training run (at
``train.max_epochs`` and at an *expected* epoch count, since early stopping usually ends a run
sooner), the planned experiment matrix, the final seeds, pan-Arctic inference, and the total
against the project budget and its allocations. Every assumption is an argument with a documented
default (``docs/compute.md``).

Training arithmetic (same rule as :mod:`rts.data.sampler`): with balanced batches, a batch holds
``round(batch x pos_fraction)`` positives and the rest negatives; an epoch draws
``ratio x n_pos`` negatives, so ``steps = ceil(ratio x n_pos / (negatives per batch x world))``
(or ``train.steps_per_epoch`` when set) and ``images = steps x batch x world``. A curriculum sums
the per-epoch ratios. Validation forwards ``val_tiles`` tiles once per validation.

Inference arithmetic (``docs/inference.md``): ``locations = ceil(area / tile_area)`` with
``tile_area = (tile_size x 3 m)^2``; passes every ``stride`` px give ``(tile_size / stride)^2``
passes per location (4 at stride 256); each pass costs one forward per scale (a 0.5 or 0.25 scale
window is resized to the tile size first) and per TTA view.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rts.config import ConfigError, Params, SamplerConfig
from rts.data.sampler import curriculum_ratio, epoch_steps, negatives_per_batch
from rts.errors import DataError
from rts.io import PIXEL_SIZE_M

log = logging.getLogger(__name__)

# The budget prices 50-100 node-hours at $5,000-10,000: $100 per 8xH100 node-hour = $12.50 per GPU-hour.
DEFAULT_PRICE_PER_GPU_HOUR = 12.5
# Northern-hemisphere permafrost region, all zones (IPA map, Brown et al. 1997, tabulated by
# Zhang et al. 2008): 22.79 million km^2 -> 9.66 M tile locations of 2.36 km^2, inside the
# 8-10 M locations of the inference plan.
DEFAULT_AREA_KM2 = 22.79e6
# The project budget: $70,000 in all, $25,000 for training experiments, $35,000 for pan-Arctic
# inference; the rest ($10,000) is the buffer for reruns.
DEFAULT_BUDGET = 70_000.0
DEFAULT_TRAINING_ALLOCATION = 25_000.0
DEFAULT_INFERENCE_ALLOCATION = 35_000.0
# Real dataset: ~2-3k positive, ~20-25k negative tiles, of which the train split holds 80%.
DEFAULT_N_POS = 2000
DEFAULT_N_NEG = 18000
# val-balanced 250 + 250 and val-realistic 250 positives + 2,250 negatives (10% of each class).
DEFAULT_VAL_TILES = 3000
# Early stopping (patience 20 on val-realistic PR-AUC) usually ends a run well before max_epochs.
DEFAULT_EXPECTED_EPOCH_FRACTION = 0.5
# DDP throughput of N GPUs = N x single-GPU x efficiency (gradient all-reduce, stragglers).
DEFAULT_SCALING_EFFICIENCY = 0.9
# A forward pass costs about a third of forward + backward + optimizer step.
DEFAULT_INFER_TRAIN_SPEED_RATIO = 3.0

# The planned experiment matrix: runs per phase (the ratio phase is listed separately because each
# of its runs has its own epoch size).
DEFAULT_RUNS: dict[str, int] = {"baseline": 1, "losses": 2, "loss_tuning": 0, "architectures": 3, "auxiliary": 3, "fusion": 2}
DEFAULT_RATIO_RUNS: tuple[str, ...] = ("20", "50", "curriculum")
DEFAULT_SEEDS = 3
# Rows of the cost table -> the phases each row sums.
TABLE_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Baseline + ablations", ("baseline", "losses", "loss_tuning", "ratios")),
    ("Architecture experiments", ("architectures",)),
    ("Auxiliary data experiments", ("auxiliary", "fusion")),
    ("Final model ({seeds} seeds)", ("final_seeds",)),
)
TTA_VIEWS = {"none": 1, "minimal": 2, "standard": 4, "full": 8}  # rts.inference.tta.TTA_SETTINGS sizes


class EstimateError(DataError):
    """An input of the estimate is missing or inconsistent."""


@dataclass(frozen=True)
class Throughput:
    """Measured speeds, per GPU.

    Attributes:
        train_images_per_s: Training images per second on one GPU (``rts profile``).
        infer_tiles_per_s: Model forwards (one tile, one scale, one view) per second on one GPU.
        scaling_efficiency: Multi-GPU training throughput relative to ``world x`` one GPU.
    """

    train_images_per_s: float
    infer_tiles_per_s: float
    scaling_efficiency: float = DEFAULT_SCALING_EFFICIENCY

    def __post_init__(self) -> None:
        if self.train_images_per_s <= 0 or self.infer_tiles_per_s <= 0:
            raise EstimateError(f"throughputs must be > 0, got train {self.train_images_per_s}, inference {self.infer_tiles_per_s}")
        if not 0 < self.scaling_efficiency <= 1:
            raise EstimateError(f"--scaling-efficiency must be in (0, 1], got {self.scaling_efficiency}")


# ------------------------------------------------------------------------------ training


def steps_per_epoch(*, n_pos: int, batch_size: int, world_size: int, ratio: float, pos_fraction: float,
                    balanced: bool = True, fixed_steps: int = 0) -> int:
    """Optimizer steps in one epoch, by the rule of :class:`rts.data.sampler.BalancedBatchSampler`.

    Args:
        n_pos: Positive training tiles.
        batch_size: Per-GPU batch size.
        world_size: Number of GPUs.
        ratio: Epoch-level negatives per positive.
        pos_fraction: Positive share of a balanced batch.
        balanced: Balanced sampling (False: every batch slot counts as a negative slot).
        fixed_steps: ``train.steps_per_epoch`` (0 = derived).
    """
    return epoch_steps(ratio=ratio, n_pos=n_pos, n_neg_batch=negatives_per_batch(batch_size, pos_fraction, balanced),
                       world_size=world_size, fixed_steps=fixed_steps)


def epoch_ratios(sampler: SamplerConfig, epochs: int) -> list[float]:
    """Negatives per positive of each epoch (the curriculum ramp, or the fixed ``train_ratio``)."""
    if not sampler.curriculum:
        return [float(sampler.train_ratio)] * epochs
    return [curriculum_ratio(e, start=sampler.curriculum_start_ratio, end=sampler.curriculum_end_ratio,
                             epochs=sampler.curriculum_epochs) for e in range(epochs)]


def expected_epochs(max_epochs: int, fraction: float) -> int:
    """``ceil(fraction x max_epochs)``, at least 1: where early stopping is assumed to end a run."""
    if not 0 < fraction <= 1:
        raise EstimateError(f"--expected-epoch-fraction must be in (0, 1], got {fraction}")
    return max(1, min(max_epochs, math.ceil(fraction * max_epochs - 1e-9)))


def training_run(params: Params, *, n_pos: int, world_size: int, gpus_per_node: int, throughput: Throughput,
                 val_tiles: int, expected_epoch_fraction: float) -> dict[str, Any]:
    """Images, hours and GPU hours of one training run at ``max_epochs`` and at the expected epochs.

    Returns:
        ``{"steps_per_epoch", "images_per_epoch", "max": {...}, "expected": {...}}`` where each
        of ``max`` / ``expected`` holds ``epochs, images, validations, train_hours, val_hours,
        wall_hours, gpu_hours, node_hours``.
    """
    tc, sc = params.train, params.sampler
    if n_pos < 1 or world_size < 1 or val_tiles < 0:
        raise EstimateError(f"need n_pos >= 1, world size >= 1, val tiles >= 0; got {n_pos}, {world_size}, {val_tiles}")
    per_epoch = [steps_per_epoch(n_pos=n_pos, batch_size=tc.batch_size, world_size=world_size, ratio=r,
                                 pos_fraction=sc.pos_fraction_per_batch, balanced=sc.balanced, fixed_steps=tc.steps_per_epoch)
                 for r in epoch_ratios(sc, tc.max_epochs)]
    out: dict[str, Any] = {
        "steps_per_epoch": per_epoch[0] if len(set(per_epoch)) == 1 else per_epoch,
        "images_per_epoch": per_epoch[0] * tc.batch_size * world_size if len(set(per_epoch)) == 1 else None,
        "batch_size": tc.batch_size,
        "world_size": world_size,
    }
    train_speed = throughput.train_images_per_s * world_size * throughput.scaling_efficiency
    val_speed = throughput.infer_tiles_per_s * world_size
    for key, epochs in (("max", tc.max_epochs), ("expected", expected_epochs(tc.max_epochs, expected_epoch_fraction))):
        steps = sum(per_epoch[:epochs])
        images = steps * tc.batch_size * world_size
        validations = math.ceil(epochs / tc.val_every) if tc.val_unit == "epoch" else math.ceil(steps / tc.val_every)
        train_s = images / train_speed
        val_s = validations * val_tiles / val_speed
        wall_h = (train_s + val_s) / 3600
        out[key] = {
            "epochs": epochs, "steps": steps, "images": images, "validations": validations,
            "train_hours": train_s / 3600, "val_hours": val_s / 3600, "wall_hours": wall_h,
            "gpu_hours": wall_h * world_size, "node_hours": wall_h * world_size / gpus_per_node,
        }
    return out


def ratio_variant(params: Params, name: str) -> Params:
    """``params`` with the sampler ratio of one ratio-ablation run: a number or ``curriculum``."""
    if name == "curriculum":
        sampler = dataclasses.replace(params.sampler, curriculum=True)
    else:
        try:
            sampler = dataclasses.replace(params.sampler, curriculum=False, train_ratio=float(name))
        except (ValueError, ConfigError) as e:
            raise EstimateError(f"--ratio-runs: {name!r} is not a ratio > 0 or 'curriculum' ({e})") from None
    return dataclasses.replace(params, sampler=sampler)


# ------------------------------------------------------------------------------ inference


def inference_projection(*, area_km2: float, tile_size: int, stride: int, n_scales: int, tta_views: int,
                         infer_tiles_per_s: float, gpus_per_node: int, pixel_size_m: float = PIXEL_SIZE_M) -> dict[str, Any]:
    """Tile locations, passes, forwards and GPU hours of one inference run over ``area_km2``."""
    if area_km2 <= 0 or not 0 < stride <= tile_size or n_scales < 1 or tta_views < 1 or infer_tiles_per_s <= 0:
        raise EstimateError(f"inference: need area > 0, 0 < stride <= tile size, >= 1 scale and view, speed > 0; got "
                            f"area {area_km2}, stride {stride}, tile {tile_size}, scales {n_scales}, views {tta_views}, speed {infer_tiles_per_s}")
    tile_km2 = (tile_size * pixel_size_m / 1000) ** 2
    locations = math.ceil(area_km2 / tile_km2 - 1e-9)
    passes_per_location = (tile_size / stride) ** 2
    tile_passes = math.ceil(locations * passes_per_location - 1e-9)
    forwards = tile_passes * n_scales * tta_views
    gpu_hours = forwards / infer_tiles_per_s / 3600
    return {
        "area_km2": area_km2, "tile_size": tile_size, "pixel_size_m": pixel_size_m, "tile_km2": tile_km2,
        "tile_locations": locations, "stride": stride, "passes_per_location": passes_per_location,
        "tile_passes": tile_passes, "n_scales": n_scales, "tta_views": tta_views, "forwards": forwards,
        "infer_tiles_per_s": infer_tiles_per_s, "gpu_hours": gpu_hours, "node_hours": gpu_hours / gpus_per_node,
    }


def inference_job(inference: dict[str, Any], *, passes_per_s: float, write_mpx_per_s: float, write_workers: int, shards: int,
                  price_per_gpu_hour: float) -> dict[str, Any]:
    """Wall time and cost of a sharded ``rts predict`` job (one GPU per shard) from measured rates.

    ``passes_per_s``: passes per second of one shard at the job's scales x TTA (``rts predict``'s
    run log: passes over ``timing.passes_s``); ``write_mpx_per_s``: output megapixels per second of
    one write worker (pixels over ``timing.finalize_s``: COGs, overviews, polygons). A shard's writes
    overlap its next region's passes, so its wall time is the slower of the two; shards are balanced
    by passes to one tile row, so the job's wall time is a shard's.
    """
    if passes_per_s <= 0 or write_mpx_per_s <= 0 or write_workers < 1 or shards < 1:
        raise EstimateError(f"inference job: need pass and write rates > 0, >= 1 write worker and shard; got {passes_per_s}, "
                            f"{write_mpx_per_s}, {write_workers}, {shards}")
    pixels = inference["area_km2"] * 1e6 / inference["pixel_size_m"] ** 2
    pass_h = inference["tile_passes"] / shards / passes_per_s / 3600
    write_h = pixels / 1e6 / shards / (write_mpx_per_s * write_workers) / 3600
    wall_h = max(pass_h, write_h)
    gpu_hours = wall_h * shards
    return {"shards": shards, "passes_per_s_per_shard": passes_per_s, "write_mpx_per_s_per_worker": write_mpx_per_s,
            "write_workers": write_workers, "megapixels": pixels / 1e6, "passes_hours": pass_h, "writes_hours": write_h,
            "wall_hours": wall_h, "bound": "writes" if write_h > pass_h else "passes", "gpu_hours": gpu_hours,
            "cost": gpu_hours * price_per_gpu_hour,
            "write_workers_to_keep_up": math.ceil(pixels / 1e6 / shards / write_mpx_per_s / 3600 / pass_h)}


def rates_from_run_log(path: str | Path) -> tuple[float, float]:
    """(passes/s, output Mpx/s) measured by an ``rts predict`` run: its regions' passes run over
    ``timing.passes_s``, and their output pixels over ``timing.finalize_s``."""
    import rasterio

    path = Path(path)
    try:
        log_ = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EstimateError(f"{path}: not a readable rts predict run log ({e})") from None
    passes = seconds = px = write_s = 0.0
    for r in log_.get("regions", []):
        t = r.get("timing") or {}
        if "passes_s" in t and r.get("tiles_run"):
            passes += r["tiles_run"]
            seconds += t["passes_s"]
        if "finalize_s" in t and r.get("outputs"):
            with rasterio.open(r["outputs"]["prob"]) as src:
                px += src.width * src.height
            write_s += t["finalize_s"]
    if not seconds or not write_s:
        raise EstimateError(f"{path}: no region with timed passes and writes; measure with a fresh rts predict run "
                            "(a resumed or skipped region has no timing)")
    return passes / seconds, px / 1e6 / write_s


# ------------------------------------------------------------------------------ the whole projection


def _status(low: float, high: float, allocation: float) -> str:
    if low > allocation:
        return "OVER"
    if high > allocation:
        return "AT RISK"
    return "OK"


def _phase_counts(runs: dict[str, int] | None) -> dict[str, int]:
    """Runs per experiment phase: :data:`DEFAULT_RUNS` overridden by the valid entries of ``runs``."""
    counts = dict(DEFAULT_RUNS)
    for key, value in (runs or {}).items():
        if key not in DEFAULT_RUNS:
            raise EstimateError(f"--runs: unknown phase {key!r}; valid phases: {', '.join(DEFAULT_RUNS)}")
        if value < 0:
            raise EstimateError(f"--runs {key}={value}: must be >= 0")
        counts[key] = value
    return counts


def _phase_cost(n: int, run: dict[str, Any], detail: str) -> dict[str, Any]:
    """Node and GPU hours (expected, max) of a phase of ``n`` runs that each cost ``run``."""
    return {
        "runs": n, "detail": detail,
        "node_hours": {k: n * run[k]["node_hours"] for k in ("expected", "max")},
        "gpu_hours": {k: n * run[k]["gpu_hours"] for k in ("expected", "max")},
    }


def _ratio_phase(params: Params, ratio_runs: tuple[str, ...], common: dict[str, Any]) -> dict[str, Any]:
    """Node and GPU hours of the ratio ablation: one training run per ratio, each at its own epoch size."""
    ratio_detail = []
    ratio_hours = {"expected": 0.0, "max": 0.0}
    ratio_gpu = {"expected": 0.0, "max": 0.0}
    for name in ratio_runs:
        run = training_run(ratio_variant(params, name), **common)
        ratio_detail.append({"ratio": name, "node_hours": {k: run[k]["node_hours"] for k in ("expected", "max")}})
        for k in ratio_hours:
            ratio_hours[k] += run[k]["node_hours"]
            ratio_gpu[k] += run[k]["gpu_hours"]
    return {"runs": len(ratio_runs), "detail": ratio_detail, "node_hours": ratio_hours, "gpu_hours": ratio_gpu}


def _training_phases(params: Params, base_run: dict[str, Any], counts: dict[str, int], ratio_runs: tuple[str, ...],
                     seeds: int, common: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Cost of every phase of the experiment matrix and the final seeds, in table order."""
    return {
        "baseline": _phase_cost(counts["baseline"], base_run, "RGB baseline of params.yaml"),
        "losses": _phase_cost(counts["losses"], base_run, "Tversky, class-balanced CE"),
        "loss_tuning": _phase_cost(counts["loss_tuning"], base_run, "optional loss hyper-parameter grid"),
        "ratios": _ratio_phase(params, ratio_runs, common),
        "architectures": _phase_cost(counts["architectures"], base_run, "DeepLabV3+, SegFormer, SAM (baseline cost assumed)"),
        "auxiliary": _phase_cost(counts["auxiliary"], base_run, "RGB+NDVI, RGB+DEM, RGB+NDVI+DEM"),
        "fusion": _phase_cost(counts["fusion"], base_run, "early, late fusion"),
        "final_seeds": _phase_cost(seeds, base_run, "final model, seeds 42, 43, 44..."),
    }


def _sampling_notes(params: Params, n_pos: int, n_neg: int) -> list[str]:
    """Notes on the training sampling: whether an epoch must draw some negative tiles more than once."""
    notes = []
    if params.sampler.train_ratio * n_pos > n_neg:
        notes.append(f"train_ratio {params.sampler.train_ratio:g} x n_pos {n_pos} > n_neg {n_neg}: negatives repeat within an epoch")
    return notes


def _pan_arctic_inference(params: Params, *, throughput: Throughput, area_km2: float, stride: int | None,
                          scales: tuple[float, ...] | None, tta: str | None, gpus_per_node: int,
                          price_per_gpu_hour: float) -> dict[str, Any]:
    """Inference projection over ``area_km2`` with its settings (None: from ``params``) and its cost."""
    tile = params.data.tile_size
    scales = tuple(scales if scales is not None else params.evaluate.scales)
    tta = tta if tta is not None else params.evaluate.tta
    if tta not in TTA_VIEWS:
        raise EstimateError(f"--tta: unknown {tta!r}; valid: {', '.join(TTA_VIEWS)}")
    inference = inference_projection(area_km2=area_km2, tile_size=tile, stride=stride or tile // 2, n_scales=len(scales),
                                     tta_views=TTA_VIEWS[tta], infer_tiles_per_s=throughput.infer_tiles_per_s,
                                     gpus_per_node=gpus_per_node)
    inference.update(scales=list(scales), tta=tta, cost=inference["gpu_hours"] * price_per_gpu_hour)
    return inference


def _table_rows(phases: dict[str, dict[str, Any]], seeds: int, gpus_per_node: int,
                price_per_gpu_hour: float) -> list[dict[str, Any]]:
    """Training rows of the cost table: runs, node hours and cost summed over each row's phases."""
    rows = []
    for label, keys in TABLE_ROWS:
        nh = {k: sum(phases[p]["node_hours"][k] for p in keys) for k in ("expected", "max")}
        rows.append({"stage": label.format(seeds=seeds), "phases": list(keys), "runs": sum(phases[p]["runs"] for p in keys),
                     "node_hours": nh, "cost": {k: v * gpus_per_node * price_per_gpu_hour for k, v in nh.items()}})
    return rows


def _training_and_grand_totals(rows: list[dict[str, Any]], inference: dict[str, Any], gpus_per_node: int,
                               price_per_gpu_hour: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Training total (node hours, GPU hours, cost) over the table rows, and the total with inference."""
    train_nh = {k: sum(r["node_hours"][k] for r in rows) for k in ("expected", "max")}
    train_cost = {k: v * gpus_per_node * price_per_gpu_hour for k, v in train_nh.items()}
    total_cost = {k: train_cost[k] + inference["cost"] for k in ("expected", "max")}
    training_total = {"node_hours": train_nh, "gpu_hours": {k: v * gpus_per_node for k, v in train_nh.items()}, "cost": train_cost}
    total = {"node_hours": {k: train_nh[k] + inference["node_hours"] for k in ("expected", "max")}, "cost": total_cost}
    return training_total, total


def _budget_comparison(train_cost: dict[str, float], inference_cost: float, total_cost: dict[str, float], *,
                       budget: float, training_allocation: float, inference_allocation: float) -> dict[str, Any]:
    """Projected cost against each allocation of the budget, with a status, and the buffer left."""
    buffer_alloc = budget - training_allocation - inference_allocation
    if buffer_alloc < 0:
        raise EstimateError(f"--budget {budget:g} is smaller than the training + inference allocations {training_allocation + inference_allocation:g}")
    return {
        "training": {"allocation": training_allocation, "cost": train_cost, "status": _status(train_cost["expected"], train_cost["max"], training_allocation)},
        "inference": {"allocation": inference_allocation, "cost": inference_cost, "status": _status(inference_cost, inference_cost, inference_allocation)},
        "buffer": {"allocation": buffer_alloc, "left": {k: budget - total_cost[k] for k in ("expected", "max")}},
        "total": {"allocation": budget, "cost": total_cost, "status": _status(total_cost["expected"], total_cost["max"], budget)},
    }


def _budget_warnings(comparison: dict[str, Any]) -> list[str]:
    """One warning per budget category whose projected cost is over or at risk of its allocation."""
    warnings = []
    for name in ("training", "inference", "total"):
        if comparison[name]["status"] != "OK":
            warnings.append(f"{name}: projected cost {comparison[name]['status']} its allocation of ${comparison[name]['allocation']:,.0f}")
    return warnings


def estimate(
    params: Params,
    *,
    throughput: Throughput,
    price_per_gpu_hour: float = DEFAULT_PRICE_PER_GPU_HOUR,
    gpus_per_node: int = 8,
    nodes: int = 1,
    n_pos: int = DEFAULT_N_POS,
    n_neg: int = DEFAULT_N_NEG,
    val_tiles: int = DEFAULT_VAL_TILES,
    expected_epoch_fraction: float = DEFAULT_EXPECTED_EPOCH_FRACTION,
    runs: dict[str, int] | None = None,
    ratio_runs: tuple[str, ...] = DEFAULT_RATIO_RUNS,
    seeds: int = DEFAULT_SEEDS,
    area_km2: float = DEFAULT_AREA_KM2,
    stride: int | None = None,
    scales: tuple[float, ...] | None = None,
    tta: str | None = None,
    budget: float = DEFAULT_BUDGET,
    training_allocation: float = DEFAULT_TRAINING_ALLOCATION,
    inference_allocation: float = DEFAULT_INFERENCE_ALLOCATION,
    gpu_name: str = "H100",
) -> dict[str, Any]:
    """Project GPU hours and cost of the experiment matrix, the final seeds and pan-Arctic inference.

    Args:
        params: Run settings (batch size, sampler, epochs, validation, tile size, evaluate scales/TTA).
        throughput: Per-GPU training and inference speeds.
        price_per_gpu_hour: USD per GPU-hour.
        gpus_per_node, nodes: Training world size is their product; hours are also reported per node.
        n_pos, n_neg: Positive / negative training tiles (``n_neg`` only flags repeated negatives).
        val_tiles: Tiles forwarded per validation (val-balanced + val-realistic).
        expected_epoch_fraction: Share of ``max_epochs`` an early-stopped run is assumed to train.
        runs: Runs per phase (keys of :data:`DEFAULT_RUNS`; missing keys take the default).
        ratio_runs: One ratio-ablation run per entry: a ratio or ``curriculum``.
        seeds: Final-model seeds.
        area_km2, stride, scales, tta: Inference area and settings (None: tile_size / 2 and
            ``evaluate.scales`` / ``evaluate.tta``).
        budget, training_allocation, inference_allocation: USD of the whole budget and of its training
            and inference shares (the buffer for reruns is the rest).
        gpu_name: Label of the table header.

    Returns:
        The JSON-ready projection; :func:`format_table` renders it.
    """
    if price_per_gpu_hour <= 0 or gpus_per_node < 1 or nodes < 1 or seeds < 0:
        raise EstimateError(f"need price > 0, gpus per node >= 1, nodes >= 1, seeds >= 0; got {price_per_gpu_hour}, {gpus_per_node}, {nodes}, {seeds}")
    counts = _phase_counts(runs)
    common = dict(n_pos=n_pos, world_size=gpus_per_node * nodes, gpus_per_node=gpus_per_node, throughput=throughput,
                  val_tiles=val_tiles, expected_epoch_fraction=expected_epoch_fraction)
    base_run = training_run(params, **common)
    phases = _training_phases(params, base_run, counts, ratio_runs, seeds, common)
    notes = _sampling_notes(params, n_pos, n_neg)  # facts worth knowing that are not problems
    inference = _pan_arctic_inference(params, throughput=throughput, area_km2=area_km2, stride=stride, scales=scales, tta=tta,
                                      gpus_per_node=gpus_per_node, price_per_gpu_hour=price_per_gpu_hour)
    rows = _table_rows(phases, seeds, gpus_per_node, price_per_gpu_hour)
    training_total, total = _training_and_grand_totals(rows, inference, gpus_per_node, price_per_gpu_hour)
    comparison = _budget_comparison(training_total["cost"], inference["cost"], total["cost"], budget=budget,
                                    training_allocation=training_allocation, inference_allocation=inference_allocation)
    assumptions = {
        "price_per_gpu_hour": price_per_gpu_hour, "gpu_name": gpu_name, "gpus_per_node": gpus_per_node, "nodes": nodes,
        "train_images_per_s_per_gpu": throughput.train_images_per_s, "infer_tiles_per_s_per_gpu": throughput.infer_tiles_per_s,
        "scaling_efficiency": throughput.scaling_efficiency, "n_pos": n_pos, "n_neg": n_neg, "val_tiles": val_tiles,
        "expected_epoch_fraction": expected_epoch_fraction, "runs": counts, "ratio_runs": list(ratio_runs), "seeds": seeds,
        "max_epochs": params.train.max_epochs, "batch_size": params.train.batch_size, "train_ratio": params.sampler.train_ratio,
    }
    return {
        "assumptions": assumptions, "training_run": base_run, "phases": phases, "rows": rows, "training_total": training_total,
        "inference": inference, "total": total, "budget": comparison,
        "warnings": _budget_warnings(comparison),  # budget flags
        "notes": notes,
    }


# ------------------------------------------------------------------------------ rendering


def _range(low: float, high: float, fmt: str, prefix: str = "") -> str:
    a, b = format(low, fmt), format(high, fmt)
    return f"{prefix}{a}" if a == b else f"{prefix}{a}–{b}"


def format_table(result: dict[str, Any]) -> str:
    """Markdown cost table (node hours and cost, expected–max per row), then the budget comparison."""
    a = result["assumptions"]
    lines = [
        f"| Stage | GPU Hours ({a['gpus_per_node']}×{a['gpu_name']}) | Estimated Cost |",
        "|-------|-------------------|----------------|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['stage']} | {_range(r['node_hours']['expected'], r['node_hours']['max'], ',.1f')} | "
                     f"{_range(r['cost']['expected'], r['cost']['max'], ',.0f', '$')} |")
    t = result["training_total"]
    lines.append(f"| **Training Total** | ~{_range(t['node_hours']['expected'], t['node_hours']['max'], ',.1f')} | "
                 f"~{_range(t['cost']['expected'], t['cost']['max'], ',.0f', '$')} |")
    inf = result["inference"]
    lines.append(f"| Pan-Arctic inference | {inf['node_hours']:,.1f} | ${inf['cost']:,.0f} |")
    job = result.get("inference_job")
    tot = result["total"]
    lines.append(f"| **Total** | {_range(tot['node_hours']['expected'], tot['node_hours']['max'], ',.1f')} | "
                 f"{_range(tot['cost']['expected'], tot['cost']['max'], ',.0f', '$')} |")
    lines += [
        "",
        f"Hours of one {a['gpus_per_node']}-GPU node (GPU-hours / {a['gpus_per_node']}) at ${a['price_per_gpu_hour']:g}/GPU-hour; "
        f"ranges are expected ({a['expected_epoch_fraction']:g} x max epochs)–max epochs.",
        f"Inference: {inf['tile_locations']:,} tile locations ({inf['area_km2']:,.0f} km²) x {inf['passes_per_location']:g} passes "
        f"x {inf['n_scales']} scales x {inf['tta_views']} TTA views = {inf['forwards']:,} forwards "
        f"at {inf['infer_tiles_per_s']:g}/s per GPU.",
        *([f"Sharded job: {job['shards']} shards (1 GPU each) at {job['passes_per_s_per_shard']:g} passes/s and "
           f"{job['write_workers']} x {job['write_mpx_per_s_per_worker']:g} Mpx/s of writes: passes {job['passes_hours']:,.1f} h, "
           f"writes {job['writes_hours']:,.1f} h, wall time {job['wall_hours']:,.1f} h ({job['bound']}-bound), "
           f"{job['gpu_hours']:,.0f} GPU-hours, ${job['cost']:,.0f}; {job['write_workers_to_keep_up']} write worker(s) per shard keep up "
           "with the passes."] if job else []),
        "",
        "| Category | Allocation | Projected | Status |",
        "|----------|------------|-----------|--------|",
    ]
    b = result["budget"]
    lines.append(f"| Training experiments | ${b['training']['allocation']:,.0f} | "
                 f"{_range(b['training']['cost']['expected'], b['training']['cost']['max'], ',.0f', '$')} | {b['training']['status']} |")
    lines.append(f"| Pan-arctic inference | ${b['inference']['allocation']:,.0f} | ${b['inference']['cost']:,.0f} | {b['inference']['status']} |")
    left = b["buffer"]["left"]
    lines.append(f"| Buffer / reruns | ${b['buffer']['allocation']:,.0f} | {_range(left['max'], left['expected'], ',.0f', '$')} left | |")
    lines.append(f"| **Total** | ${b['total']['allocation']:,.0f} | "
                 f"{_range(b['total']['cost']['expected'], b['total']['cost']['max'], ',.0f', '$')} | {b['total']['status']} |")
    for w in result["warnings"]:
        lines.append(f"WARNING: {w}")
    for n in result.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ profile input


def read_profile(path: str | Path) -> dict[str, Any]:
    """Training throughput from an ``rts profile`` JSON: images/s per GPU at its chosen batch size.

    Returns:
        ``{"train_images_per_s", "batch_size", "tile_size", "device", "device_name", "amp_dtype"}``.

    Raises:
        EstimateError: the file is missing, not JSON, or has no fitting measured batch.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EstimateError(f"{path}: profile file not found; write it with `rts profile --out {path}`") from None
    except json.JSONDecodeError as e:
        raise EstimateError(f"{path}: not valid JSON ({e})") from None
    try:
        chosen = data["batch_size"]
        trials = data["trials"]
        config = data["config"]
    except (KeyError, TypeError):
        raise EstimateError(f"{path}: not an `rts profile` output (needs batch_size, trials, config)") from None
    trial = next((t for t in trials if t.get("batch_size") == chosen and t.get("fits") and t.get("images_per_s")), None)
    if chosen is None or trial is None:
        raise EstimateError(f"{path}: no fitting batch with a measured images_per_s; re-run `rts profile` with a smaller batch")
    return {
        "train_images_per_s": float(trial["images_per_s"]), "batch_size": int(chosen), "tile_size": config.get("tile_size"),
        "device": data.get("device"), "device_name": data.get("device_name"), "amp_dtype": config.get("amp_dtype"),
    }
