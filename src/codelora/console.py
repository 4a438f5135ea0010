"""What codelora shows while it works, on stderr (stdout is kept for results): one `codelora: ...`
line per message, and progress bars with an ETA on the long steps.

Both are quiet with `--quiet` (the environment variable CODELORA_QUIET=1, so processes that a
command starts, e.g. a sweep's cells, stay quiet too). Bars are also off when stderr is not a
terminal: a log file gets the messages, not thousands of carriage-returned bar updates.
"""

import os
import sys

QUIET_ENV = "CODELORA_QUIET"


def set_quiet(quiet: bool) -> None:
    if quiet:
        os.environ[QUIET_ENV] = "1"


def quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks for all processes


def say(msg: str) -> None:
    if quiet() or not _main_process():
        return
    if bars_on():  # a bar may be on screen: print above it, not into its line
        from tqdm import tqdm

        tqdm.write(f"codelora: {msg}", file=sys.stderr)
        return
    print(f"codelora: {msg}", file=sys.stderr, flush=True)


def bars_on() -> bool:
    return not quiet() and _main_process() and sys.stderr.isatty()


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             show: bool = True):
    """A tqdm bar on stderr (elapsed, ETA, rate), or a silent one (see the module doc; `show=False`
    for a caller that never wants one, e.g. `ask`). Use it as tqdm: iterate over it, or
    `update(n)` it inside a `with` block."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, dynamic_ncols=True,
                disable=not (show and bars_on()), leave=False)


class Stages:
    """A bar over the stages of one long step (merge, export): `stage(name)` ends the stage before
    and shows `name`, so the user sees where the step is; the ETA takes the stages as equally long.

        with Stages(3, "merge") as stage:
            stage("loading the base model"); ...; stage("merging"); ...; stage("saving"); ...
    """

    def __init__(self, total: int, desc: str):
        self.bar = progress(total=total, desc=desc, unit="stage")
        self.started = False

    def __call__(self, name: str) -> None:
        self.bar.set_postfix_str(name, refresh=False)  # the count and the name change together
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.refresh()  # each stage is shown as it starts, however soon after the one before

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None and self.started:
            self.bar.update(1)  # the last stage ended too
        self.bar.close()


def no_stages(name: str) -> None:
    """The `stage` callback of a step run without its own bar."""
