"""Experiments: the guide's matrix (:mod:`.matrix`), the GPU-aware runner of DVC experiments
(:mod:`.runner`), Bayesian search with Optuna (:mod:`.search`) and region-fold cross-validation
(:mod:`.folds`). ``python -m rts.experiments --help`` is the command line."""

from rts.experiments.matrix import (
    ORDER,
    PHASES,
    aggregate_seeds,
    expand_grid,
    numeric_leaves,
    phase_experiments,
    queue_commands,
    seeds_table,
    slug,
    split_grid,
)

__all__ = ["ORDER", "PHASES", "aggregate_seeds", "expand_grid", "numeric_leaves", "phase_experiments", "queue_commands",
           "seeds_table", "slug", "split_grid"]
