"""The experiment matrix of the training guide (losses, ratios, architectures, auxiliary data,
fusion) as ``-S`` grids, their expansion into single experiments for the runner, and multi-seed
aggregation (mean and std of every metric)."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
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


def split_grid(item: str) -> list[str]:
    """``key=a,b`` -> [``key=a``, ``key=b``]; commas inside brackets belong to a list value
    (``data.extra_channels=[ndvi,re]`` is one value), as in DVC's ``-S`` grids."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r}: expected KEY=VALUE (for example loss=tversky)")
    values, depth, cur = [], 0, ""
    for ch in value:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            values.append(cur)
            cur = ""
        else:
            cur += ch
    values.append(cur)
    return [f"{key}={v.strip()}" for v in values]


def expand_grid(items: Sequence[str]) -> list[list[str]]:
    """The cartesian product of a list of ``-S`` items with comma grids, in order."""
    return [list(c) for c in itertools.product(*(split_grid(i) for i in items))]


def slug(overrides: Sequence[str], hashed: Sequence[str] | None = None, limit: int = 40) -> str:
    """A git-ref-safe, readable name part from override values, plus a hash of ``hashed`` (default:
    the same overrides), so that one name always stands for one set of params."""
    digest = hashlib.sha1("\n".join(overrides if hashed is None else hashed).encode()).hexdigest()[:6]
    words = [re.sub(r"[^A-Za-z0-9._]+", "", o.partition("=")[2]) for o in overrides]
    text = re.sub(r"\.{2,}", ".", "-".join(w for w in words if w))[:limit].strip(".-")
    return f"{text}-{digest}" if text else digest


def phase_experiments(phase: str, base: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every single experiment of a phase (``all`` = every phase in order):
    the phase's grids expanded, each with ``base`` first. Names are ``PHASE-VALUES-HASH``."""
    phases = ORDER if phase == "all" else (phase,)
    out = []
    for name in phases:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; valid phases: {', '.join(PHASES)}, all")
        for grid in PHASES[name]:
            for combo in expand_grid(grid):
                overrides = [*base, *combo]
                out.append((f"{name}-{slug(combo, overrides)}", overrides))
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
