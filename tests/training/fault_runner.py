"""Run the real `codelora` CLI in this process with one fault injected at an exact point.

FAULT=loss:N:SIG      send SIG (KILL, TERM, INT) to this process at the N-th training micro-batch
FAULT=fsync:N:KILL    die at the N-th fsync of a checkpoint write (a checkpoint cut off mid-write)
FAULT=fill:N:PATH     just before the N-th checkpoint is written, fill the disk holding PATH (real ENOSPC)
FAULT=improve-sample:N:KILL   (codelora improve) die at the N-th chunk of sampling
FAULT=improve-exec:N:KILL     (codelora improve) die at the N-th chunk of sandbox execution
FAULT_RANK=R          under torchrun: only the process of rank R gets the fault (default: every process)

The signals are real signals to a real process; nothing in codelora is replaced, only wrapped.
"""

import os
import signal
import sys

import codelora.experiments.improve as improve
import codelora.training.checkpoint as checkpoint
import codelora.training.loop as loop
import codelora.training.sharding as sharding
import codelora.training.step as step
from codelora.cli import main


def after_calls(fn, n, action):
    count = 0

    def wrapped(*args, **kwargs):
        nonlocal count
        count += 1
        if count == n:
            action()
        return fn(*args, **kwargs)

    return wrapped


def fill_disk(path):
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the disk is full now
        pass
    finally:
        os.close(fd)


spec = os.environ.get("FAULT")
if os.environ.get("FAULT_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
    spec = None
if spec:
    where, n, arg = spec.split(":", 2)
    if where == "loss":
        sig = getattr(signal, "SIG" + arg)
        step.supervised_loss_sum = after_calls(step.supervised_loss_sum, int(n), lambda: os.kill(os.getpid(), sig))
        sharding.supervised_loss_sum = after_calls(sharding.supervised_loss_sum, int(n),  # train.distributed fsdp
                                                   lambda: os.kill(os.getpid(), sig))
    elif where == "fsync":
        checkpoint._fsync = after_calls(checkpoint._fsync, int(n), lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif where in ("improve-sample", "improve-exec"):
        name = "generate_answers" if where == "improve-sample" else "execute"
        setattr(improve, name, after_calls(getattr(improve, name), int(n), lambda: os.kill(os.getpid(), signal.SIGKILL)))
    elif where == "fill":
        original, count = loop.save_checkpoint, 0

        def fill_then_save(*args, **kwargs):
            global count
            count += 1
            if count == int(n):
                fill_disk(arg)
            return original(*args, **kwargs)

        loop.save_checkpoint = fill_then_save
    else:
        raise SystemExit(f"unknown FAULT {spec}")

sys.exit(main(sys.argv[1:]))
