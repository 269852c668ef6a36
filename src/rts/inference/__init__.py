"""Serving a trained model: the predictor, test-time augmentation, multi-scale fusion, and prediction
over whole scenes at pan-Arctic scale (`rts predict`, `rts merge`)."""
