"""Training a model under torchrun: the run, the step it shares with `rts profile`, losses for
extreme class imbalance, collectives, checkpoints, schedule and early stopping."""
