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
