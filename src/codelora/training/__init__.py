"""The training loop, its batches, and what a run writes."""
