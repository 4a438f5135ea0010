"""The training loop: set-up, steps, checkpoints and resumption, and what a run records."""
