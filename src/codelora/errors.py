"""User-facing errors. The CLI prints these as one line and exits non-zero, never a traceback."""


class CodeloraError(Exception):
    """An error caused by the user's input (config, data, model id, files), with a fix in its text."""


class ConfigError(CodeloraError):
    pass


class DataError(CodeloraError):
    pass


class ModelError(CodeloraError):
    pass


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class TrainingStopped(Exception):
    """Training stopped on request (SIGTERM, Ctrl-C) after writing a checkpoint; the CLI exits 0."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint):
        super().__init__(f"stopped by {signal_name} after step {step} of {total_steps}")
        self.signal_name, self.step, self.total_steps, self.checkpoint = signal_name, step, total_steps, checkpoint
