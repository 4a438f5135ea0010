"""TensorBoard: event files in the run directory (`tensorboard --logdir runs/`), written with
torch.utils.tensorboard; the resolved config goes to the HParams view."""

from __future__ import annotations

from pathlib import Path


class TensorBoardTracker:
    def __init__(self, run_dir: Path, params: dict, key_metrics: tuple[str, ...]):
        self.run_dir, self.params, self.key_metrics = run_dir, params, key_metrics
        self.writer = None

    def start(self, history: list[tuple[int, dict[str, float]]]) -> None:
        """A resumed run restarts TensorBoard's record at step 0 and writes the checkpoint's history
        again: TensorBoard's readers drop what the earlier process wrote (its steps after the
        checkpoint would otherwise appear twice)."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        earlier = any(self.run_dir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=0 if earlier else None, flush_secs=10)
        experiment, session_start, self._session_end = hparams(self.params, {k: 0.0 for k in self.key_metrics})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)
        for step, metrics in history:
            self.log(metrics, step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_artifacts(self, files: list[Path]) -> None:
        pass  # the event files live beside the run's files already

    def finish(self, status: str) -> None:
        if self.writer is None:
            return
        if status == "FINISHED":
            self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
        self.writer = None
