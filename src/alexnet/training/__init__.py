"""Config and recipes, the training engine, the run and its folder, DDP."""
