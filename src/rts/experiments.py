"""The experiment matrix (losses, ratios, architectures, auxiliary data) as DVC queue grids, and multi-seed aggregation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# Each phase: a list of queue invocations, each a list of -S overrides (comma lists make grids).
PHASES: dict[str, list[list[str]]] = {
    "baseline": [["loss=focal"]],
    "losses": [
        ["loss=tversky", "tversky.alpha=0.3", "tversky.beta=0.5,0.7"],  # beta > alpha favours precision
        ["loss=balanced_ce", "balanced_ce.weighting=linear,sqrt,log"],
    ],
    "focal_tuning": [["loss=focal", "focal.gamma=1,2,3,5", "focal.alpha=0.1,0.25,0.5,0.75"]],
    "ratios": [
        ["sampler.train_ratio=20,50", "sampler.curriculum=false"],
        ["sampler.curriculum=true", "sampler.curriculum_start_ratio=1", "sampler.curriculum_end_ratio=50"],
    ],
    "architectures": [["model.arch=deeplabv3plus,segformer"], ["model.arch=vit_unet", "model.encoder=vit_small_patch14_dinov2"]],
    "auxiliary": [
        ["data.extra_channels=[ndvi]"],
        ["data.extra_channels=[re,sr]"],
        ["data.extra_channels=[ndvi,nir,re,sr]"],
    ],
    "fusion": [["data.extra_channels=[ndvi,nir,re,sr]", "model.fusion=early,late"]],
}
ORDER = ("baseline", "losses", "ratios", "architectures", "auxiliary", "fusion")


def queue_commands(phase: str, base: Sequence[str] = ()) -> list[list[str]]:
    """``dvc exp run --queue`` argument lists for a phase (``all`` = every phase in order)."""
    phases = ORDER if phase == "all" else (phase,)
    out = []
    for name in phases:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; valid phases: {', '.join(PHASES)}, all")
        for grid in PHASES[name]:
            cmd = ["dvc", "exp", "run", "--queue"]
            for item in [*base, *grid]:
                cmd += ["-S", item]
            out.append(cmd)
    return out


def numeric_leaves(d: Mapping, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(numeric_leaves(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
            out[key] = float(v)
    return out


def aggregate_seeds(results: Mapping[int, Mapping]) -> dict[str, dict]:
    """mean, std (population, ``np.std``) and values of every numeric metric.

    ``results`` maps seed -> metrics dict (nested). A metric missing or undefined (None) in some
    seed is aggregated over the seeds that have it, and ``n`` says how many.
    """
    flat = {seed: numeric_leaves(m) for seed, m in results.items()}
    keys = sorted({k for f in flat.values() for k in f})
    summary = {}
    for k in keys:
        vals = [f[k] for f in flat.values() if k in f and not math.isnan(f[k])]
        if not vals:
            continue
        summary[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals),
                      "values": {str(s): flat[s][k] for s in flat if k in flat[s]}}
    return summary


def seeds_table(summary: Mapping[str, dict], keys: Sequence[str] | None = None) -> str:
    """Markdown in the report format ``IoU_RTS: 0.723 ± 0.012``."""
    lines = ["| metric | mean ± std | n |", "|---|---|---|"]
    for k in keys or summary:
        if k in summary:
            s = summary[k]
            lines.append(f"| {k} | {s['mean']:.3f} ± {s['std']:.3f} | {s['n']} |")
    return "\n".join(lines) + "\n"
