"""The post-training half of the pipeline: evaluate a trained model on the held-out splits,
calibrate its probabilities and thresholds on val-realistic, and package the deployable model."""
