"""Training pipeline: data, the shared loop (EMA, checkpoints, resume, DDP), one script per model."""
