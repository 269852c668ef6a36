"""What the pipeline stages load: the dataset format's checks, region-level splits, normalisation
statistics, the tile store and its cache, the training dataset and sampler, augmentation, boundary
handling, and windows over neighbouring tiles."""
