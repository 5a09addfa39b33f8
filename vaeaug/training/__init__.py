"""Shared training utilities: one loop for classifiers and autoencoders (state, optimizers,
sharding, checkpoints with exact resume, early stopping, metric logs, progress)."""
