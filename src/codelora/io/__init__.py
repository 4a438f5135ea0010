"""Run I/O shared by every stage: atomic files, staged run directories, hashes, figures.

The bottom layer of codelora (beside config): it imports nothing from data, models, training
or evaluation, so all of them can use it.
"""
