"""Files: safe loading, model files, checkpoints, metrics.csv, pretrained weights."""
