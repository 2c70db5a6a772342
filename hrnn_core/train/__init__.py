"""Training layer: the trainer (prepare, fit, validate, checkpoint) and its distributed runner."""
