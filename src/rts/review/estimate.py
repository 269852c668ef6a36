"""Precision of a prediction folder's candidates from a stratified review sample.

The candidates (predicted RTS polygons) are split into strata of calibrated probability; a reviewer
judges a random sample of each stratum (or every candidate of it). Unsure verdicts are left out of
the sample (they are counted and reported): the estimate is of the candidates a reviewer can decide.

Estimator (stratified, prevalence-aware): stratum ``h`` holds ``N_h`` candidates of which ``n_h`` were
decided and ``k_h`` confirmed as RTS. Each verdict stands for ``N_h / n_h`` candidates (the inverse of
its sampling probability), so the precision of all candidates is

    P = sum_h W_h p_h,   W_h = N_h / N,   p_h = k_h / n_h.

The candidates come from one inference pass over the mapped area itself, at its own prevalence, so P
is the precision at that prevalence, not at the review sample's mix of high and low scores (a
top-only review overstates it).

Intervals (95% by default):

* per stratum: the Wilson score interval of ``k_h / n_h`` (closed form);
* overall and per region: the stratified Jeffreys interval, the ``alpha/2`` and ``1 - alpha/2``
  quantiles of ``sum_h W_h p_h`` with ``p_h ~ Beta(k_h + 1/2, n_h - k_h + 1/2)`` independent, by
  Monte Carlo (``draws`` samples, fixed seed: the same verdicts give the same interval). A stratum
  with candidates but no decided verdict keeps its full weight with ``Beta(1/2, 1/2)``: the interval
  widens instead of silently dropping it. No finite-population correction is applied, so a stratum
  reviewed in full gives a slightly conservative interval.

``tests/review/test_review_estimate.py`` measures the coverage over repeated seeded samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054
MIN_DECIDED = 5  # fewer decided verdicts than this: "too few objects" instead of a figure
DRAWS = 20000


def wilson(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a binomial proportion ``k / n`` (``(None, None)`` when ``n == 0``)."""
    if n <= 0:
        return None, None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified(population: Mapping[str, int], decided: Mapping[str, int], confirmed: Mapping[str, int], *,
               level: float = 0.95, draws: int = DRAWS, seed: int = 0) -> dict:
    """The stratified precision estimate and its Jeffreys interval.

    Args:
        population: candidates per stratum (``N_h``).
        decided: RTS or not-RTS verdicts per stratum (``n_h``).
        confirmed: RTS verdicts per stratum (``k_h``).
        level: interval probability.
        draws: Monte Carlo draws of the interval.
        seed: of the Monte Carlo draws.

    Returns:
        ``precision`` (None when no stratum has a decided verdict), ``low``, ``high``, ``n_population``,
        ``n_decided``, ``n_confirmed`` and ``strata_without_verdicts``.
    """
    strata = [h for h in population if population[h] > 0]
    total = sum(population[h] for h in strata)
    n_dec = sum(decided.get(h, 0) for h in strata)
    n_conf = sum(confirmed.get(h, 0) for h in strata)
    out = {"n_population": int(total), "n_decided": int(n_dec), "n_confirmed": int(n_conf),
           "strata_without_verdicts": [h for h in strata if decided.get(h, 0) == 0],
           "precision": None, "low": None, "high": None, "level": level}
    if total == 0 or n_dec == 0:
        return out
    rng = np.random.default_rng(seed)
    point, sims = 0.0, np.zeros(draws)
    for h in strata:
        w = population[h] / total
        n, k = decided.get(h, 0), confirmed.get(h, 0)
        if n > 0:
            point += w * k / n
        sims += w * rng.beta(k + 0.5, n - k + 0.5, size=draws)
    if out["strata_without_verdicts"]:
        point = None  # a stratum with no verdict has no point estimate; the interval still bounds P
    a = (1 - level) / 2
    lo, hi = np.quantile(sims, [a, 1 - a])
    out.update(precision=point, low=float(lo), high=float(hi))
    return out


def precision_report(candidates: Sequence[Mapping], verdicts: Mapping[str, str], *, population_scope: str,
                     level: float = 0.95, seed: int = 0) -> dict:
    """Per stratum, per region and overall precision of ``candidates`` from ``verdicts``.

    Args:
        candidates: dicts with ``id``, ``stratum``, ``region`` and ``selected`` (in the review sample);
            every candidate of the prediction folder when the review sampled strata, else only the
            reviewed ones (``population_scope`` says which).
        verdicts: ``{candidate id: "rts" | "not_rts" | "unsure"}``.
        population_scope: what the estimate is of (written into the report).
    """
    def tally(rows):
        pop, dec, conf, unsure = {}, {}, {}, {}
        for c in rows:
            h = c["stratum"]
            pop[h] = pop.get(h, 0) + 1
            v = verdicts.get(c["id"])
            if v in ("rts", "not_rts"):
                dec[h] = dec.get(h, 0) + 1
                conf[h] = conf.get(h, 0) + (v == "rts")
            elif v == "unsure":
                unsure[h] = unsure.get(h, 0) + 1
        return pop, dec, conf, unsure

    def summary(rows, name_seed):
        pop, dec, conf, unsure = tally(rows)
        est = stratified(pop, dec, conf, level=level, seed=name_seed)
        est["n_unsure"] = int(sum(unsure.values()))
        est["n_sampled"] = int(sum(1 for c in rows if c.get("selected")))
        if est["n_decided"] < MIN_DECIDED:
            est["note"] = f"too few objects: {est['n_decided']} decided verdict(s), a figure needs at least {MIN_DECIDED}"
        return est, (pop, dec, conf, unsure)

    overall, (pop, dec, conf, unsure) = summary(candidates, seed)
    strata = {}
    for h in sorted(pop):
        lo, hi = wilson(conf.get(h, 0), dec.get(h, 0))
        n = dec.get(h, 0)
        entry = {"n_population": pop[h], "n_decided": n, "n_confirmed": conf.get(h, 0), "n_unsure": unsure.get(h, 0),
                 "precision": conf.get(h, 0) / n if n else None, "low": lo, "high": hi, "interval": "Wilson score"}
        if n < MIN_DECIDED:
            entry["note"] = f"too few objects: {n} decided verdict(s)"
        strata[h] = entry
    regions = {}
    for i, region in enumerate(sorted({c["region"] for c in candidates})):
        regions[region], _ = summary([c for c in candidates if c["region"] == region], seed + 1 + i)
    return {
        "estimator": "stratified: P = sum_h (N_h / N) * k_h / n_h over probability strata; unsure verdicts left out",
        "interval": f"{level:.0%} stratified Jeffreys (Monte Carlo of sum_h W_h Beta(k_h + 1/2, n_h - k_h + 1/2)); "
                    "per stratum Wilson score",
        "population": population_scope,
        "overall": overall,
        "strata": strata,
        "regions": regions,
    }
