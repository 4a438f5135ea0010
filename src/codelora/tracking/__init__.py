"""Experiment trackers (train.report_to): a run's losses, learning rate, speed, evaluation and
pass@1 sent to TensorBoard and / or MLflow through their own libraries (optional extras).

`Trackers` is what the training loop and `run` talk to; each tracker keeps a resumed run in the
same tracker run without duplicated steps (see `Trackers.start`).
"""

from codelora.tracking.trackers import Trackers, entry_metrics, evaluation_metrics, open_trackers

__all__ = ["Trackers", "entry_metrics", "evaluation_metrics", "open_trackers"]
