"""`codelora launch [--nnodes N --rdzv-endpoint HOST:PORT] train|run ...`: torchrun's own launcher
(torch.distributed.run: the elastic agent, c10d rendezvous), with every wait bounded and every
failure told in one line that names the checkpoint to resume from.

Plain `torchrun ... -m codelora train ...` and `accelerate launch` work too; this adds what they
leave to the user: a rendezvous that gives up after `--join-timeout-s` (torchrun waits 600 s by
default), no restarts (a failed run resumes from its checkpoint), and one line instead of the
agent's log and traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from codelora.config import LaunchConfig
from codelora.errors import CodeloraError, first_line
from codelora.io.rundir import CHECKPOINTS, partial_dir
from codelora.training.checkpoint import latest_name


def torchrun_args(lc: LaunchConfig, command: list[str]) -> list[str]:
    """The torchrun command line for `codelora COMMAND` under `lc`."""
    procs = str(lc.nproc_per_node) if lc.nproc_per_node else "gpu" if _has_gpu() else "1"
    if lc.nnodes == 1 and not lc.rdzv_endpoint:
        where = ["--standalone"]
    else:
        where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", lc.rdzv_endpoint, "--rdzv-id", lc.rdzv_id,
                 "--rdzv-conf", f"join_timeout={lc.join_timeout_s},read_timeout={lc.join_timeout_s}"]
    return ["--nnodes", str(lc.nnodes), "--nproc-per-node", procs, "--max-restarts", "0", *where,
            "-m", "codelora", *command]


def launch(lc: LaunchConfig, command: list[str], out: Path) -> str | None:
    """Run `codelora COMMAND` in every process of this machine; raise a one-line CodeloraError when it fails.
    Returns what happened when SIGTERM / Ctrl-C stopped it (every process checkpointed), else None."""
    with _quiet_native_log():  # the rendezvous' C++ warnings and stack traces: the one line below says it
        from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError, RendezvousTimeoutError

    for name in list(logging.root.manager.loggerDict):  # the agent's log: the one line below says it
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args(torchrun_args(lc, command)))
    except SignalException as e:  # the agent passed it on: each process finished its step and checkpointed
        return f"stopped by {e.sigval.name}; {resume_hint(out)}"
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise CodeloraError(f"process {rank} ended with {how} (its own message is above); {resume_hint(out)}") from None
    except RendezvousTimeoutError:
        raise CodeloraError(f"the rendezvous at {lc.rdzv_endpoint} gave up after {lc.join_timeout_s} s: not all "
                            f"{lc.nnodes} machines joined; start the same command on every machine (same "
                            f"--rdzv-endpoint and --rdzv-id), or raise --join-timeout-s") from None
    except (RendezvousError, RuntimeError, ValueError) as e:
        raise CodeloraError(f"the rendezvous at {lc.rdzv_endpoint or 'localhost'} failed ({first_line(e)[:200]}); "
                            f"check --rdzv-endpoint HOST:PORT: HOST one of the machines, reachable from every one, "
                            f"PORT free there") from None
    return None


def resume_hint(out: Path) -> str:
    checkpoints = partial_dir(out) / CHECKPOINTS
    name = latest_name(checkpoints) if checkpoints.is_dir() else None
    if name is None:
        return "no checkpoint was written: run the command again"
    return f"resume from checkpoint {name} ({checkpoints}): the same command with --resume"


@contextlib.contextmanager
def _quiet_native_log():
    """TORCH_CPP_LOG_LEVEL=FATAL while torch loads in this (launcher) process only; its workers keep theirs.
    (torch reads it once, when it loads: a no-op where torch is loaded already.)"""
    before = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_CPP_LOG_LEVEL", None)
        else:
            os.environ["TORCH_CPP_LOG_LEVEL"] = before


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
