"""Whole runs: one run (train, then evaluate) and sweeps (grids of runs with their tables and plots)."""
