"""Experiments: grids of runs (sweeps) and their tables and plots."""
